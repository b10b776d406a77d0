#pragma once
/// \file moela/ops/swiglu.hpp
/// The SwiGLU gate of DeepSeek's FFNs (spec §3.3): `h = silu(gate) ⊙ up`, with
/// `silu(z) = z / (1 + exp(-z))`, in FP32.
///
/// - `swiglu<Arch>(h, gate, up)` on spans of equal length `n` (xsimd, instantiated for `Arch`;
///   the default is the translation unit's best arch). `h` may alias `gate` or `up` exactly
///   (in place); partial overlap is not allowed.
/// - `swiglu(cpu<Arch>{}, h[M, N], gate[M, N], up[M, N])` on row-contiguous 2-D views,
///   parallel over rows.
///
/// Accuracy: xsimd's `exp` is within a few ulp of the correctly rounded value, so each output is
/// within about 4 ulp (relative 5e-7) of `silu(gate)·up` evaluated exactly, for finite inputs.
/// A very negative finite gate gives `-0 · up`; `gate = -inf` gives NaN (as PyTorch's
/// `silu(-inf)`); NaN propagates.
/// Errors: a `moela::error` naming `swiglu` when the lengths / shapes differ or rows are strided.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include <xsimd/xsimd.hpp>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/tags.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"

namespace moela {

namespace detail {

/// A scalar form of the same formula (std::exp), for readers and tests; the kernel below does
/// not use it, so that an element's bits never depend on where it falls in the span.
inline float silu_mul_scalar(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }

template <class Arch>
void swiglu_kernel(float* h, const float* gate, const float* up, std::size_t n) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t w = batch::size;
  const std::size_t vec_end = n - n % w;
  const batch one(1.0f);
  auto silu_mul = [&](batch g, batch u) { return g / (one + xsimd::exp(-g)) * u; };
  std::size_t i = 0;
  for (; i < vec_end; i += w)
    silu_mul(batch::load_unaligned(gate + i), batch::load_unaligned(up + i)).store_unaligned(h + i);
  if (i == n) return;
  // The tail goes through the same vector formula on a padded copy, so that h[i] is the same
  // bits whatever n and i are: callers that cut a row into ranges (moe::expert_runner, whose
  // cuts follow the thread count) get results independent of the cut.
  alignas(64) float gt[w] = {}, ut[w] = {}, ht[w];
  std::copy(gate + i, gate + n, gt);
  std::copy(up + i, up + n, ut);
  silu_mul(batch::load_unaligned(gt), batch::load_unaligned(ut)).store_unaligned(ht);
  std::copy(ht, ht + (n - i), h + i);
}

}  // namespace detail

/// `h[i] = silu(gate[i]) * up[i]` for every i. Sizes must agree.
template <class Arch = xsimd::default_arch>
void swiglu(std::span<float> h, std::span<const float> gate, std::span<const float> up) {
  check(h.size() == gate.size() && h.size() == up.size(), "swiglu: h has ", h.size(), " elements, gate ",
        gate.size(), ", up ", up.size(), " (they must agree)");
  detail::swiglu_kernel<Arch>(h.data(), gate.data(), up.data(), h.size());
}

/// Row-wise `h = silu(gate) ⊙ up` on `[M, N]` views (rows must be contiguous), parallel over rows.
template <class Arch>
void swiglu(cpu<Arch>, tensor_view<float, 2> h, const_view<float, 2> gate, const_view<float, 2> up) {
  check(h.shape() == gate.shape() && h.shape() == up.shape(), "swiglu: h is ", to_string(h.shape()), ", gate ",
        to_string(gate.shape()), ", up ", to_string(up.shape()), " (shapes must agree)");
  check(h.rows_contiguous() && gate.rows_contiguous() && up.rows_contiguous(),
        "swiglu: rows of h, gate and up must be contiguous");
  const index_t m = h.extent(0), n = h.extent(1);
  if (m == 0 || n == 0) return;
  const index_t grain = std::max<index_t>(1, 16384 / n);
  parallel_for(
      m,
      [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r)
          detail::swiglu_kernel<Arch>(&h(r, 0), &gate(r, 0), &up(r, 0), static_cast<std::size_t>(n));
      },
      grain);
}

}  // namespace moela
