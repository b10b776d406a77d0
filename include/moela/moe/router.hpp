#pragma once
/// \file moela/moe/router.hpp
/// The DeepSeekMoE gate (spec §6.2), as a router composed of two policies:
///
/// - a **scoring** policy turning the `E` logits of a token into affinities `s` in FP32:
///   `softmax_scoring` (V2, V2-Lite) or `sigmoid_scoring` (V3);
/// - a **group-limit** policy deciding which experts a token may use:
///   `no_group_limit` (greedy top-K), `group_max` (V2: a group's score is the max of its
///   scores) or `group_top2_sum` (V3: the sum of its two best *biased* scores). The top
///   `topk_group` groups are kept; the experts of the other groups are excluded (as −inf).
///
/// `router<Scoring, GroupLimit>` fixes both at compile time; `router<>` (both
/// `from_config`) reads them from `moe_config` at construction and dispatches once per batch.
/// Aliases: `v2_lite_router`, `v2_router`, `v3_router`, `config_router`.
///
/// Per token `t` (x = row t of the input, W = gate weight `[E, D]`, b = correction bias):
/// ```
/// logits = x · Wᵀ                      FP32 (W widened exactly from the checkpoint's BF16)
/// s      = scoring(logits)             FP32, unbiased
/// c      = s + b   (noaux_tc)  or  s   the choice scores; they only select
/// group limit on c                     masked experts can never be chosen
/// I      = the K largest c             ordered by descending c
/// w_i    = s_i                         unbiased (bias only selects)
/// w_i   /= Σ_I s + 1e-20               if norm_topk_prob (HF's formula)
/// w_i   *= routed_scaling_factor       once, on routed weights only
/// ```
/// **Ties** (equal choice scores, or equal group scores) go to the **lower index**, so routing
/// is deterministic. References using `torch.topk` leave tie order unspecified (spec §6.2).
/// NaN scores rank below every number (and below −inf), so a NaN logit never displaces a real one.
///
/// All routing math is FP32 (the HF / V3.2 profile of spec §6.3).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/moe/config.hpp"
#include "moela/ops/matmul.hpp"
#include "moela/quant/dense.hpp"

namespace moela::moe {

// ---- scoring policies ---------------------------------------------------------------------

/// `s = softmax(logits)` over all E experts (before any masking), FP32, max-subtracted.
struct softmax_scoring {
  static constexpr score_fn kind = score_fn::softmax;
  static void apply(std::span<const float> logits, std::span<float> s) {
    float m = -std::numeric_limits<float>::infinity();
    for (float v : logits) m = std::max(m, v);
    float sum = 0.f;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      s[i] = std::exp(logits[i] - m);
      sum += s[i];
    }
    const float inv = 1.0f / sum;
    for (auto& v : s) v *= inv;
  }
};

/// `s = 1 / (1 + exp(-logits))`, FP32, element-wise.
struct sigmoid_scoring {
  static constexpr score_fn kind = score_fn::sigmoid;
  static void apply(std::span<const float> logits, std::span<float> s) {
    for (std::size_t i = 0; i < logits.size(); ++i) s[i] = 1.0f / (1.0f + std::exp(-logits[i]));
  }
};

// ---- group-limit policies -----------------------------------------------------------------

/// No group limit: top-K over all experts (`topk_method = greedy`).
struct no_group_limit {
  static constexpr topk_rule kind = topk_rule::greedy;
};

/// V2 `group_limited_greedy`: a group's score is the largest choice score in it.
struct group_max {
  static constexpr topk_rule kind = topk_rule::group_limited_greedy;
  static float group_score(std::span<const float> c) {
    float m = -std::numeric_limits<float>::infinity();
    for (float v : c) m = std::max(m, v);
    return m;
  }
};

/// V3 `noaux_tc`: a group's score is the sum of its two largest (biased) choice scores.
struct group_top2_sum {
  static constexpr topk_rule kind = topk_rule::noaux_tc;
  static float group_score(std::span<const float> c) {
    float a = -std::numeric_limits<float>::infinity(), b = a;  // a >= b
    for (float v : c) {
      if (v > a) {
        b = a;
        a = v;
      } else if (v > b) {
        b = v;
      }
    }
    return a + b;
  }
};

/// Placeholder policy: take the policy from `moe_config` at run time.
struct from_config {};

// ---- routing result -----------------------------------------------------------------------

/// The routing of a batch of T tokens.
struct routing {
  /// `[T, K]` expert ids, per token in descending choice score (ties: lower id first).
  tensor<std::int32_t, 2> topk_idx;
  /// `[T, K]` combine weights, same order: unbiased scores, normalised if configured, times
  /// routed_scaling_factor.
  tensor<float, 2> topk_weight;
  /// `[T, E]` unbiased affinities `s` (softmax or sigmoid of the logits).
  tensor<float, 2> scores;

  index_t tokens() const { return topk_idx.extent(0); }
  index_t k() const { return topk_idx.extent(1); }

  /// Makes the tensors `[t, k]`, `[t, k]`, `[t, e]`, reusing the memory when the shape is unchanged.
  void resize(index_t t, index_t k, index_t e) {
    if (topk_idx.extent(0) != t || topk_idx.extent(1) != k) {
      topk_idx = tensor<std::int32_t, 2>({t, k});
      topk_weight = tensor<float, 2>({t, k});
    }
    if (scores.extent(0) != t || scores.extent(1) != e) scores = tensor<float, 2>({t, e});
  }
};

namespace detail {

/// `a` ranks before `b` (value desc, then index asc; NaN last).
inline bool ranks_before(float va, index_t ia, float vb, index_t ib) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return nb;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

/// Per-thread scratch of the selection (no allocation per token).
struct select_scratch {
  std::vector<float> c;         // [E] choice scores
  std::vector<float> gscore;    // [G]
  std::vector<index_t> order;   // [max(E, G)]
  void reserve(index_t e, index_t g) {
    c.resize(static_cast<std::size_t>(e));
    gscore.resize(static_cast<std::size_t>(g));
    order.resize(static_cast<std::size_t>(std::max(e, g)));
  }
};

/// Routes one token: `logits [E]` -> `s [E]`, `idx [K]`, `w [K]`.
template <class Scoring, class GroupLimit>
void route_token(const moe_config& cfg, std::span<const float> logits, std::span<const float> bias,
                 std::span<float> s, std::span<std::int32_t> idx, std::span<float> w, select_scratch& sc) {
  const index_t E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  Scoring::apply(logits, s);
  float* c = sc.c.data();
  if (bias.empty()) {
    for (index_t e = 0; e < E; ++e) c[e] = s[static_cast<std::size_t>(e)];
  } else {
    for (index_t e = 0; e < E; ++e) c[e] = s[static_cast<std::size_t>(e)] + bias[static_cast<std::size_t>(e)];
  }
  index_t* ord = sc.order.data();
  if constexpr (!std::is_same_v<GroupLimit, no_group_limit>) {
    const index_t G = cfg.n_group, TG = cfg.topk_group, per = E / G;
    if (G > 1 && TG < G) {
      for (index_t g = 0; g < G; ++g)
        sc.gscore[static_cast<std::size_t>(g)] =
            GroupLimit::group_score(std::span<const float>(c + g * per, static_cast<std::size_t>(per)));
      for (index_t g = 0; g < G; ++g) ord[g] = g;
      const float* gs = sc.gscore.data();
      std::partial_sort(ord, ord + TG, ord + G,
                        [&](index_t a, index_t b) { return ranks_before(gs[a], a, gs[b], b); });
      std::vector<float>& keep = sc.gscore;  // group scores are no longer needed: 1 = kept, 0 = masked
      for (index_t g = 0; g < G; ++g) keep[static_cast<std::size_t>(g)] = 0.f;
      for (index_t i = 0; i < TG; ++i) keep[static_cast<std::size_t>(ord[i])] = 1.f;
      const float ninf = -std::numeric_limits<float>::infinity();
      for (index_t g = 0; g < G; ++g)
        if (keep[static_cast<std::size_t>(g)] == 0.f)
          for (index_t e = g * per; e < (g + 1) * per; ++e) c[e] = ninf;
    }
  }
  for (index_t e = 0; e < E; ++e) ord[e] = e;
  std::partial_sort(ord, ord + K, ord + E, [&](index_t a, index_t b) { return ranks_before(c[a], a, c[b], b); });
  float sum = 0.f;
  for (index_t i = 0; i < K; ++i) {
    idx[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(ord[i]);
    w[static_cast<std::size_t>(i)] = s[static_cast<std::size_t>(ord[i])];
    sum += w[static_cast<std::size_t>(i)];
  }
  if (cfg.norm_topk_prob) {
    const float denom = sum + 1e-20f;
    for (auto& v : w) v = v / denom * cfg.routed_scaling_factor;
  } else {
    for (auto& v : w) v *= cfg.routed_scaling_factor;
  }
}

}  // namespace detail

/// Routes every row of `logits [T, E]` into `out` (resized to `[T, K]` / `[T, E]`), parallel
/// over tokens. `bias` is `[E]` or empty. `cfg` is validated (moe_config::validate); that the
/// policies match it is the router's check. Errors (moela::error): an invalid config, logits
/// not `[T, E]` with contiguous rows, a bias of another length.
template <class Scoring, class GroupLimit>
void select_experts(const moe_config& cfg, const_view<float, 2> logits, std::span<const float> bias, routing& out) {
  cfg.validate();
  const index_t T = logits.extent(0), E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  check(logits.extent(1) == E, "moe::select_experts: logits are ", to_string(logits.shape()), " but the config has ",
        E, " experts");
  check(bias.empty() || static_cast<index_t>(bias.size()) == E, "moe::select_experts: bias has ", bias.size(),
        " entries for ", E, " experts");
  check(logits.rows_contiguous(), "moe::select_experts: logits rows must be contiguous");
  out.resize(T, K, E);
  parallel_for(
      T,
      [&](index_t t0, index_t t1) {
        detail::select_scratch sc;
        sc.reserve(E, cfg.n_group);
        for (index_t t = t0; t < t1; ++t) {
          detail::route_token<Scoring, GroupLimit>(
              cfg, std::span<const float>(&logits(t, 0), static_cast<std::size_t>(E)), bias,
              std::span<float>(out.scores.data() + t * E, static_cast<std::size_t>(E)),
              std::span<std::int32_t>(out.topk_idx.data() + t * K, static_cast<std::size_t>(K)),
              std::span<float>(out.topk_weight.data() + t * K, static_cast<std::size_t>(K)), sc);
        }
      },
      64);
}

/// Calls `f(Scoring{}, GroupLimit{})` with the policies `cfg` asks for.
template <class F>
decltype(auto) with_policies(const moe_config& cfg, F&& f) {
  const bool grouped = cfg.n_group > 1 && cfg.topk_group < cfg.n_group;
  auto with_group = [&](auto scoring) -> decltype(auto) {
    if (!grouped || cfg.topk_method == topk_rule::greedy) return f(scoring, no_group_limit{});
    if (cfg.topk_method == topk_rule::group_limited_greedy) return f(scoring, group_max{});
    return f(scoring, group_top2_sum{});
  };
  if (cfg.scoring_func == score_fn::softmax) return with_group(softmax_scoring{});
  return with_group(sigmoid_scoring{});
}

/// The gate of one MoE layer: weight `[E, D]` (FP32), optional correction bias `[E]` (FP32).
///
/// `Scoring` / `GroupLimit` are policies above, or `from_config` to follow the config. A fixed
/// policy that contradicts the config is an error at construction (e.g. `v3_router` with
/// `scoring_func = softmax`). `no_group_limit` also serves grouped configs whose limit keeps
/// every group (n_group = 1 or topk_group = n_group).
template <class Scoring = from_config, class GroupLimit = from_config>
class router {
 public:
  router() = default;

  /// `gate_weight [E, D]` = `mlp.gate.weight` widened to FP32; `bias [E]` =
  /// `mlp.gate.e_score_correction_bias` (FP32), required iff `topk_method == noaux_tc`,
  /// otherwise must be empty.
  router(const moe_config& cfg, tensor<float, 2> gate_weight, tensor<float, 1> bias = {})
      : cfg_(cfg), bias_(std::move(bias)) {
    cfg_.validate();
    check(gate_weight.extent(0) == cfg_.n_routed_experts && gate_weight.extent(1) == cfg_.hidden_size,
          "moe::router: gate weight is ", to_string(gate_weight.shape()), " but [", cfg_.n_routed_experts, ", ",
          cfg_.hidden_size, "] (n_routed_experts, hidden_size) was expected");
    if (cfg_.has_bias())
      check(bias_.extent(0) == cfg_.n_routed_experts, "moe::router: topk_method noaux_tc needs an ",
            "e_score_correction_bias of [", cfg_.n_routed_experts, "], got ", to_string(bias_.shape()));
    else
      check(bias_.empty(), "moe::router: an e_score_correction_bias was given but topk_method is ",
            to_string(cfg_.topk_method), " (only noaux_tc uses it)");
    if constexpr (!std::is_same_v<Scoring, from_config>)
      check(Scoring::kind == cfg_.scoring_func, "moe::router: the router's scoring policy is ",
            to_string(Scoring::kind), " but the config's scoring_func is ", to_string(cfg_.scoring_func));
    if constexpr (std::is_same_v<GroupLimit, no_group_limit>)
      check(!cfg_.group_limited(), "moe::router: no_group_limit cannot run topk_method ",
            to_string(cfg_.topk_method), " with n_group ", cfg_.n_group, " / topk_group ", cfg_.topk_group);
    else if constexpr (!std::is_same_v<GroupLimit, from_config>)
      check(GroupLimit::kind == cfg_.topk_method, "moe::router: the router's group policy is for ",
            to_string(GroupLimit::kind), " but the config's topk_method is ", to_string(cfg_.topk_method));
    gate_ = qmatrix<quant::f32>(std::move(gate_weight));
  }

  const moe_config& config() const { return cfg_; }
  /// The gate weight `[E, D]`.
  const qmatrix<quant::f32>& gate_weight() const { return gate_; }
  /// The correction bias `[E]` (empty unless noaux_tc); writable, for `balance_bias`.
  std::span<float> bias() { return bias_.flat(); }
  std::span<const float> bias() const { return bias_.flat(); }

  /// Routes `x [T, D]`: logits (FP32 GEMM), scores, selection, weights, into `out`.
  /// `logits` is scratch, resized to `[T, E]`.
  void route(const_view<float, 2> x, routing& out, tensor<float, 2>& logits) const {
    check(x.extent(1) == cfg_.hidden_size, "moe::router::route: x is ", to_string(x.shape()), " but hidden_size is ",
          cfg_.hidden_size);
    const index_t T = x.extent(0), E = cfg_.n_routed_experts;
    if (logits.extent(0) != T || logits.extent(1) != E) logits = tensor<float, 2>({T, E});
    if (T > 0) matmul(logits.view(), x, gate_);
    select(logits.cview(), out);
  }
  void route(const_view<float, 2> x, routing& out) const {
    tensor<float, 2> logits;
    route(x, out, logits);
  }

  /// Routing from precomputed logits `[T, E]`.
  void select(const_view<float, 2> logits, routing& out) const {
    dispatch([&](auto s, auto g) {
      select_experts<decltype(s), decltype(g)>(cfg_, logits, bias_.flat(), out);
    });
  }

 private:
  template <class F>
  void dispatch(F&& f) const {
    if constexpr (!std::is_same_v<Scoring, from_config> && !std::is_same_v<GroupLimit, from_config>) {
      if constexpr (std::is_same_v<GroupLimit, no_group_limit>) {
        f(Scoring{}, no_group_limit{});
      } else {
        // A fixed group policy still skips the group step when it keeps every group.
        if (cfg_.group_limited()) f(Scoring{}, GroupLimit{});
        else f(Scoring{}, no_group_limit{});
      }
    } else {
      with_policies(cfg_, f);
    }
  }

  moe_config cfg_;
  qmatrix<quant::f32> gate_;
  tensor<float, 1> bias_;
};

using config_router = router<>;
using v2_lite_router = router<softmax_scoring, no_group_limit>;
using v2_router = router<softmax_scoring, group_max>;
using v3_router = router<sigmoid_scoring, group_top2_sum>;

}  // namespace moela::moe
