#pragma once
/// \file moela/backend/cuda/tiles/routing.hpp
/// The MoE router of one token (spec §6.2, fp32 throughout as the V32/HF contract of §6.3), as
/// a `MOELA_HOST_DEVICE` function: the CUDA router kernel runs it with one thread per token,
/// and the host unit tests run the very same code against a float64 reference.
///
/// Steps: scores `s = sigmoid(logits)` or `softmax(logits)` (over all experts); choice scores
/// `c = s + bias` (bias only when given); with `groups > 1`, each group scores `max c`
/// (`group_score::max`, V2's group_limited_greedy) or the sum of its two largest `c`
/// (`group_score::top2_sum`, V3's noaux_tc), the `top_groups` best groups are kept and the
/// others' experts get `c = -inf`; the `k` largest `c` are selected (ties toward the lower
/// index); weights are the UNBIASED `s` of the selected experts, renormalized to sum 1 when
/// `renormalize`, then multiplied by `route_scale`. Outputs are ordered by decreasing `c`.

#include <cmath>
#include <limits>

#include "moela/core/config.hpp"

namespace moela::gpu::tiles {

/// Scoring function of the router.
enum class score_func { softmax, sigmoid };

/// How a group of experts is scored for the group-limited step.
enum class group_score { max, top2_sum };

/// Router configuration (HF config names in comments). `groups == 1` means no group limit
/// (HF `topk_method: greedy`).
struct router_params {
  int experts = 256;                       ///< n_routed_experts
  int k = 8;                               ///< num_experts_per_tok
  int groups = 8;                          ///< n_group
  int top_groups = 4;                      ///< topk_group
  score_func scoring = score_func::sigmoid;  ///< scoring_func
  bool renormalize = true;                 ///< norm_topk_prob
  float route_scale = 2.5f;                ///< routed_scaling_factor
  group_score group_rule = group_score::top2_sum;  ///< from topk_method (max: group_limited_greedy)
};

/// Limits of the one-thread-per-token router (local arrays).
inline constexpr int router_max_experts = 512;
inline constexpr int router_max_k = 32;
inline constexpr int router_max_groups = 64;

/// True when (a, ia) ranks before (b, ib): larger value first, lower index on ties.
/// NaN ranks after everything.
MOELA_HOST_DEVICE constexpr bool ranks_before(float a, int ia, float b, int ib) {
  if (a != a) return false;
  if (b != b) return true;
  return a > b || (a == b && ia < ib);
}

/// One step of a top-k selection: inserts (v, i) into the sorted lists `vals`/`ids` holding
/// `n` entries (at most `k`); returns the new count.
MOELA_HOST_DEVICE inline int topk_insert(float* vals, int* ids, int n, int k, float v, int i) {
  if (n == k && !ranks_before(v, i, vals[k - 1], ids[k - 1])) return n;
  int pos = n < k ? n : k - 1;
  while (pos > 0 && ranks_before(v, i, vals[pos - 1], ids[pos - 1])) {
    vals[pos] = vals[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  vals[pos] = v;
  ids[pos] = i;
  return n < k ? n + 1 : n;
}

/// The score of one logit under `sigmoid` (softmax needs the whole row; see route_token).
MOELA_HOST_DEVICE inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/// Whether `p` is supported by route_token (sizes within the local-array limits, groups
/// dividing the experts, k not above the experts left after group masking).
MOELA_HOST_DEVICE inline bool router_params_valid(const router_params& p) {
  if (p.experts < 1 || p.experts > router_max_experts || p.k < 1 || p.k > router_max_k) return false;
  if (p.groups < 1 || p.groups > router_max_groups || p.experts % p.groups != 0) return false;
  if (p.top_groups < 1 || p.top_groups > p.groups) return false;
  if (p.groups > 1 && p.group_rule == group_score::top2_sum && p.experts / p.groups < 2) return false;
  return p.k <= p.top_groups * (p.experts / p.groups);
}

/// Routes one token. `logits[experts]`, `bias[experts]` or null; writes `ids[k]`, `weights[k]`.
/// `scratch` holds `2 * experts` floats. `p` must satisfy router_params_valid.
MOELA_HOST_DEVICE inline void route_token(const router_params& p, const float* logits, const float* bias,
                                          float* scratch, int* ids, float* weights) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  float* s = scratch;
  float* c = scratch + p.experts;
  if (p.scoring == score_func::sigmoid) {
    for (int e = 0; e < p.experts; ++e) s[e] = sigmoid(logits[e]);
  } else {
    float mx = ninf;
    for (int e = 0; e < p.experts; ++e) mx = logits[e] > mx ? logits[e] : mx;
    float sum = 0.0f;
    for (int e = 0; e < p.experts; ++e) {
      s[e] = expf(logits[e] - mx);
      sum += s[e];
    }
    for (int e = 0; e < p.experts; ++e) s[e] = s[e] / sum;
  }
  for (int e = 0; e < p.experts; ++e) c[e] = bias ? s[e] + bias[e] : s[e];

  if (p.groups > 1) {
    const int per = p.experts / p.groups;
    float gv[router_max_groups];
    int gi[router_max_groups];
    int ng = 0;
    for (int g = 0; g < p.groups; ++g) {
      float b1 = ninf, b2 = ninf;  // two largest of the group
      for (int j = 0; j < per; ++j) {
        const float v = c[g * per + j];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      ng = topk_insert(gv, gi, ng, p.top_groups, p.group_rule == group_score::top2_sum ? b1 + b2 : b1, g);
    }
    for (int g = 0; g < p.groups; ++g) {
      bool kept = false;
      for (int j = 0; j < ng; ++j) kept = kept || gi[j] == g;
      if (!kept)
        for (int j = 0; j < per; ++j) c[g * per + j] = ninf;
    }
  }

  float tv[router_max_k];
  int n = 0;
  for (int e = 0; e < p.experts; ++e) n = topk_insert(tv, ids, n, p.k, c[e], e);
  float sum = 0.0f;
  for (int j = 0; j < p.k; ++j) {
    weights[j] = s[ids[j]];
    sum += weights[j];
  }
  for (int j = 0; j < p.k; ++j) {
    const float w = p.renormalize ? weights[j] / sum : weights[j];
    weights[j] = w * p.route_scale;
  }
}

}  // namespace moela::gpu::tiles
