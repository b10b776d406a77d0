// moela-generate: generate text (or token ids) with a DeepSeek-architecture model.
//
//   moela-generate                                   # the shipped tiny-fortunes model, 5 prompts
//   moela-generate --prompt "Life is" -n 100 --greedy
//   moela-generate --model DIR --tokens 0,4422,318 -n 32 --format fp8 --cache fp8
//
// Byte-level models (vocab <= 258, like tiny-fortunes): the prompt is BOS then the UTF-8 bytes,
// and the output is printed as text. Other models need --tokens (moela has no tokenizer) and
// print token ids. Several --prompt / --tokens options run in sequence with one sampler (so
// seeded sampling is reproducible prompt after prompt); --batch runs them as one batch instead.
//
// ctest-args: -n 24
#include <moela/core/build_info.hpp>
#include <moela/model.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifndef MOELA_DEFAULT_MODEL_DIR
#define MOELA_DEFAULT_MODEL_DIR "examples/models/tiny-fortunes"
#endif

namespace {

using moela::index_t;

struct options {
  std::string model = MOELA_DEFAULT_MODEL_DIR;
  std::vector<std::string> prompts;
  std::vector<std::vector<int>> token_prompts;
  long max_new = 200;
  moela::sampling_params sampling{0.8, 0, 0.95, 42};
  std::string format = "auto", cache = "f32";
  int threads = 0;
  bool batch = false, quiet = false;
  long max_positions = 0;
};

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: moela-generate [options]\n"
               "  --model DIR          Hugging Face checkpoint dir (default: %s)\n"
               "  --prompt TEXT        prompt for byte-level models (repeatable; default: five fortune openers)\n"
               "  --tokens 1,2,3       prompt as token ids (repeatable)\n"
               "  -n, --max-new-tokens N  tokens to generate per prompt (default 200; stops at EOS)\n"
               "  --temperature T      sampling temperature (default 0.8; 0 = greedy)\n"
               "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
               "  --top-p P            nucleus sampling threshold (default 0.95)\n"
               "  --seed S             random seed (default 42; NumPy default_rng compatible)\n"
               "  --greedy             same as --temperature 0\n"
               "  --format F           weights: auto (as stored), f32, bf16, fp8, int4 (default auto)\n"
               "  --cache C            latent KV cache: f32, bf16, fp8 (default f32)\n"
               "  --threads N          worker threads (default: all cores)\n"
               "  --batch              run all prompts as one batch (per-prompt seeds seed+i)\n"
               "  --max-positions N    longest sequence the RoPE tables cover (default min(config, 16384))\n"
               "  --quiet              print only the generated text\n",
               MOELA_DEFAULT_MODEL_DIR);
  std::exit(code);
}

std::vector<int> parse_ids(const std::string& s) {
  std::vector<int> r;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string part = s.substr(i, j - i);
    char* end = nullptr;
    const long v = std::strtol(part.c_str(), &end, 10);
    moela::check(!part.empty() && end && *end == '\0' && v >= 0 && v < (1L << 31), "moela-generate: bad token id '",
                 part, "' in --tokens ", s);
    r.push_back(static_cast<int>(v));
    i = j + 1;
  }
  moela::check(!r.empty(), "moela-generate: --tokens needs at least one id");
  return r;
}

double parse_num(const char* flag, const char* v) {
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  moela::check(end && *end == '\0' && end != v, "moela-generate: ", flag, " needs a number, got '", v, "'");
  return d;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      moela::check(i + 1 < argc, "moela-generate: ", a, " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") usage(0);
    else if (a == "--model") o.model = value();
    else if (a == "--prompt") o.prompts.push_back(value());
    else if (a == "--tokens") o.token_prompts.push_back(parse_ids(value()));
    else if (a == "-n" || a == "--max-new-tokens") o.max_new = static_cast<long>(parse_num("-n", value()));
    else if (a == "--temperature") o.sampling.temperature = parse_num("--temperature", value());
    else if (a == "--top-k") o.sampling.top_k = static_cast<int>(parse_num("--top-k", value()));
    else if (a == "--top-p") o.sampling.top_p = parse_num("--top-p", value());
    else if (a == "--seed") o.sampling.seed = static_cast<std::uint64_t>(parse_num("--seed", value()));
    else if (a == "--greedy") o.sampling.temperature = 0;
    else if (a == "--format") o.format = value();
    else if (a == "--cache") o.cache = value();
    else if (a == "--threads") o.threads = static_cast<int>(parse_num("--threads", value()));
    else if (a == "--max-positions") o.max_positions = static_cast<long>(parse_num("--max-positions", value()));
    else if (a == "--batch") o.batch = true;
    else if (a == "--quiet") o.quiet = true;
    else {
      std::fprintf(stderr, "moela-generate: unknown option '%s'\n", a.c_str());
      usage(2);
    }
  }
  moela::check(o.max_new >= 0, "moela-generate: -n must be >= 0");
  return o;
}

// Resident set size of this process (Linux), 0 when unknown.
double resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long pages = 0, rss = 0;
  const int n = std::fscanf(f, "%ld %ld", &pages, &rss);
  std::fclose(f);
  return n == 2 ? double(rss) * 4096.0 : 0;
}

std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  char s[32];
  std::snprintf(s, sizeof s, i ? "%.1f %s" : "%.0f %s", b, u[i]);
  return s;
}

template <class Format, class CacheFormat>
int run(const options& o, const moela::io::model_config& cfg, const char* format_name) {
  using M = moela::deepseek_model<Format, CacheFormat>;
  moela::load_options lo;
  lo.max_positions = o.max_positions;
  auto m = moela::load_model<M>(o.model, lo);
  const bool bytes = cfg.vocab_size <= 258 && cfg.bos_token_id >= 0;
  std::vector<std::vector<int>> prompts = o.token_prompts;
  std::vector<std::string> labels;
  for (auto& t : o.token_prompts) {
    std::string l = "[";
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (i) l += ',';
      l += std::to_string(t[i]);
    }
    l += ']';
    labels.push_back(std::move(l));
  }
  auto text_prompts = o.prompts;
  if (text_prompts.empty() && prompts.empty()) {
    moela::check(bytes, "moela-generate: '", o.model,
                 "' is not a byte-level model; give the prompt as token ids with --tokens");
    text_prompts = {"The computer", "Love is", "Q: Why", "Life is", "There is no"};
  }
  for (const auto& p : text_prompts) {
    moela::check(bytes, "moela-generate: '", o.model, "' is not a byte-level model (vocab ", cfg.vocab_size,
                 "); give the prompt as token ids with --tokens");
    std::vector<int> ids = {static_cast<int>(cfg.bos_token_id)};
    for (unsigned char c : p) ids.push_back(c);
    prompts.push_back(ids);
    labels.push_back("\"" + p + "\"");
  }

  index_t longest = 0;
  for (auto& p : prompts) longest = std::max<index_t>(longest, static_cast<index_t>(p.size()) + o.max_new);
  const index_t cache_tokens = o.batch ? longest * static_cast<index_t>(prompts.size()) : longest;
  auto cache = moela::make_cache(m, cache_tokens);

  const auto& st = m.load_stats();
  if (!o.quiet) {
    std::printf("model  %s: %s, %ld layers (%ld dense), hidden %ld, %ld heads, %ld experts top-%ld, vocab %ld\n",
                o.model.c_str(), cfg.model_type.c_str(), cfg.num_hidden_layers,
                std::min(cfg.first_k_dense_replace, cfg.num_hidden_layers), cfg.hidden_size, cfg.num_attention_heads,
                cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.vocab_size);
    std::printf("setup  weights %s (%s used in place, %s converted), KV cache %s (%zu B/token/layer, %s reserved), "
                "%d threads, %s\n",
                format_name, human_bytes(double(st.borrowed)).c_str(), human_bytes(double(st.converted)).c_str(),
                CacheFormat::name, cache.bytes_per_token(), human_bytes(double(cache.memory_bytes())).c_str(),
                moela::num_threads(), moela::build_info().summary().c_str());
    std::printf("memory resident %s after loading (checkpoint files %s)\n", human_bytes(resident_bytes()).c_str(),
                human_bytes(double(m.checkpoint()->file_bytes())).c_str());
    if (o.sampling.temperature == 0)
      std::printf("sample greedy\n");
    else
      std::printf("sample temperature %g, top-k %d, top-p %g, seed %llu\n", o.sampling.temperature, o.sampling.top_k,
                  o.sampling.top_p, static_cast<unsigned long long>(o.sampling.seed));
  }

  moela::generate_options g;
  g.max_new_tokens = o.max_new;
  g.sampling = o.sampling;
  for (auto e : cfg.eos_token_ids) g.stop_tokens.push_back(static_cast<int>(e));
  auto print_token = [&](int t) {
    if (bytes) {
      if (t < 256) std::fputc(t, stdout);
      else if (std::find(g.stop_tokens.begin(), g.stop_tokens.end(), t) != g.stop_tokens.end()) std::fputs(o.quiet ? "" : "<EOS>", stdout);
    } else {
      std::printf(" %d", t);
    }
    std::fflush(stdout);
  };
  auto report = [&](const moela::generate_stats& s, std::size_t cache_used) {
    if (o.quiet) return;
    std::printf("\n[prefill %ld tokens %.3f s = %.0f tok/s | decode %ld tokens in %ld steps %.3f s = %.0f tok/s | "
                "KV cache in use %s]\n",
                s.prompt_tokens, s.prefill_seconds, s.prefill_tokens_per_s(), s.decode_tokens, s.decode_steps,
                s.decode_seconds, s.decode_tokens_per_s(), human_bytes(double(cache_used)).c_str());
  };

  if (o.batch) {
    // Stream nothing (tokens of several prompts interleave); print each text at the end.
    auto r = moela::generate_batch(m, cache, std::span<const std::vector<int>>(prompts), g);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      if (!o.quiet) std::printf("--- %s\n", labels[i].c_str());
      if (bytes)
        for (std::size_t k = 1; k < prompts[i].size(); ++k) std::fputc(prompts[i][k], stdout);
      for (int t : r.tokens[i]) print_token(t);
      std::printf("\n");
    }
    report(r.stats, cache.bytes_per_token() * static_cast<std::size_t>(cfg.num_hidden_layers) *
                        static_cast<std::size_t>(r.stats.prompt_tokens + r.stats.decode_tokens));
    return 0;
  }
  moela::sampler smp(o.sampling);
  moela::generate_stats total;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    if (!o.quiet) std::printf("--- %s\n", labels[i].c_str());
    if (bytes)
      for (std::size_t k = 1; k < prompts[i].size(); ++k) std::fputc(prompts[i][k], stdout);
    g.on_token = [&](index_t, int t) {
      print_token(t);
      return true;
    };
    auto r = moela::generate(m, cache, prompts[i], g, smp);
    if (o.quiet) std::printf("\n");
    report(r.stats, cache.bytes_per_token() * static_cast<std::size_t>(cfg.num_hidden_layers) *
                        static_cast<std::size_t>(r.stats.prompt_tokens + r.stats.decode_tokens));
    total.prompt_tokens += r.stats.prompt_tokens;
    total.decode_tokens += r.stats.decode_tokens;
    total.prefill_seconds += r.stats.prefill_seconds;
    total.decode_seconds += r.stats.decode_seconds;
  }
  if (!o.quiet && prompts.size() > 1)
    std::printf("total  prefill %.0f tok/s, decode %.0f tok/s\n", total.prefill_tokens_per_s(),
                total.decode_tokens_per_s());
  return 0;
}

template <class Format>
int with_cache(const options& o, const moela::io::model_config& cfg, const char* fname) {
  if (o.cache == "f32") return run<Format, moela::attn::cache_f32>(o, cfg, fname);
  if (o.cache == "bf16") return run<Format, moela::attn::cache_bf16>(o, cfg, fname);
  if (o.cache == "fp8") return run<Format, moela::attn::cache_fp8>(o, cfg, fname);
  moela::fail("moela-generate: --cache must be f32, bf16 or fp8, got '", o.cache, "'");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    if (o.threads > 0) moela::set_num_threads(o.threads);
    const auto cfg = moela::io::load_config(o.model);
    std::string f = o.format;
    if (f == "auto") f = cfg.is_fp8() ? "fp8" : "bf16";
    using namespace moela::quant;
    if (f == "bf16") return with_cache<moela::quant::bf16>(o, cfg, "bf16");
    if (f == "f32") return with_cache<f32>(o, cfg, "f32");
    if (f == "fp8") return with_cache<fp8_block<128, 128>>(o, cfg, "fp8 (128x128 blocks)");
    if (f == "int4") return with_cache<int4_group<32>>(o, cfg, "int4 (groups of 32)");
    moela::fail("moela-generate: --format must be auto, f32, bf16, fp8 or int4, got '", o.format, "'");
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
