#pragma once
/// \file moela/moe/layer.hpp
/// `moe::moe_layer<Backend, Format, Router>`: one DeepSeekMoE layer (spec §6.1),
/// ```
/// y = Σ_{i ∈ I(x)} w_i(x) · FFN_i(x)  +  FFN_shared(x)
/// ```
/// (the residual add belongs to the decoder layer). `Backend` is `cpu<Arch>`; `Format` is the
/// weight format of the experts (`quant::bf16`, `quant::f32`, ..., any format `moela::matmul`
/// accepts); `Router` is a `moe::router<...>` (default: `config_router`, policies from the
/// config). The gate itself stays FP32 whatever `Format` is.
///
/// Forward for `x [T, D]` (FP32):
/// 1. route: logits, scores, top-K and weights (`routing()` keeps them for inspection);
/// 2. dispatch: a counting sort groups the T·K pairs by expert (`dispatch_plan`);
/// 3. each *active* expert runs once on all of its tokens (GEMV for one token, GEMM for many),
///    together with the shared expert (width `n_shared_experts · moe_intermediate_size`) on all
///    tokens, as (expert, row chunk) tasks over the thread pool (`expert_runner`,
///    moela/moe/experts.hpp): work spreads by expert and by rows, so one hot expert still uses
///    every thread. Inactive experts' weights are never read;
/// 4. combine: per token, shared output + the weighted expert rows summed in ascending expert
///    order (deterministic whatever the thread count).
///
/// `last_load()` gives the tokens each routed expert received in the last forward, the input of
/// `balance_bias` (moela/moe/balance.hpp) together with `router().bias()`.
///
/// Routed experts that own their weights are moved at construction into one buffer the layer's
/// experts share (`qmatrix::share_storage`: huge pages for the matrices a decode step streams at
/// random); experts borrowed from a memory-mapped checkpoint stay where they are.
///
/// Not thread-safe (the layer owns its scratch): one object per concurrent caller. Scratch grows
/// to the largest batch seen (about `2·T·K·D + 2·T·K·I` floats) and is reused.
///
/// Errors: `moela::error` at construction when the weights do not match the config (naming the
/// tensor), and at `forward` when `x` / `y` are not `[T, hidden_size]`.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moela/backend/tags.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/core/workspace.hpp"
#include "moela/moe/config.hpp"
#include "moela/moe/dispatch.hpp"
#include "moela/moe/experts.hpp"
#include "moela/moe/ffn.hpp"
#include "moela/moe/router.hpp"

namespace moela::moe {

/// Everything one MoE layer reads from a checkpoint (HF names relative to `model.layers.N.mlp`).
template <class Format>
struct moe_weights {
  tensor<float, 2> gate;                        ///< `gate.weight` [E, D], widened to FP32
  tensor<float, 1> bias;                        ///< `gate.e_score_correction_bias` [E] (FP32), noaux_tc only
  std::vector<swiglu_weights<Format>> experts;  ///< `experts.E.{gate,up,down}_proj` [E]
  swiglu_weights<Format> shared;                ///< `shared_experts.*`, width n_shared·moe_inter (empty if 0)
};

template <class Backend, class Format, class Router = config_router>
class moe_layer;

template <class Arch, class Format, class Router>
class moe_layer<cpu<Arch>, Format, Router> {
 public:
  using backend = cpu<Arch>;
  using format = Format;
  using router_type = Router;

  moe_layer() = default;

  /// Validates `cfg` and every weight's shape against it.
  moe_layer(const moe_config& cfg, moe_weights<Format> w)
      : cfg_(cfg), router_(cfg, std::move(w.gate), std::move(w.bias)), experts_(std::move(w.experts)),
        shared_(std::move(w.shared)) {
    check(static_cast<index_t>(experts_.size()) == cfg_.n_routed_experts, "moe_layer: ", experts_.size(),
          " routed experts given but n_routed_experts is ", cfg_.n_routed_experts);
    for (std::size_t e = 0; e < experts_.size(); ++e)
      experts_[e].validate("moe_layer: experts." + std::to_string(e), cfg_.hidden_size, cfg_.moe_intermediate_size);
    if (cfg_.n_shared_experts > 0)
      shared_.validate("moe_layer: shared_experts", cfg_.hidden_size, cfg_.shared_intermediate_size());
    else
      check(shared_.gate_proj.rows() == 0, "moe_layer: shared expert weights given but n_shared_experts is 0");
    load_.assign(static_cast<std::size_t>(cfg_.n_routed_experts), 0);
    // Routed experts that own their weights (built or converted in memory, not borrowed from a
    // checkpoint file) move into one buffer in huge pages: a decode step reads a few of them at
    // random, and in 4 KiB pages that ran up to 12% slower (`moela-bench` `moe_pages/`, docs/moe.md).
    std::vector<qmatrix<Format>*> own;
    for (auto& e : experts_)
      for (auto* m : {&e.gate_proj, &e.up_proj, &e.down_proj})
        if (m->owns_storage()) own.push_back(m);
    if (own.size() == 3 * experts_.size()) qmatrix<Format>::share_storage(own);
    sliced_.reserve(experts_.size());
    for (const auto& e : experts_) sliced_.emplace_back(e);
    if (cfg_.n_shared_experts > 0) shared_sliced_ = sliced_ffn<Format>(shared_);
  }

  const moe_config& config() const { return cfg_; }
  Router& router() { return router_; }
  const Router& router() const { return router_; }
  const std::vector<swiglu_weights<Format>>& experts() const { return experts_; }
  const swiglu_weights<Format>& shared() const { return shared_; }

  /// `y [T, D] = MoE(x [T, D])`. T may be 0. `y` must not alias `x`.
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) { run(y, x, true, true); }

  /// The routed part only: `y [T, D] = Σ_i w_i · FFN_i(x)`. Updates `routing()` and `last_load()`.
  void forward_routed(tensor_view<float, 2> y, const_view<float, 2> x) { run(y, x, true, false); }

  /// The shared expert only: `y [T, D] = FFN_shared(x)` (zeros when n_shared_experts is 0).
  /// Leaves `routing()` and `last_load()` as they were.
  void forward_shared(tensor_view<float, 2> y, const_view<float, 2> x) { run(y, x, false, true); }

  /// The routing of the last forward (indices, weights, scores).
  const moela::moe::routing& routing() const { return routing_; }
  /// Tokens each routed expert received in the last forward `[E]` (sums to T·K).
  std::span<const index_t> last_load() const { return load_; }
  /// The dispatch of the last forward (per-expert offsets, active experts).
  const dispatch_plan& plan() const { return plan_; }

  /// Weight bytes one forward reads: the gate, the active experts' and the shared expert's.
  std::size_t active_weight_bytes() const {
    std::size_t b = router_.gate_weight().bytes() + shared_.bytes();
    for (std::int32_t e : plan_.active) b += experts_[static_cast<std::size_t>(e)].bytes();
    return b;
  }

 private:
  void run(tensor_view<float, 2> y, const_view<float, 2> x, bool routed, bool shared) {
    const index_t T = x.extent(0), D = cfg_.hidden_size, K = cfg_.num_experts_per_tok;
    check(x.extent(1) == D && y.extent(0) == T && y.extent(1) == D, "moe_layer::forward: x is ", to_string(x.shape()),
          " and y ", to_string(y.shape()), " but [T, ", D, "] (hidden_size) is needed for both");
    check(x.rows_contiguous() && y.rows_contiguous(), "moe_layer::forward: rows of x and y must be contiguous");
    const bool with_shared = shared && cfg_.n_shared_experts > 0;
    auto& sc = moela::detail::thread_workspace<scratch>();
    jobs_.clear();
    tensor_view<float, 2> xs, eo, sh;
    if (routed) {
      router_.route(x, routing_, logits_);
      plan_.build(routing_, cfg_.n_routed_experts);
      for (index_t e = 0; e < cfg_.n_routed_experts; ++e) load_[static_cast<std::size_t>(e)] = plan_.count(e);
      const index_t n = T * K;
      xs = moela::detail::scratch_view(sc.xs, n, D);
      eo = moela::detail::scratch_view(sc.eo, n, D);
      plan_.gather(xs, x);
      for (std::int32_t e : plan_.active) {
        const index_t b = plan_.offsets[static_cast<std::size_t>(e)], c = plan_.count(e);
        jobs_.push_back({&sliced_[static_cast<std::size_t>(e)], xs.slice(0, b, b + c), eo.slice(0, b, b + c)});
      }
    }
    if (with_shared) {
      if (routed) {
        sh = moela::detail::scratch_view(sc.shared, T, D);
      } else {
        sh = y;
      }
      jobs_.push_back({&shared_sliced_, x, sh});
    }
    if (T == 0) return;
    runner_.run(backend{}, std::span<const expert_job<Format>>(jobs_));
    if (routed) {
      plan_.combine(y, eo, with_shared ? const_view<float, 2>(sh) : const_view<float, 2>{});
    } else if (!with_shared) {
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) y(t, d) = 0.f;
    }
  }

  moe_config cfg_;
  Router router_;
  std::vector<swiglu_weights<Format>> experts_;
  swiglu_weights<Format> shared_;
  // state of the last forward and scratch
  moela::moe::routing routing_;
  tensor<float, 2> logits_;
  dispatch_plan plan_;
  std::vector<index_t> load_;
  std::vector<sliced_ffn<Format>> sliced_;
  sliced_ffn<Format> shared_sliced_;
  std::vector<expert_job<Format>> jobs_;
  expert_runner runner_;
  /// The rows gathered per expert, the experts' outputs and the shared expert's output: the
  /// calling thread's, shared by every moe_layer on it (moela/core/workspace.hpp).
  struct scratch {
    std::vector<float> xs, eo, shared;
    std::size_t bytes() const { return moela::detail::capacity_bytes(xs, eo, shared); }
  };
};

}  // namespace moela::moe

namespace moela {
/// `moela::moe_layer<Backend, Format, Router>` is `moela::moe::moe_layer` (the namespace
/// `moela::moe` takes the name `moela::moe`).
using moe::moe_layer;
}  // namespace moela
