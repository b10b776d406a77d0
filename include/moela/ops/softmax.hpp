#pragma once
/// \file moela/ops/softmax.hpp
/// Softmax pieces, FP32.
///
/// - `softmax(x)`: in-place, row-wise softmax of `x [M, N]` (rows contiguous); entries equal
///   to `-inf` get probability 0; a row that is entirely `-inf` becomes all zeros (not NaN).
/// - `softmax_state`: the running (max, sum) pair of an online ("flash") softmax over tiles of
///   one row. `rescale(tile_max)` returns the factor the accumulated output must be multiplied
///   by when a new tile with maximum `tile_max` arrives; `merge` combines two partial states
///   (split-KV), guarding the empty + empty case that would otherwise give NaN.
/// - `detail::exp_inplace<Arch>(p, n, shift)`: `p[j] = exp(p[j] - shift)` with xsimd's exp
///   (about 1 ulp), returning the sum.

#include <algorithm>
#include <cmath>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "moela/core/tensor.hpp"

namespace moela {

namespace detail {

/// p[j] = exp(p[j] - shift) for j < n; returns the sum of the results.
template <class Arch>
float exp_inplace(float* p, index_t n, float shift) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  const batch s(shift);
  batch acc(0.f);
  index_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const batch e = xsimd::exp(batch::load_unaligned(p + j) - s);
    e.store_unaligned(p + j);
    acc += e;
  }
  float sum = xsimd::hadd(acc);
  for (; j < n; ++j) {
    p[j] = std::exp(p[j] - shift);
    sum += p[j];
  }
  return sum;
}

/// max of p[0..n); -inf for n == 0.
template <class Arch>
float max_of(const float* p, index_t n) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  float m = -std::numeric_limits<float>::infinity();
  index_t j = 0;
  if (n >= lanes) {
    batch acc = batch::load_unaligned(p);
    for (j = lanes; j + lanes <= n; j += lanes) acc = xsimd::max(acc, batch::load_unaligned(p + j));
    alignas(64) float tmp[batch::size];
    acc.store_aligned(tmp);
    for (float v : tmp) m = std::max(m, v);
  }
  for (; j < n; ++j) m = std::max(m, p[j]);
  return m;
}

}  // namespace detail

/// Running state of an online softmax over one row.
struct softmax_state {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;

  bool empty() const { return max == -std::numeric_limits<float>::infinity(); }

  /// Moves the running max to `max(max, tile_max)`; returns the factor by which the sum (already
  /// rescaled here) and the caller's accumulated output must be multiplied.
  float rescale(float tile_max) {
    if (tile_max <= max) return 1.f;
    const float f = empty() ? 0.f : std::exp(max - tile_max);
    sum *= f;
    max = tile_max;
    return f;
  }

  /// Combines two partial states of the same row; `fa`, `fb` receive the factors for the two
  /// partial (unnormalised) outputs. Two empty states give an empty state and factors 0.
  static softmax_state merge(const softmax_state& a, const softmax_state& b, float& fa, float& fb) {
    softmax_state r;
    r.max = std::max(a.max, b.max);
    if (r.empty()) {
      fa = fb = 0.f;
      return r;
    }
    fa = a.empty() ? 0.f : std::exp(a.max - r.max);
    fb = b.empty() ? 0.f : std::exp(b.max - r.max);
    r.sum = a.sum * fa + b.sum * fb;
    return r;
  }
};

/// In-place row-wise softmax of `x [M, N]` (see the file comment).
template <class Arch = xsimd::default_arch>
void softmax(tensor_view<float, 2> x) {
  check(x.rows_contiguous(), "softmax: rows of x ", to_string(x.shape()), " must be contiguous");
  const index_t n = x.extent(1);
  for (index_t m = 0; m < x.extent(0); ++m) {
    float* p = x.data() + m * x.stride(0);
    const float mx = detail::max_of<Arch>(p, n);
    if (mx == -std::numeric_limits<float>::infinity()) {
      std::fill(p, p + n, 0.f);
      continue;
    }
    const float inv = 1.f / detail::exp_inplace<Arch>(p, n, mx);
    for (index_t j = 0; j < n; ++j) p[j] *= inv;
  }
}

}  // namespace moela
