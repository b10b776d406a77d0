#pragma once
// moela-generate's model runner, one template instantiated per weight format in the
// formats_*.cpp files next to it: each format builds the whole model three times (one per KV
// cache type), so the formats are spread over translation units that compile in parallel.
#include <moela/core/build_info.hpp>
#include <moela/model.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#ifndef MOELA_DEFAULT_MODEL_DIR
#define MOELA_DEFAULT_MODEL_DIR "examples/models/tiny-fortunes"
#endif

namespace moela_generate {

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
  long prefill_chunk = moela::generate_options{}.prefill_chunk;
};

/// Loads the model of `o` with weights in `Format` (converted where the checkpoint stores
/// another) and the KV cache of `o.cache`, and generates; returns the exit code.
template <class Format>
int run_format(const options& o, const moela::io::model_config& cfg, const char* format_name);

namespace detail {

// Resident set size of this process (Linux), 0 when unknown.
inline double resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long pages = 0, rss = 0;
  const int n = std::fscanf(f, "%ld %ld", &pages, &rss);
  std::fclose(f);
  return n == 2 ? double(rss) * 4096.0 : 0;
}

inline std::string human_bytes(double b) {
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

// The step scratch (core/workspace.hpp) stays with the thread after a step, sized for the
// largest step so far. A program that keeps running after it is done with a model (a server
// between models, a tool that goes on to other work) hands it back.
inline void release_scratch(const options& o) {
  const std::size_t held = moela::thread_workspace_bytes();
  moela::release_thread_workspaces();
  if (!o.quiet) std::printf("scratch %s released\n", human_bytes(double(held)).c_str());
}

template <class Format, class CacheFormat>
int run(const options& o, const moela::io::model_config& cfg, const char* format_name) {
  using M = moela::deepseek_model<Format, CacheFormat>;
  moela::load_options lo;
  lo.max_positions = o.max_positions;
  // The prompts are checked against the config before the weights load (minutes for a large
  // checkpoint), so a wrong flag fails at once.
  const bool bytes = cfg.vocab_size <= 258 && cfg.bos_token_id >= 0;
  std::vector<std::vector<int>> prompts = o.token_prompts;
  std::vector<std::string> labels;
  for (auto& t : o.token_prompts) {
    for (int id : t)
      moela::check(id < cfg.vocab_size, "moela-generate: token id ", id, " in --tokens is outside the vocabulary [0, ",
                   cfg.vocab_size, ") of '", o.model, "'");
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

  // Each prompt needs its length + max_new - 1 positions (the last token is not fed back).
  const index_t max_pos = moela::apply_options(cfg, lo).max_position_embeddings;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto n = static_cast<index_t>(prompts[i].size());
    moela::check(n <= max_pos && o.max_new - 1 <= max_pos - n, "moela-generate: prompt ", labels[i], " (", n,
                 " tokens) with -n ", o.max_new, " needs ", n, " + ", o.max_new, " - 1 positions, but the model runs at most ",
                 max_pos, " (the config's max_position_embeddings, or --max-positions if lower)");
  }

  auto m = moela::load_model<M>(o.model, lo);

  index_t longest = 0;
  for (auto& p : prompts) longest = std::max<index_t>(longest, static_cast<index_t>(p.size()) + std::max(o.max_new - 1, 0L));
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
  g.prefill_chunk = o.prefill_chunk;
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
                "KV cache in use %s | step scratch %s]\n",
                s.prompt_tokens, s.prefill_seconds, s.prefill_tokens_per_s(), s.decode_tokens, s.decode_steps,
                s.decode_seconds, s.decode_tokens_per_s(), human_bytes(double(cache_used)).c_str(),
                human_bytes(double(moela::thread_workspace_bytes())).c_str());
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
    release_scratch(o);
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
  release_scratch(o);
  return 0;
}

}  // namespace detail

template <class Format>
int run_format(const options& o, const moela::io::model_config& cfg, const char* fname) {
  if (o.cache == "f32") return detail::run<Format, moela::attn::cache_f32>(o, cfg, fname);
  if (o.cache == "bf16") return detail::run<Format, moela::attn::cache_bf16>(o, cfg, fname);
  if (o.cache == "fp8") return detail::run<Format, moela::attn::cache_fp8>(o, cfg, fname);
  moela::fail("moela-generate: --cache must be f32, bf16 or fp8, got '", o.cache, "'");
}

// Instantiated in formats_*.cpp only (one translation unit per pair of formats).
extern template int run_format<moela::quant::f32>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::bf16>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::fp8_block<128, 128>>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::fp8_block_w8a8>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::int8_rowwise<>>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::int8_rowwise_a8<>>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::int4_group<32>>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::int4_group_a8<32>>(const options&, const moela::io::model_config&, const char*);
extern template int run_format<moela::quant::int4_group_a16<32>>(const options&, const moela::io::model_config&, const char*);

}  // namespace moela_generate
