#pragma once
/// \file moela/moe/dispatch.hpp
/// Dispatch and combine of routed tokens.
///
/// `dispatch_plan::build(routing, E)` buckets the `T·K` (token, slot) pairs of a routing by
/// expert with a counting sort: `offsets[e] .. offsets[e+1]` are the sorted positions of expert
/// `e`'s pairs, tokens ascending within an expert (the sort is stable). Each pair's token,
/// weight and the inverse map `(t, slot) -> position` are kept, so an expert's tokens form one
/// contiguous block of rows: gather those rows, run the expert once on the block (a GEMV when
/// it has one token, a GEMM when it has many), and `combine` adds each token's `K` weighted
/// expert rows back, in ascending expert order (deterministic, independent of thread count).
///
/// Memory: vectors sized `E + 1` and `T·K`, grown on demand and reused; nothing is allocated
/// per token.

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/moe/router.hpp"

namespace moela::moe {

struct dispatch_plan {
  std::vector<index_t> offsets;     ///< [E + 1]: expert e owns sorted positions [offsets[e], offsets[e+1])
  std::vector<index_t> token;       ///< [T·K]: token of each sorted position
  std::vector<float> weight;        ///< [T·K]: combine weight of each sorted position
  std::vector<index_t> position;    ///< [T·K]: sorted position of pair (t, slot), at t·K + slot
  std::vector<std::int32_t> active; ///< experts with at least one token, ascending
  index_t tokens = 0, k = 0;

  index_t experts() const { return static_cast<index_t>(offsets.size()) - 1; }
  index_t count(index_t e) const { return offsets[static_cast<std::size_t>(e + 1)] - offsets[static_cast<std::size_t>(e)]; }

  /// Counting sort of `r`'s pairs by expert. Throws moela::error if an id is outside `[0, E)`
  /// or `r.topk_weight`'s shape differs from `r.topk_idx`'s.
  void build(const routing& r, index_t E) {
    const index_t T = r.tokens(), K = r.k(), n = T * K;
    check(r.topk_weight.shape() == r.topk_idx.shape(), "moe::dispatch_plan: topk_weight is ",
          to_string(r.topk_weight.shape()), " but topk_idx is ", to_string(r.topk_idx.shape()));
    tokens = T;
    k = K;
    offsets.assign(static_cast<std::size_t>(E + 1), 0);
    token.resize(static_cast<std::size_t>(n));
    weight.resize(static_cast<std::size_t>(n));
    position.resize(static_cast<std::size_t>(n));
    const std::int32_t* idx = r.topk_idx.data();
    const float* w = r.topk_weight.data();
    for (index_t i = 0; i < n; ++i) {
      const index_t e = idx[i];
      check(e >= 0 && e < E, "moe::dispatch_plan: expert id ", e, " of token ", i / K, " is outside [0, ", E, ")");
      ++offsets[static_cast<std::size_t>(e + 1)];
    }
    active.clear();
    for (index_t e = 0; e < E; ++e) {
      if (offsets[static_cast<std::size_t>(e + 1)] > 0) active.push_back(static_cast<std::int32_t>(e));
      offsets[static_cast<std::size_t>(e + 1)] += offsets[static_cast<std::size_t>(e)];
    }
    // Scatter, each expert writing from its start offset (stable: pairs are visited in order).
    std::vector<index_t>& cur = cursor_;
    cur.assign(offsets.begin(), offsets.end() - 1);
    for (index_t i = 0; i < n; ++i) {
      const index_t p = cur[static_cast<std::size_t>(idx[i])]++;
      token[static_cast<std::size_t>(p)] = i / K;
      weight[static_cast<std::size_t>(p)] = w[i];
      position[static_cast<std::size_t>(i)] = p;
    }
  }

  /// `xs[p, :] = x[token[p], :]` for every sorted position p (parallel over positions). x:
  /// `[tokens, D]` (the rows the plan was built for), xs: at least `[tokens * k, D]`; other
  /// shapes throw moela::error.
  void gather(tensor_view<float, 2> xs, const_view<float, 2> x) const {
    const index_t n = tokens * k, D = x.extent(1);
    check(x.extent(0) == tokens, "moe::dispatch_plan::gather: x has ", x.extent(0), " rows but the plan routes ",
          tokens, " tokens");
    check(xs.extent(0) >= n && xs.extent(1) == D, "moe::dispatch_plan::gather: xs is ", to_string(xs.shape()),
          " but at least [", n, ", ", D, "] is needed");
    parallel_for(
        n,
        [&](index_t p0, index_t p1) {
          for (index_t p = p0; p < p1; ++p) {
            const float* src = &x(token[static_cast<std::size_t>(p)], 0);
            float* dst = &xs(p, 0);
            for (index_t d = 0; d < D; ++d) dst[d] = src[d];
          }
        },
        std::max<index_t>(1, 8192 / std::max<index_t>(D, 1)));
  }

  /// `y[t, :] = base[t, :] + Σ_slot weight · eo[position(t, slot), :]`, slots in ascending
  /// expert order (parallel over tokens). `eo` holds the expert outputs in sorted order; `base`
  /// is `[T, D]` or empty (zeros).
  void combine(tensor_view<float, 2> y, const_view<float, 2> eo, const_view<float, 2> base = {}) const {
    const index_t D = y.extent(1);
    check(y.extent(0) == tokens && eo.extent(1) == D && eo.extent(0) >= tokens * k, "moe::dispatch_plan::combine: y is ",
          to_string(y.shape()), " and the expert outputs ", to_string(eo.shape()), " for ", tokens, " tokens x ", k,
          " experts");
    check(base.empty() || base.shape() == y.shape(), "moe::dispatch_plan::combine: base is ", to_string(base.shape()),
          " but y is ", to_string(y.shape()));
    parallel_for(
        tokens,
        [&](index_t t0, index_t t1) {
          std::vector<index_t> ps(static_cast<std::size_t>(k));
          for (index_t t = t0; t < t1; ++t) {
            for (index_t s = 0; s < k; ++s) ps[static_cast<std::size_t>(s)] = position[static_cast<std::size_t>(t * k + s)];
            std::sort(ps.begin(), ps.end());  // sorted position order == ascending expert id
            float* out = &y(t, 0);
            if (base.empty()) {
              for (index_t d = 0; d < D; ++d) out[d] = 0.f;
            } else {
              const float* b = &base(t, 0);
              for (index_t d = 0; d < D; ++d) out[d] = b[d];
            }
            for (index_t p : ps) {
              const float wt = weight[static_cast<std::size_t>(p)];
              const float* src = &eo(p, 0);
              for (index_t d = 0; d < D; ++d) out[d] += wt * src[d];
            }
          }
        },
        std::max<index_t>(1, 4096 / std::max<index_t>(D * k, 1)));
  }

 private:
  std::vector<index_t> cursor_;
};

}  // namespace moela::moe
