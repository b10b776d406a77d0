#pragma once
/// \file moela/quant/activation.hpp
/// On-the-fly activation quantization.
///
/// `quantize_activations_fp8(x, q, scale)`: DeepSeek-V3's `act_quant` (contract ACT_V3 of the
/// spec, §8.5): for each row of `x[M, K]` and each group of `group` (default 128) consecutive
/// elements, in fp32: `amax = max(max|x|, 1e-4)`, `s = amax / 448` (IEEE division),
/// `q = e4m3_satfinite_rne(x / s)`. With `scale_format::ue8m0` (V3.1/V3.2 configs):
/// `s = 2^ceil(log2(amax / 448))`, computed exactly from the fp32 bits. Shapes: `q[M, K]`,
/// `scale[M, ceil(K / group)]`. The official kernel needs K % group == 0; here a shorter last
/// group is allowed (its amax covers the valid part, the same as zero padding).
/// Bit-exact with the golden vectors `aq.*` and `aq_ue8m0.*` (tests/data/golden).
///
/// `quantize_activations_int8(x, q, scale)`: per-row symmetric INT8 (the activation side of a
/// W8A8 integer GEMM): `s = amax(row) / 127` (s = 0 for an all-zero row), `q = clamp(rne(x / s),
/// -127, 127)`. Shapes: `q[M, K]`, `scale[M]`. A NaN or infinite activation makes its row's
/// scale NaN or inf and the row's codes 0.
///
/// `quantize_activations_int8(x, q, scale, group)`: the same per 1 x `group` group (the activation
/// side of `quant::mode::int8_activations`, group 128): `scale[M, ceil(K / group)]`; a shorter
/// last group covers the rest of the row.
///
/// `int8_activation_rows`: `x[M, K]` quantized once with the grouped INT8 quantizer (group
/// `int8_activation_group`), kept for several `matmul(y, xq, W)` calls with int8/int4 weights
/// (moela/ops/matmul.hpp): the numerics of `mode::int8_activations` without quantizing the same
/// rows again for every weight.
///
/// Errors (`moela::error`): shape mismatches, group <= 0.
/// \code
///   moela::tensor<moela::fp8_e4m3, 2> q({m, k});
///   moela::tensor<float, 2> s({m, (k + 127) / 128});
///   moela::quant::quantize_activations_fp8(x, q.view(), s.view());
/// \endcode

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"
#include "moela/quant/qmatrix.hpp"

#include "moela/backend/cpu/x86/quantize_int8_avx2.hpp"

namespace moela::quant {

/// How an activation group scale is stored: plain fp32, or rounded up to a power of two (UE8M0).
enum class scale_format { fp32, ue8m0 };

namespace detail {
/// The smallest power of two >= s (s > 0, finite), exact from the fp32 bits.
inline float ceil_pow2(float s) {
  const std::uint32_t b = std::bit_cast<std::uint32_t>(s);
  const std::uint32_t e = b >> 23, m = b & 0x7FFFFFu;
  if (e == 0) {  // subnormal: next power of two above (or equal to) m * 2^-149
    std::uint32_t p = 1;
    while (p < m) p <<= 1;
    return p >= 0x800000u ? std::bit_cast<float>(1u << 23) : std::bit_cast<float>(p);
  }
  return std::bit_cast<float>((e + (m != 0 ? 1u : 0u)) << 23);
}

/// Scale of one activation group with the given amax (already clamped to >= 1e-4).
inline float act_group_scale(float amax, float code_max, scale_format fmt) {
  const float s = amax / code_max;
  return fmt == scale_format::ue8m0 ? ceil_pow2(s) : s;
}
}  // namespace detail

/// Quantizes `x[M, K]` to FP8 `Code` (E4M3 by default) in 1 x `group` groups; see file comment.
template <class Code = fp8_e4m3>
void quantize_activations_fp8(const_view<float, 2> x, tensor_view<Code, 2> q, tensor_view<float, 2> scale,
                              scale_format fmt = scale_format::fp32, index_t group = 128) {
  check(group > 0, "quantize_activations_fp8: group size must be positive, got ", group);
  const index_t m = x.extent(0), k = x.extent(1), g = (k + group - 1) / group;
  check_shape("quantize_activations_fp8", "q", q, {m, k});
  check_shape("quantize_activations_fp8", "scale", scale, {m, g});
  constexpr float code_max = float(Code::max());
  for (index_t r = 0; r < m; ++r)
    for (index_t gi = 0; gi < g; ++gi) {
      const index_t c0 = gi * group, c1 = std::min(k, c0 + group);
      float amax = 0.f;
      for (index_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x(r, c)));
      const float s = detail::act_group_scale(std::max(amax, 1e-4f), code_max, fmt);
      scale(r, gi) = s;
      for (index_t c = c0; c < c1; ++c) q(r, c) = Code::saturate(x(r, c) / s);
    }
}

namespace detail {
/// One group of `len` activations to int8 (see the file comment); returns the scale. Rounding is
/// RNE independent of the FP environment (truncate, then round the exact remainder). It runs on
/// every activation of a W8A8 / W4A8 matmul, so AVX2 builds do the same arithmetic with
/// intrinsics (backend/cpu/x86/quantize_int8_avx2.hpp; ~8x the scalar loop, which GCC 12 does
/// not vectorize). A NaN or infinite
/// activation makes the scale NaN or inf and the codes 0, so the group's products come out NaN,
/// as in fp32.
inline float quantize_int8_group(const float* x, index_t len, std::int8_t* q) {
  float amax = 0.f;
  index_t c1 = 0;
#if defined(__AVX2__) && !defined(MOELA_FORCE_GENERIC)
  c1 = moela::detail::int8_group_amax_avx2(x, len, amax);
#endif
  for (index_t c = c1; c < len; ++c) {
    const float a = std::fabs(x[c]);
    amax = (a > amax || a != a) ? a : amax;  // NaN sticks
  }
  const float s = amax / 127.0f;
  if (!(s > 0.f && s <= std::numeric_limits<float>::max())) {
    for (index_t c = 0; c < len; ++c) q[c] = 0;
    return s;
  }
  index_t c0 = 0;
#if defined(__AVX2__) && !defined(MOELA_FORCE_GENERIC)
  c0 = moela::detail::int8_group_round_avx2(x, len, s, q);
#endif
  for (index_t c = c0; c < len; ++c) {
    const float v = x[c] / s;                   // |v| <= 127 up to rounding
    int t = static_cast<int>(v);                // toward zero
    const float f = v - static_cast<float>(t);  // exact
    const float af = std::fabs(f);
    const int up = int(af > 0.5f) | (int(af == 0.5f) & (t & 1));  // ties to even
    t += f < 0.f ? -up : up;
    q[c] = static_cast<std::int8_t>(std::clamp(t, -127, 127));
  }
  return s;
}
}  // namespace detail

/// Quantizes `x[M, K]` to INT8 in 1 x `group` groups; see file comment.
inline void quantize_activations_int8(const_view<float, 2> x, tensor_view<std::int8_t, 2> q,
                                      tensor_view<float, 2> scale, index_t group) {
  check(group > 0, "quantize_activations_int8: group size must be positive, got ", group);
  const index_t m = x.extent(0), k = x.extent(1), g = (k + group - 1) / group;
  check_shape("quantize_activations_int8", "q", q, {m, k});
  check_shape("quantize_activations_int8", "scale", scale, {m, g});
  check(q.rows_contiguous(), "quantize_activations_int8: q must have contiguous rows");
  std::vector<float> row(static_cast<std::size_t>(x.rows_contiguous() ? 0 : k));
  for (index_t r = 0; r < m; ++r) {
    const float* xr = x.data() + r * x.stride(0);
    if (!x.rows_contiguous()) {
      for (index_t c = 0; c < k; ++c) row[static_cast<std::size_t>(c)] = x(r, c);
      xr = row.data();
    }
    for (index_t gi = 0; gi < g; ++gi) {
      const index_t c0 = gi * group, n = std::min(k, c0 + group) - c0;
      scale(r, gi) = detail::quantize_int8_group(xr + c0, n, q.data() + r * q.stride(0) + c0);
    }
  }
}

/// Quantizes `x[M, K]` to INT8 with one scale per row; see file comment.
inline void quantize_activations_int8(const_view<float, 2> x, tensor_view<std::int8_t, 2> q,
                                      tensor_view<float, 1> scale) {
  const index_t m = x.extent(0), k = x.extent(1);
  check_shape("quantize_activations_int8", "q", q, {m, k});
  check_shape("quantize_activations_int8", "scale", scale, {m});
  if (k == 0) {  // empty rows: scale 0
    for (index_t r = 0; r < m; ++r) scale(r) = 0.f;
    return;
  }
  // One group spanning the row: the grouped overload with group = K.
  tensor_view<float, 2> s2(scale.data(), {m, 1}, {scale.stride(0), 1});
  quantize_activations_int8(x, q, s2, k);
}

/// Activations `x[M, K]` quantized to INT8 in 1 x `int8_activation_group` groups, ready for
/// `matmul(y, xq, W)` with int8/int4 weights as often as needed. `assign` quantizes new rows into
/// the same buffers, which grow on demand and never shrink (no allocation in a decode loop once
/// sized). Codes `[M, K]`, scales `[M, ceil(K / 128)]` and the values code · scale `[M, K]` are
/// row-contiguous. The values are what batches of more than 4 rows are multiplied with on CPUs
/// without VNNI (in fp32, as the fast mode does); keeping them here computes them once per
/// assign, not once per weight.
/// \code
///   moela::quant::int8_activation_rows xq(x);   // once per token block
///   moela::matmul(gate_out, xq, w_gate);        // int8_rowwise / int8_group / int4_group weights
///   moela::matmul(up_out, xq, w_up);
/// \endcode
class int8_activation_rows {
 public:
  int8_activation_rows() = default;
  explicit int8_activation_rows(const_view<float, 2> x) { assign(x); }

  /// Quantizes `x` (any strides) into this object's buffers, replacing what they held.
  void assign(const_view<float, 2> x) {
    rows_ = x.extent(0);
    cols_ = x.extent(1);
    scale_cols_ = (cols_ + int8_activation_group - 1) / int8_activation_group;
    quantize_activations_int8(x, tensor_view<std::int8_t, 2>(moela::detail::grown(codes_, rows_ * cols_), {rows_, cols_}),
                              tensor_view<float, 2>(moela::detail::grown(scales_, rows_ * scale_cols_), {rows_, scale_cols_}),
                              int8_activation_group);
    moela::detail::grown(values_, rows_ * cols_);
    for (index_t r = 0; r < rows_; ++r)
      for (index_t g = 0; g < scale_cols_; ++g) {
        const float s = scales_[static_cast<std::size_t>(r * scale_cols_ + g)];
        const index_t k1 = std::min(cols_, (g + 1) * int8_activation_group);
        for (index_t k = g * int8_activation_group; k < k1; ++k)
          values_[static_cast<std::size_t>(r * cols_ + k)] = static_cast<float>(codes_[static_cast<std::size_t>(r * cols_ + k)]) * s;
      }
  }

  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  /// The int8 codes, `[rows, cols]`.
  const_view<std::int8_t, 2> codes() const { return const_view<std::int8_t, 2>(codes_.data(), {rows_, cols_}); }
  /// One scale per group of 128 columns, `[rows, ceil(cols / 128)]`; value = code * scale.
  const_view<float, 2> scales() const { return const_view<float, 2>(scales_.data(), {rows_, scale_cols_}); }
  /// The activations these codes stand for, code · scale in fp32 (exact but for the one rounding
  /// of the product), `[rows, cols]`.
  const_view<float, 2> values() const { return const_view<float, 2>(values_.data(), {rows_, cols_}); }
  /// Bytes of the buffers this object holds (their capacity: they grow and are reused).
  std::size_t bytes() const { return codes_.capacity() + (scales_.capacity() + values_.capacity()) * sizeof(float); }

 private:
  index_t rows_ = 0, cols_ = 0, scale_cols_ = 0;
  std::vector<std::int8_t> codes_;
  std::vector<float> scales_;
  std::vector<float> values_;
};

}  // namespace moela::quant
