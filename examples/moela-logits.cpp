// moela-logits: the validation tool. Runs a prompt through a DeepSeek-architecture checkpoint and
// writes the logits, so moela can be checked against any other implementation.
//
//   moela-logits --model DIR --tokens 5,17,3 [--decode-tokens 9,4] --out FILE.safetensors [--threads N]
//                [--compare EXPECTED.safetensors]
//
// The prompt runs as one prefill; `prefill_logits` (F32 [prompt length, vocab]) holds the logits
// of every position. Then each decode token is fed one at a time through the KV cache (teacher
// forcing); `decode_logits` (F32 [decode tokens, vocab]) holds the logits of each step. Compute is
// FP32 with the weights exactly as stored (BF16 widened, FP8 dequantized as code x scale_inv),
// FP32 KV cache: the layout of the golden expected-*.safetensors files. The output also holds
// `input_ids` and `decode_ids` (I64).
//
// --compare reads `prefill_logits` / `decode_logits` from another file and prints
// e = max|moela - other| / max|other| for each; the exit status is 3 when e > --tolerance
// (default 1e-4). Relative paths that do not exist from the current directory are also tried
// from the moela source tree.
//
// ctest-args: --model tests/data/golden/tiny-v3/fp8 --tokens 968,151,669,784,206,248,933,364,501,39,39,626 --decode-tokens 607,775,563,319 --out moela-logits-ctest.safetensors --compare tests/data/golden/tiny-v3/expected-fp8.safetensors
#include <moela/model.hpp>

#include "cli/args.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#ifndef MOELA_SOURCE_DIR
#define MOELA_SOURCE_DIR "."
#endif

namespace {

using moela::index_t;

std::string resolve(const std::string& p) {
  if (p.empty() || p[0] == '/' || std::filesystem::exists(p)) return p;
  const std::string s = std::string(MOELA_SOURCE_DIR) + "/" + p;
  return std::filesystem::exists(s) ? s : p;
}

double rel_error(const moela::tensor<float, 2>& got, moela::const_view<float, 2> want, const char* name) {
  moela::check(got.extent(0) == want.extent(0) && got.extent(1) == want.extent(1), "moela-logits: --compare ",
               name, " is ", moela::to_string(want.shape()), " but moela produced ", moela::to_string(got.shape()));
  double d = 0, m = 0;
  for (index_t r = 0; r < got.extent(0); ++r)
    for (index_t c = 0; c < got.extent(1); ++c) {
      d = std::max(d, std::fabs(double(got(r, c)) - double(want(r, c))));
      m = std::max(m, std::fabs(double(want(r, c))));
    }
  return m > 0 ? d / m : d;
}

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: moela-logits --model DIR --tokens 5,17,3 [--decode-tokens 9,4] --out FILE.safetensors\n"
               "                    [--threads N] [--compare EXPECTED.safetensors] [--tolerance E]\n");
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string model, out, compare;
    std::vector<int> tokens, decode;
    double tolerance = 1e-4;
    bool have_tokens = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        moela::check(i + 1 < argc, "moela-logits: ", a, " needs a value");
        return argv[++i];
      };
      if (a == "-h" || a == "--help") usage(0);
      else if (a == "--model") model = resolve(value());
      else if (a == "--tokens") tokens = moela_cli::parse_ids("moela-logits", a, value()), have_tokens = true;
      else if (a == "--decode-tokens") decode = moela_cli::parse_ids("moela-logits", a, value());
      else if (a == "--out") out = value();
      else if (a == "--compare") compare = resolve(value());
      else if (a == "--tolerance") tolerance = moela_cli::parse_num("moela-logits", a, value(), 0);
      else if (a == "--threads")
        moela::set_num_threads(static_cast<int>(moela_cli::parse_int("moela-logits", a, value(), 1, 65536)));
      else {
        std::fprintf(stderr, "moela-logits: unknown option '%s'\n", a.c_str());
        usage(2);
      }
    }
    if (model.empty() || out.empty() || !have_tokens) {
      std::fprintf(stderr, "moela-logits: missing%s%s%s\n", model.empty() ? " --model" : "", have_tokens ? "" : " --tokens",
                   out.empty() ? " --out" : "");
      usage(2);
    }
    moela::check(!tokens.empty(), "moela-logits: --tokens is empty");
    // Token ids are checked against the config before the weights load.
    const index_t vocab = moela::io::load_config(model).vocab_size;
    for (const auto* ids : {&tokens, &decode})
      for (std::size_t i = 0; i < ids->size(); ++i)
        moela::check((*ids)[i] < vocab, "moela-logits: token id ", (*ids)[i], " at index ", i, " of ",
                     ids == &tokens ? "--tokens" : "--decode-tokens", " is outside the vocabulary [0, ", vocab, ")");

    // FP32 weights (converted exactly from BF16 / FP8 blocks) and an FP32 cache.
    using M = moela::deepseek_model<moela::quant::f32, moela::attn::cache_f32>;
    moela::load_options lo;
    lo.max_positions = static_cast<index_t>(tokens.size() + decode.size());
    auto m = moela::load_model<M>(model, lo);
    const index_t P = static_cast<index_t>(tokens.size()), S = static_cast<index_t>(decode.size());
    const index_t V = m.config().vocab_size;
    auto cache = moela::make_cache(m, P + S);
    const index_t seq = cache.add_sequence();

    moela::tensor<float, 2> prefill, step, dl({S, V});
    const moela::step_chunk pre[] = {{seq, P}};
    m.forward(cache, pre, tokens, prefill, moela::logits_rows::all);
    for (index_t j = 0; j < S; ++j) {
      const moela::step_chunk d[] = {{seq, 1}};
      const int tok[] = {decode[static_cast<std::size_t>(j)]};
      m.forward(cache, d, tok, step, moela::logits_rows::last);
      std::copy(step.data(), step.data() + V, dl.data() + j * V);
    }

    moela::io::safetensors_writer w;
    std::vector<std::int64_t> in64(tokens.begin(), tokens.end()), de64(decode.begin(), decode.end());
    w.add<std::int64_t>("input_ids", {P}, in64);
    w.add<std::int64_t>("decode_ids", {S}, de64);
    w.add<float>("prefill_logits", {P, V}, prefill.flat());
    w.add<float>("decode_logits", {S, V}, dl.flat());
    w.set_metadata("producer", "moela-logits");
    w.save(out);
    std::printf("moela-logits: %s, %ld prompt + %ld decode tokens, vocab %ld -> %s\n", model.c_str(), P, S, V,
                out.c_str());

    if (!compare.empty()) {
      moela::io::safetensors_file ref(compare);
      const double ep = rel_error(prefill, ref.view<float, 2>("prefill_logits"), "prefill_logits");
      std::printf("compare %s: prefill_logits e = %.3g", compare.c_str(), ep);
      double worst = ep;
      if (S > 0) {
        const double ed = rel_error(dl, ref.view<float, 2>("decode_logits"), "decode_logits");
        std::printf(", decode_logits e = %.3g", ed);
        worst = std::max(worst, ed);
      }
      std::printf(" (tolerance %.3g): %s\n", tolerance, worst <= tolerance ? "ok" : "MISMATCH");
      if (worst > tolerance) return 3;
    }
    return 0;
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
