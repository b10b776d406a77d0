// Builds a small DeepSeek-V3-style MoE layer with random weights, routes a batch of tokens,
// prints the load of every routed expert, applies one auxiliary-loss-free bias update and
// routes the batch again.
//
// Usage: moe_layer [tokens]   (default 256)
// ctest-args: 96
#include <moela/moe.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

using namespace moela;

int main(int argc, char** argv) {
  const index_t T = argc > 1 ? std::atol(argv[1]) : 256;
  if (T < 0) {
    std::fprintf(stderr, "usage: moe_layer [tokens >= 0]\n");
    return 2;
  }

  // The routing of V3 (sigmoid scores, correction bias, 4 groups of which 2 are kept, top-4,
  // normalised weights x2.5) on a small layer: hidden 64, 16 experts of width 32, 1 shared.
  moe::moe_config cfg;
  cfg.hidden_size = 64;
  cfg.n_routed_experts = 16;
  cfg.num_experts_per_tok = 4;
  cfg.n_group = 4;
  cfg.topk_group = 2;
  cfg.scoring_func = moe::score_fn::sigmoid;
  cfg.topk_method = moe::topk_rule::noaux_tc;
  cfg.norm_topk_prob = true;
  cfg.routed_scaling_factor = 2.5f;
  cfg.n_shared_experts = 1;
  cfg.moe_intermediate_size = 32;
  cfg.validate();

  std::mt19937 rng(2024);
  auto randn = [&](index_t r, index_t c, float sd) {
    std::normal_distribution<float> nd(0.f, sd);
    tensor<float, 2> t({r, c});
    for (auto& v : t.flat()) v = nd(rng);
    return t;
  };
  using F = quant::bf16;
  auto ffn = [&](index_t I) {
    return moe::swiglu_weights<F>{qmatrix<F>::quantize(randn(I, cfg.hidden_size, 0.125f).cview()),
                                  qmatrix<F>::quantize(randn(I, cfg.hidden_size, 0.125f).cview()),
                                  qmatrix<F>::quantize(randn(cfg.hidden_size, I, 0.18f).cview())};
  };
  moe::moe_weights<F> w;
  w.gate = randn(cfg.n_routed_experts, cfg.hidden_size, 0.125f);
  for (index_t d = 0; d < cfg.hidden_size; ++d) w.gate(5, d) += 0.08f;  // expert 5 starts popular
  w.bias = tensor<float, 1>({cfg.n_routed_experts});                     // zero bias
  for (index_t e = 0; e < cfg.n_routed_experts; ++e) w.experts.push_back(ffn(cfg.moe_intermediate_size));
  w.shared = ffn(cfg.shared_intermediate_size());

  moe_layer<cpu<>, F> layer(cfg, std::move(w));

  tensor<float, 2> x = randn(T, cfg.hidden_size, 1.0f), y({T, cfg.hidden_size});
  for (index_t t = 0; t < T; ++t)
    for (index_t d = 0; d < cfg.hidden_size; ++d) x(t, d) += 0.5f;  // a shared direction, as real activations have

  auto print_load = [&](const char* title) {
    const auto load = layer.last_load();
    const index_t mx = *std::max_element(load.begin(), load.end());
    std::printf("%s (T = %ld tokens x top-%ld, mean %.1f per expert, max %ld)\n", title, static_cast<long>(T),
                static_cast<long>(cfg.num_experts_per_tok),
                double(T * cfg.num_experts_per_tok) / double(cfg.n_routed_experts), static_cast<long>(mx));
    for (index_t e = 0; e < cfg.n_routed_experts; ++e) {
      const int bar = mx > 0 ? int(40 * load[e] / mx) : 0;
      std::printf("  expert %2ld  group %ld  bias %+.4f  load %4ld  %.*s\n", static_cast<long>(e),
                  static_cast<long>(e / (cfg.n_routed_experts / cfg.n_group)), double(layer.router().bias()[e]),
                  static_cast<long>(load[e]), bar, "########################################");
    }
  };

  std::printf("moela %s, backend %s (%s)\n", "MoE layer example", cpu<>::name(), xsimd::default_arch::name());
  layer.forward(y.view(), x.cview());
  print_load("load before balancing");
  if (T > 0) {
    std::printf("token 0 -> experts");
    for (index_t i = 0; i < cfg.num_experts_per_tok; ++i)
      std::printf(" %d (w %.3f)", layer.routing().topk_idx(0, i), double(layer.routing().topk_weight(0, i)));
    std::printf("\n");
  }

  // One auxiliary-loss-free step: bias += gamma * sign(mean load - load). V3 used gamma = 0.001;
  // a larger step shows its effect on this small batch.
  const float gamma = 0.02f;
  moe::balance_bias(layer.router().bias(), layer.last_load(), gamma);
  layer.forward(y.view(), x.cview());
  print_load("load after one bias update (gamma 0.02)");
  return 0;
}
