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
// The model runner is generate/run.hpp, instantiated per weight format in generate/formats_*.cpp.
#include "cli/args.hpp"
#include "generate/run.hpp"

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace {

using moela::index_t;
using moela_generate::options;

// The weight formats of --format: the one list that the help text, the dispatch and the error
// message read. Each runner is instantiated in generate/formats_*.cpp.
struct format_choice {
  const char* name;
  const char* description;
  int (*run)(const options&, const moela::io::model_config&, const char*);
};
using namespace moela::quant;
using moela_generate::run_format;
constexpr format_choice formats[] = {
    {"f32", "f32", &run_format<f32>},
    {"bf16", "bf16", &run_format<moela::quant::bf16>},
    {"fp8", "fp8 (128x128 blocks)", &run_format<fp8_block<128, 128>>},
    {"fp8-w8a8", "fp8 W8A8 (128x128 blocks, E4M3 activations: DeepSeek's FP8 numerics)", &run_format<fp8_block_w8a8>},
    {"int8", "int8 (per row)", &run_format<int8_rowwise<>>},
    {"int8-a8", "int8 W8A8 (per row, int8 activations)", &run_format<int8_rowwise_a8<>>},
    {"int4", "int4 (groups of 32)", &run_format<int4_group<32>>},
    {"int4-a8", "int4 W4A8 (groups of 32, int8 activations)", &run_format<int4_group_a8<32>>},
    {"int4-a16", "int4 W4A16 (groups of 32, bf16 activations)", &run_format<int4_group_a16<32>>},
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
               "  --format F           weights (default auto: as stored; the formats are listed below)\n"
               "  --cache C            latent KV cache: f32, bf16, fp8 (default f32)\n"
               "  --threads N          worker threads (default: all cores)\n"
               "  --batch              run all prompts as one batch (per-prompt seeds seed+i)\n"
               "  --prefill-chunk N    prompt tokens per prefill step (default 512; 0 = all in one step)\n"
               "  --max-positions N    longest sequence the RoPE tables cover (default min(config, 16384); at most the config's)\n"
               "  --quiet              print only the generated text\n",
               MOELA_DEFAULT_MODEL_DIR);
  std::fprintf(code ? stderr : stdout, "formats:\n");
  for (const auto& f : formats) std::fprintf(code ? stderr : stdout, "  %-9s %s\n", f.name, f.description);
  std::exit(code);
}

constexpr const char* tool = "moela-generate";

std::vector<int> token_ids(const std::string& s) {
  auto r = moela_cli::parse_ids(tool, "--tokens", s);
  moela::check(!r.empty(), tool, ": --tokens needs at least one id");
  return r;
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
    else if (a == "--tokens") o.token_prompts.push_back(token_ids(value()));
    else if (a == "-n" || a == "--max-new-tokens") o.max_new = static_cast<long>(moela_cli::parse_int(tool, "-n", value(), 0));
    else if (a == "--temperature") o.sampling.temperature = moela_cli::parse_num(tool, "--temperature", value(), 0);
    else if (a == "--top-k") o.sampling.top_k = static_cast<int>(moela_cli::parse_int(tool, "--top-k", value(), 0));
    else if (a == "--top-p") o.sampling.top_p = moela_cli::parse_num(tool, "--top-p", value(), 0);
    else if (a == "--seed") o.sampling.seed = moela_cli::parse_u64(tool, "--seed", value());
    else if (a == "--greedy") o.sampling.temperature = 0;
    else if (a == "--format") o.format = value();
    else if (a == "--cache") o.cache = value();
    else if (a == "--threads") o.threads = static_cast<int>(moela_cli::parse_int(tool, "--threads", value(), 1, 65536));
    else if (a == "--max-positions") o.max_positions = static_cast<long>(moela_cli::parse_int(tool, "--max-positions", value(), 1));
    else if (a == "--batch") o.batch = true;
    else if (a == "--prefill-chunk") o.prefill_chunk = static_cast<long>(moela_cli::parse_int(tool, "--prefill-chunk", value(), 0));
    else if (a == "--quiet") o.quiet = true;
    else {
      std::fprintf(stderr, "moela-generate: unknown option '%s'\n", a.c_str());
      usage(2);
    }
  }
  static_cast<void>(moela::sampler{o.sampling});  // rejects a negative temperature or a top-p outside (0, 1] before loading
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    if (o.threads > 0) moela::set_num_threads(o.threads);
    const auto cfg = moela::io::load_config(o.model);
    std::string f = o.format;
    if (f == "auto") f = cfg.is_fp8() ? "fp8" : "bf16";
    for (const auto& c : formats)
      if (f == c.name) return c.run(o, cfg, c.description);
    std::string names = "auto";
    for (const auto& c : formats) names += std::string(", ") + c.name;
    moela::fail("moela-generate: --format must be one of ", names, "; got '", o.format, "'");
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // out of memory, or another failure from the system
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
