// Composition 3: standard attention (grouped-query, K and V cached per head) with DeepSeekMoE
// FFNs: a dense first layer, then routed + shared experts. Weights in INT4 (groups of 32) and an
// FP32 KV cache. Random weights are built in memory; the example decodes a few tokens and
// prints the expert load of the last MoE layer and the cache size against a full MHA cache.
//
// ctest-args:
#include <moela/model.hpp>

#include <cstdio>

using B = moela::cpu<>;
using W = moela::quant::int4_group<32>;
using attention = moela::gqa_attention<B, W, moela::attn::cache_f32>;
using dense_layer = moela::decoder_layer<B, attention, moela::dense_mlp<B, W>, moela::rms_norm<B>>;
using moe_layer = moela::decoder_layer<B, attention, moela::moe_mlp<B, W>, moela::rms_norm<B>>;
using gqa_moe_model = moela::model<B, W, dense_layer, moe_layer>;

int main() {
  try {
    const auto cfg = moela::io::parse_config(R"({
      "model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
      "moe_intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
      "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
      "first_k_dense_replace": 1, "max_position_embeddings": 1024, "bos_token_id": 0, "eos_token_id": 1})",
                                             "gqa-moe");
    auto m = moela::random_model<gqa_moe_model>(cfg, 5);
    auto cache = moela::make_cache(m, 128);
    moela::generate_options o;
    o.max_new_tokens = 16;
    o.sampling = {1.0, 0, 0.9, 7};
    moela::sampler s(o.sampling);
    auto r = moela::generate(m, cache, {0, 42, 17, 99, 3}, o, s);
    std::printf("generated:");
    for (int t : r.tokens[0]) std::printf(" %d", t);
    std::printf("\n");
    auto& last = std::get<1>(m.layers().back()).ffn().impl();
    std::printf("expert load of the last MoE layer in the last step:");
    for (auto n : last.last_load()) std::printf(" %ld", n);
    const long head_dim = cfg.hidden_size / cfg.num_attention_heads;
    std::printf("\nGQA cache: %zu bytes per token and layer (8 query heads share 2 K/V heads; full MHA: %ld)\n",
                cache.bytes_per_token(), 2 * cfg.num_attention_heads * head_dim * 4);
    return r.tokens[0].size() == 16 ? 0 : 1;
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
