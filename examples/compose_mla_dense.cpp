// Composition 2: MLA attention with dense SwiGLU FFNs only (no experts), BF16 weights and a BF16
// paged latent cache. The config has no routed experts, so every layer is the dense type; a
// model type without an MoE layer would refuse a config that asks for one. Random weights are
// built in memory (no checkpoint needed); three prompts of different lengths run as one batch
// over the shared paged cache.
//
// ctest-args:
#include <moela/model.hpp>

#include <cstdio>

using B = moela::cpu<>;
using W = moela::quant::bf16;
using layer = moela::decoder_layer<B, moela::mla_attention<B, W, moela::attn::cache_bf16>, moela::dense_mlp<B, W>,
                                   moela::rms_norm<B>>;
using mla_dense_model = moela::model<B, W, layer>;

int main() {
  try {
    const auto cfg = moela::io::parse_config(R"({
      "model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 704,
      "num_hidden_layers": 4, "num_attention_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 64,
      "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": null,
      "max_position_embeddings": 1024, "bos_token_id": 0, "eos_token_id": 1})", "mla-dense");
    auto m = moela::random_model<mla_dense_model>(cfg, 3);
    auto cache = moela::make_cache(m, 3 * 64, 16);
    const std::vector<std::vector<int>> prompts = {{0, 5, 9}, {0, 7, 7, 7, 2, 100, 31}, {0}};
    moela::generate_options o;
    o.max_new_tokens = 12;
    auto r = moela::generate_batch(m, cache, std::span<const std::vector<int>>(prompts), o);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::printf("sequence %zu (prompt %zu tokens):", i, prompts[i].size());
      for (int t : r.tokens[i]) std::printf(" %d", t);
      std::printf("\n");
    }
    const auto& c = m.config();
    std::printf("MLA latent cache: %zu bytes per token and layer (a standard MHA cache of the same heads: %ld)\n",
                cache.bytes_per_token(), 2 * c.num_attention_heads * c.v_head_dim * 2);
    std::printf("prefill %.0f tok/s, decode %.0f tok/s (%ld steps of %zu sequences)\n", r.stats.prefill_tokens_per_s(),
                r.stats.decode_tokens_per_s(), r.stats.decode_steps, prompts.size());
    return r.stats.generated_tokens == 36 ? 0 : 1;
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
