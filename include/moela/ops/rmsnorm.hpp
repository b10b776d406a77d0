#pragma once
/// \file moela/ops/rmsnorm.hpp
/// RMSNorm over the last dimension, FP32: `y = x / sqrt(mean(x^2) + eps) * w`.
///
/// Shapes: `x` and `y` are `[M, N]` (rows must be contiguous: unit stride in the last
/// dimension; row strides are free), `w` is `[N]`. `y` may be the same memory as `x`
/// (in-place). The sum of squares is accumulated in FP32 (xsimd lanes, then a horizontal add);
/// then each element is `(x_j * r) * w_j` with `r = 1 / sqrt(sum / N + eps)`: the order the
/// DeepSeek references use (spec §3.2; the bf16 roundings of the V3_REF profile are the
/// caller's business).
///
/// Errors: shape mismatches and non-contiguous rows throw `moela::error` naming `rmsnorm`.

#include <cmath>

#include <xsimd/xsimd.hpp>

#include "moela/core/tensor.hpp"

namespace moela {

namespace detail {

/// One row: y[0..n) = x[0..n) * r * w[0..n). x may equal y.
template <class Arch>
void rmsnorm_row(const float* x, const float* w, float* y, index_t n, float eps) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  batch acc0(0.f), acc1(0.f);
  index_t j = 0;
  for (; j + 2 * lanes <= n; j += 2 * lanes) {
    const batch a = batch::load_unaligned(x + j), b = batch::load_unaligned(x + j + lanes);
    acc0 = xsimd::fma(a, a, acc0);
    acc1 = xsimd::fma(b, b, acc1);
  }
  for (; j + lanes <= n; j += lanes) {
    const batch a = batch::load_unaligned(x + j);
    acc0 = xsimd::fma(a, a, acc0);
  }
  float ss = xsimd::hadd(acc0 + acc1);
  for (; j < n; ++j) ss += x[j] * x[j];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  const batch rv(r);
  j = 0;
  for (; j + lanes <= n; j += lanes)
    ((batch::load_unaligned(x + j) * rv) * batch::load_unaligned(w + j)).store_unaligned(y + j);
  for (; j < n; ++j) y[j] = (x[j] * r) * w[j];
}

}  // namespace detail

/// Row-wise RMSNorm of `x` into `y` with weight `w` (see the file comment). Single-threaded:
/// callers normalise a handful of rows per step; the model parallelises around it.
template <class Arch = xsimd::default_arch>
void rmsnorm(tensor_view<float, 2> y, const_view<float, 2> x, const_view<float, 1> w, float eps) {
  check(x.extent(1) == w.extent(0), "rmsnorm: x is ", to_string(x.shape()), " but w is ", to_string(w.shape()),
        " (last dimensions must match)");
  check(y.shape() == x.shape(), "rmsnorm: y is ", to_string(y.shape()), " but x is ", to_string(x.shape()));
  check(x.rows_contiguous() && y.rows_contiguous() && (w.extent(0) <= 1 || w.stride(0) == 1),
        "rmsnorm: rows of x, y and w must be contiguous");
  check(eps >= 0.f, "rmsnorm: eps must be >= 0, got ", eps);
  const index_t n = x.extent(1);
  if (n == 0) return;
  for (index_t m = 0; m < x.extent(0); ++m)
    detail::rmsnorm_row<Arch>(x.data() + m * x.stride(0), w.data(), y.data() + m * y.stride(0), n, eps);
}

/// In-place overload: `x = rmsnorm(x) * w`.
template <class Arch = xsimd::default_arch>
void rmsnorm(tensor_view<float, 2> x, const_view<float, 1> w, float eps) {
  rmsnorm<Arch>(x, const_view<float, 2>(x), w, eps);
}

}  // namespace moela
