#pragma once
/// \file moela/ops/matmul.hpp
/// `moela::matmul(y, x, W)`: `y[M, N] = x[M, K] · W[N, K]ᵀ` for a weight `W` in any format of
/// `moela/quant/formats.hpp`, activations fp32 or bf16, fp32 accumulation, fp32 output.
///
/// Overloads (the backend tag first selects the backend; without it, `cpu<>`):
/// \code
///   moela::matmul(y, x, w);                                   // fast mode (weight-only quant)
///   moela::matmul(moela::cpu<>{}, y, x, w);                   // same, backend named
///   moela::matmul(y, x_bf16, w);                              // bf16 activations
///   moela::matmul(y, x, w_bf16, moela::quant::mode::bf16_activations{});  // x rounded to bf16
///   moela::matmul(y, x, w_fp8, moela::quant::fp8_mode::faithful{});  // DeepSeek W8A8 FP8 numerics
///   moela::quant::int8_activation_rows xq(x);                 // int8 activations, quantized once,
///   moela::matmul(y, xq, w_int4);                             // for several int8/int4 weights
/// \endcode
///
/// Modes (tags in moela::quant::mode, also named quant::fp8_mode):
///  - `fast` (default): the weight is dequantized in registers/L1 (exactly `dequantize()`'s
///    values) and multiplied with the fp32 activations. Error = fp32 rounding only. Use it
///    whenever you want the best accuracy per weight byte, and for every non-FP8 format.
///  - `faithful` (fp8_block<128,128> only): activations are first quantized to E4M3 in 1x128
///    groups (`quantize_activations_fp8`), then per 128-wide K block the exact FP8 x FP8 products
///    are summed in fp32 and scaled `(P * x_scale) * w_scale` (DeepSeek-V3 `fp8_gemm`). Use it to
///    reproduce the official `gemm_impl="fp8"` results (golden `gemm.out_w8a8`); it adds the
///    activation quantization error (~2^-4 relative per element) and is not faster on CPUs
///    without FP8 arithmetic. A weight of format `quant::fp8_block_w8a8` gets this mode by default
///    (so a whole model built on that format runs W8A8); naming `fast` still overrides it.
///  - `int8_activations` (int8 and int4 formats): activations quantized to int8 in 1x128 groups
///    and multiplied with the integer codes exactly (W8A8 / W4A8, see quant::mode). Use it for
///    decode speed on CPUs: the integer GEMV reads int8/int4 weights at up to ~3x the rate of the
///    fast mode's fp32 decode; it costs one int8 rounding per activation (<= 2^-8 of its group's
///    amax). `quant::with_mode<F, mode::int8_activations>` (e.g. `int4_group_a8<32>`) makes it
///    a format's default.
///  - `bf16_activations` (bf16, fp8_block and int4_group formats): activations rounded to bf16
///    and multiplied exactly with the weight codes, fp32 sums (block or group scale per block or
///    group); on AVX512-BF16 the `vdpbf16ps` GEMM for bf16 and FP8 weights with M > 4 (~2x the
///    fast mode's rate) and the `vdpbf16ps` GEMV for int4 weights with M <= 256 (int4 decode at
///    memory speed, which the fast mode's fp32 decode is not on two Zen 4 cores); see
///    quant::mode. Use it where bf16 activations are accurate enough (they are what a BF16 model
///    runs on): prefill with bf16 or FP8 weights, decode with int4 weights (`int4_group_a16<G>`
///    makes it the format's default). bf16 activations with bf16 or FP8 weights take that GEMM
///    in the fast mode too (M > 4), since rounding them to bf16 is then exact.
///
/// Shapes: x `[M, K]`, y `[M, N]` with K = W.cols(), N = W.rows(); y's rows must be contiguous.
/// Errors (`moela::error`): shape mismatch (message names the shapes), empty W, y overlapping x
/// in memory.
/// Threads: `moela::parallel_for` (see set_num_threads). Memory: no allocation per call. What a
/// call needs besides y (a copy of bf16 or non-contiguous x as fp32 rows, quantized activations,
/// the kernels' packed panels) lives in buffers of the calling thread, grown on first use to the
/// largest size seen and reused after; so a decode loop allocates only in its first step.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/cpu/qgemm.hpp"
#include "moela/backend/cpu/x86/gemm_bf16_avx512.hpp"
#include "moela/backend/tags.hpp"
#include "moela/quant/activation.hpp"
#include "moela/quant/formats.hpp"
#include "moela/quant/qmatrix.hpp"

namespace moela {

namespace detail {

template <class T, class Format>
void check_matmul_shapes(const tensor_view<float, 2>& y, const tensor_view<const T, 2>& x, const qmatrix<Format>& w) {
  check(w.rows() > 0, "matmul: W is empty");
  check(x.extent(1) == w.cols(), "matmul: x is ", to_string(x.shape()), " but W is [", w.rows(), ", ", w.cols(),
        "] (K must match)");
  check(y.extent(0) == x.extent(0) && y.extent(1) == w.rows(), "matmul: y is ", to_string(y.shape()), " but [",
        x.extent(0), ", ", w.rows(), "] was expected (x is ", to_string(x.shape()), ", W is [", w.rows(), ", ",
        w.cols(), "])");
  check(y.rows_contiguous(), "matmul: y ", to_string(y.shape()), " must have contiguous rows (stride ",
        y.stride(1), ")");
  check(!memory_overlaps(y, x), "matmul: y ", to_string(y.shape()), " overlaps x ", to_string(x.shape()),
        " in memory (the output is written while x is read; use another buffer)");
}

/// x as fp32 rows of stride `ldx`: x's own data when it already is that (fp32, rows contiguous),
/// else a copy (bf16 widened exactly) in the calling thread's buffer, grown once and reused.
template <class Arch, class T>
const float* f32_rows(const_view<T, 2> x, index_t& ldx) {
  const index_t m = x.extent(0), k = x.extent(1);
  if constexpr (std::is_same_v<T, float>) {
    if (x.rows_contiguous()) {
      ldx = m > 1 ? x.stride(0) : k;
      return x.data();
    }
  }
  thread_local std::vector<float> buf;
  float* xf = grown(buf, m * k);
  for (index_t r = 0; r < m; ++r) {
    float* dst = xf + r * k;
    if constexpr (std::is_same_v<T, moela::bf16>) {
      if (x.rows_contiguous()) {
        to_float<Arch>(std::span<const moela::bf16>(x.data() + r * x.stride(0), static_cast<std::size_t>(k)),
                       std::span<float>(dst, static_cast<std::size_t>(k)));
      } else {
        for (index_t c = 0; c < k; ++c) dst[c] = x(r, c).to_float();
      }
    } else {
      for (index_t c = 0; c < k; ++c) dst[c] = x(r, c);
    }
  }
  ldx = k;
  return xf;
}

/// y = dequant(xq) · Wᵀ, shapes already checked: the one path of int8 activations.
template <class Arch, class Format>
void matmul_int8_rows(tensor_view<float, 2> y, const quant::int8_activation_rows& xq, const qmatrix<Format>& w) {
  const index_t m = xq.rows();
  if (m == 0) return;
  qgemm_a8<Arch, Format>(y.data(), m > 1 ? y.stride(0) : w.rows(), xq.codes().data(), xq.scales().data(),
                         xq.values().data(), m, w);
}

/// The formats the `vdpbf16ps` GEMM takes (bf16 and FP8; int4 takes the GEMV, bf16_gemv_runs).
template <class Format>
inline constexpr bool bf16_gemm_format = quant::bf16_exact_format<Format> && !Format::packed4;

/// Whether matmul_bf16_rows has a bf16 kernel for `m` rows (else it widens the rows to fp32).
template <class Arch, class Format>
constexpr bool bf16_kernel_runs(index_t m) {
  return bf16_gemv_runs<Arch, Format>(m) || (bf16_gemm_format<Format> && bf16_gemm_runs<Arch>(m));
}

/// y = xb · Wᵀ for bf16 activation rows `xb` (stride ldx, even, >= K rounded up to even, the
/// padding column zero), shapes already checked: the one path of `mode::bf16_activations`.
/// The `vdpbf16ps` GEMM where bf16_gemm_runs (bf16, FP8), the `vdpbf16ps` GEMV where
/// bf16_gemv_runs (int4); otherwise (and when the GEMM declines an odd FP8 block width) the
/// rows widened exactly to fp32 through the fast mode.
template <class Arch, class Format>
void matmul_bf16_rows(tensor_view<float, 2> y, const moela::bf16* xb, index_t ldx, index_t m, const qmatrix<Format>& w) {
  static_assert(quant::bf16_exact_format<Format>,
                "matmul: mode::bf16_activations needs a bf16, fp8_block or int4_group weight (codes exact in bf16)");
  if (m == 0) return;
  const index_t ldy = m > 1 ? y.stride(0) : w.rows();
  if constexpr (Format::packed4) {
    if (bf16_gemv_runs<Arch, Format>(m)) {
      qgemv_bf16<Arch>(y.data(), ldy, xb, ldx, m, w);
      return;
    }
  }
#ifdef MOELA_AVX512_GEMM_BF16
  if constexpr (use_avx512_bf16<Arch> && bf16_gemm_format<Format>)
    if (bf16_gemm_runs<Arch>(m) && gemm_bf16_dp(y.data(), ldy, xb, ldx, m, w)) return;
#endif
  index_t ldf = 0;
  const float* xf = f32_rows<Arch>(const_view<moela::bf16, 2>(xb, {m, w.cols()}, {ldx, 1}), ldf);
  qgemm<Arch, Format, false>(y.data(), ldy, xf, ldf, m, w, nullptr);
}

/// x as bf16 rows of even stride with a zero padding column for odd K (what matmul_bf16_rows
/// reads): fp32 rounded RNE, bf16 copied; the calling thread's buffer, grown once and reused.
template <class Arch, class T>
const moela::bf16* bf16_rows(const_view<T, 2> x, index_t& ldx) {
  const index_t m = x.extent(0), k = x.extent(1);
  ldx = (k + 1) / 2 * 2;
  thread_local std::vector<moela::bf16> buf;
  moela::bf16* xb = grown(buf, m * ldx);
  for (index_t r = 0; r < m; ++r) {
    moela::bf16* dst = xb + r * ldx;
    if (x.rows_contiguous()) {
      const T* src = x.data() + r * x.stride(0);
      if constexpr (std::is_same_v<T, float>)
        from_float<Arch>(std::span<const float>(src, static_cast<std::size_t>(k)), std::span<moela::bf16>(dst, static_cast<std::size_t>(k)));
      else
        std::copy_n(src, k, dst);
    } else {
      for (index_t c = 0; c < k; ++c) dst[c] = moela::bf16(x(r, c));
    }
    if (ldx > k) dst[k] = moela::bf16(0.0f);
  }
  return xb;
}

template <class Arch, class Format, class Mode>
void matmul_f32(tensor_view<float, 2> y, const float* x, index_t ldx, index_t m, const qmatrix<Format>& w) {
  if (m == 0) return;
  const index_t ldy = m > 1 ? y.stride(0) : w.rows();
  if constexpr (std::is_same_v<Mode, quant::mode::faithful>) {
    static_assert(quant::deepseek_fp8_format<Format>,
                  "matmul: the faithful FP8 mode needs an fp8_block<128, 128> (E4M3) weight");
    const index_t k = w.cols(), kb = (k + 127) / 128;
    // The calling thread's buffers, grown once and reused: the MoE experts call this once per
    // weight chunk, and a fresh allocation of M x K floats per call costs page faults.
    thread_local std::vector<fp8_e4m3> q_buf;
    thread_local std::vector<float> xs_buf, xd_buf;
    fp8_e4m3* q = grown(q_buf, m * k);
    float* xs = grown(xs_buf, m * kb);
    float* xd = grown(xd_buf, m * k);
    const auto mk = static_cast<std::size_t>(m * k);
    quant::quantize_activations_fp8(const_view<float, 2>(x, {m, k}, {ldx, 1}), tensor_view<fp8_e4m3, 2>(q, {m, k}),
                                    tensor_view<float, 2>(xs, {m, kb}));
    to_float<Arch>(std::span<const fp8_e4m3>(q, mk), std::span<float>(xd, mk));
    qgemm<Arch, Format, true>(y.data(), ldy, xd, k, m, w, xs);
  } else if constexpr (std::is_same_v<Mode, quant::mode::int8_activations>) {
    static_assert(quant::integer_format<Format>,
                  "matmul: mode::int8_activations needs an int8 or int4 weight (int8_rowwise, int8_group, int4_group)");
    // The calling thread's buffers (decode calls this per token), grown once and reused.
    thread_local quant::int8_activation_rows xq;
    xq.assign(const_view<float, 2>(x, {m, w.cols()}, {ldx, 1}));
    matmul_int8_rows<Arch>(y, xq, w);
  } else if constexpr (std::is_same_v<Mode, quant::mode::bf16_activations>) {
    index_t ldb = 0;
    const moela::bf16* xb = bf16_rows<Arch>(const_view<float, 2>(x, {m, w.cols()}, {ldx, 1}), ldb);
    matmul_bf16_rows<Arch>(y, xb, ldb, m, w);
  } else {
    static_assert(std::is_same_v<Mode, quant::mode::fast>, "matmul: unknown mode tag");
    qgemm<Arch, Format, false>(y.data(), ldy, x, ldx, m, w, nullptr);
  }
}

}  // namespace detail

/// `y = x · Wᵀ` on the CPU backend, fp32 activations. See the file comment.
template <class A, class Format, class Mode = quant::default_mode_t<Format>>
void matmul(cpu<A>, tensor_view<float, 2> y, const_view<float, 2> x, const qmatrix<Format>& w, Mode = {}) {
  detail::check_matmul_shapes(y, x, w);
  index_t ldx = 0;
  const float* xf = detail::f32_rows<A>(x, ldx);
  detail::matmul_f32<A, Format, Mode>(y, xf, ldx, x.extent(0), w);
}

/// `y = x · Wᵀ` on the CPU backend, bf16 activations (widened exactly to fp32; with a bf16 or
/// fp8_block weight and M > 4, the bf16 GEMM of mode::bf16_activations).
template <class A, class Format, class Mode = quant::default_mode_t<Format>>
void matmul(cpu<A>, tensor_view<float, 2> y, const_view<moela::bf16, 2> x, const qmatrix<Format>& w, Mode = {}) {
  detail::check_matmul_shapes(y, x, w);
  // bf16 activations with a bf16 or FP8 weight: mode::bf16_activations and the fast mode are the
  // same numerics (the rounding to bf16 is exact), so both take the bf16 GEMM where it runs and
  // the fast mode on the widened rows elsewhere. An int4 weight takes the bf16 GEMV when the
  // mode is bf16_activations only (the fast mode keeps its fp32 kernels, which read bf16
  // subnormals as they are).
  constexpr bool bf16_mode = std::is_same_v<Mode, quant::mode::bf16_activations>;
  if constexpr (bf16_mode || (std::is_same_v<Mode, quant::mode::fast> && detail::bf16_gemm_format<Format>)) {
    if (detail::bf16_kernel_runs<A, Format>(x.extent(0))) {
      index_t ldb = 0;
      const moela::bf16* xb = detail::bf16_rows<A>(x, ldb);
      detail::matmul_bf16_rows<A>(y, xb, ldb, x.extent(0), w);
      return;
    }
  }
  index_t ldx = 0;
  const float* xf = detail::f32_rows<A>(x, ldx);
  detail::matmul_f32<A, Format, std::conditional_t<bf16_mode, quant::mode::fast, Mode>>(y, xf, ldx, x.extent(0), w);
}

/// `y = dequant(xq) · Wᵀ` on the CPU backend for activations quantized beforehand
/// (`quant::int8_activation_rows`) and an int8 or int4 weight: the same result as
/// `matmul(y, x, W, quant::mode::int8_activations{})` on the rows `xq` was made from, without
/// quantizing them again (share one `xq` between the weights that multiply the same rows).
/// Shapes: `xq` `[M, K]`, y `[M, N]`; errors as for fp32 activations.
template <class A, class Format>
void matmul(cpu<A>, tensor_view<float, 2> y, const quant::int8_activation_rows& xq, const qmatrix<Format>& w) {
  static_assert(quant::integer_format<Format>,
                "matmul: int8 activations need an int8 or int4 weight (int8_rowwise, int8_group, int4_group)");
  detail::check_matmul_shapes(y, xq.codes(), w);
  detail::matmul_int8_rows<A>(y, xq, w);
}

/// `y = dequant(xq) · Wᵀ` on the default backend (`cpu<>`).
template <class Format>
void matmul(tensor_view<float, 2> y, const quant::int8_activation_rows& xq, const qmatrix<Format>& w) {
  matmul(cpu<>{}, y, xq, w);
}

/// `y = x · Wᵀ` on the default backend (`cpu<>`), fp32 activations.
template <class Format, class Mode = quant::default_mode_t<Format>>
void matmul(tensor_view<float, 2> y, const_view<float, 2> x, const qmatrix<Format>& w, Mode mode = {}) {
  matmul(cpu<>{}, y, x, w, mode);
}

/// `y = x · Wᵀ` on the default backend (`cpu<>`), bf16 activations.
template <class Format, class Mode = quant::default_mode_t<Format>>
void matmul(tensor_view<float, 2> y, const_view<moela::bf16, 2> x, const qmatrix<Format>& w, Mode mode = {}) {
  matmul(cpu<>{}, y, x, w, mode);
}

}  // namespace moela
