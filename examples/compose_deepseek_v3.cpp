// Composition 1: a DeepSeek-V3 model spelled out from moela's parts, with the weight format and
// cache type chosen at compile time: FP8 128x128-block weights used in place from the checkpoint
// (zero copy), the V3 router policy (sigmoid scores, top-2-sum group limit) fixed at compile
// time, and an FP8 latent cache (per token and layer: 1 byte per latent value, the RoPE key in
// bf16 and one f32 scale; 644 bytes at V3's shape).
// It loads the shipped FP8 checkpoint of the tiny-fortunes model (a DeepSeek-V3 architecture)
// and continues a prompt greedily.
//
// ctest-args:
#include <moela/model.hpp>

#include <cstdio>

using B = moela::cpu<>;
using W = moela::quant::fp8_block<128, 128>;
using C = moela::attn::cache_fp8;
using attention = moela::mla_attention<B, W, C>;
using norm = moela::rms_norm<B>;
using dense_layer = moela::decoder_layer<B, attention, moela::dense_mlp<B, W>, norm>;
using moe_layer = moela::decoder_layer<B, attention, moela::moe_mlp<B, W, moela::moe::v3_router>, norm>;
using deepseek_v3 = moela::model<B, moela::quant::bf16, dense_layer, moe_layer>;  // LM head stays BF16

int main() {
  try {
    auto m = moela::load_model<deepseek_v3>(MOELA_SOURCE_DIR "/examples/models/tiny-fortunes-fp8");
    const auto& c = m.config();
    std::printf("DeepSeek-V3 composition: %ld layers (%ld dense + %ld MoE), FP8 weights: %.2f MiB used in place, "
                "%.2f KiB converted\n",
                c.num_hidden_layers, c.first_k_dense_replace, c.num_hidden_layers - c.first_k_dense_replace,
                double(m.load_stats().borrowed) / 1048576.0, double(m.load_stats().converted) / 1024.0);
    auto cache = moela::make_cache(m, 256);
    std::vector<int> prompt = {256};
    for (unsigned char ch : std::string("Q: Why")) prompt.push_back(ch);
    moela::generate_options o;
    o.max_new_tokens = 80;
    o.stop_tokens = {257};
    moela::sampler greedy;
    std::printf("Q: Why");
    o.on_token = [](moela::index_t, int t) {
      if (t < 256) std::putchar(t);
      return true;
    };
    auto r = moela::generate(m, cache, prompt, o, greedy);
    std::printf("\n%ld tokens, FP8 latent cache %zu bytes per token and layer\n", r.stats.generated_tokens,
                cache.bytes_per_token());
    return r.tokens[0].empty() ? 1 : 0;
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
