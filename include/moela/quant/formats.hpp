#pragma once
/// \file moela/quant/formats.hpp
/// Weight format policies: small types naming a weight matrix's storage (code type), its block
/// shape and its scale layout. Each is a template parameter of `moela::qmatrix<Format>`.
///
/// | policy                         | code (per weight)          | scale grid for W[N, K]          | zero point |
/// |--------------------------------|----------------------------|----------------------------------|------------|
/// | `f32`, `bf16`, `fp16`          | float / bf16 / fp16        | none                             | no         |
/// | `fp8_block<BR, BC>`            | FP8 E4M3FN                 | float `[ceil(N/BR), ceil(K/BC)]` | no         |
/// | `fp8_block_e5m2<BR, BC>`       | FP8 E5M2                   | float `[ceil(N/BR), ceil(K/BC)]` | no         |
/// | `fp8_block_w8a8`               | FP8 E4M3FN, 128x128 blocks; matmul defaults to W8A8 | as fp8_block | no |
/// | `int8_rowwise<S>`              | int8 in [-127, 127]        | S `[N, 1]`                       | no         |
/// | `int8_group<G, S>`             | int8 in [-127, 127]        | S `[N, K/G]`                     | no         |
/// | `int4_group<G, int4_sym, S>`   | int4 in [-8, 7], 2 per byte| S `[N, K/G]`                     | no         |
/// | `int4_group<G, int4_asym, S>`  | uint4 in [0, 15], 2 per byte| S `[N, K/G]`                    | uint8 `[N, K/G]` |
/// | `with_mode<F, Mode>`           | as `F`; matmul defaults to `Mode` | as `F`                     | as `F`     |
/// | `int8_rowwise_a8`, `int4_group_a8<G>` | `with_mode<..., mode::int8_activations>` (W8A8 / W4A8) | | |
/// | `bf16_a16`, `fp8_block_a16<BR, BC>`, `int4_group_a16<G>` | `with_mode<..., mode::bf16_activations>` (W16A16 / W8A16 / W4A16) | | |
///
/// `S` (scale type) is `float` or `moela::bf16`. The dequantized weight is
///  - fp8:  `w = float(code) * scale[n / BR, k / BC]` (the checkpoint's `weight_scale_inv` is
///    this multiplier; one fp32 multiply, so dequantization is exact-in-fp32 and deterministic);
///  - int8 / int4 symmetric: `w = float(code) * scale`;
///  - int4 asymmetric (GPTQ/AWQ style): `w = float(code - zero) * scale`.
///
/// Example:
/// \code
///   using W = moela::qmatrix<moela::quant::int4_group<64>>;
///   W q = W::quantize(weights_f32);          // [N, K], K % 64 == 0
///   moela::matmul(y, x, q);                  // y[M, N] = x[M, K] · Wᵀ
/// \endcode

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "moela/core/config.hpp"
#include "moela/core/minifloat.hpp"

namespace moela::quant {

/// The family of a format; kernels and qmatrix select code paths on it.
enum class format_kind { dense, fp8_block, int8_rowwise, int8_group, int4_group };

/// Zero-point policy of `int4_group`.
enum class int4_zero {
  symmetric,   ///< signed codes in [-8, 7], `w = code * scale`, scale = amax / 7
  asymmetric,  ///< unsigned codes in [0, 15] and a per-group zero point, `w = (code - zero) * scale`
};
inline constexpr int4_zero int4_sym = int4_zero::symmetric;
inline constexpr int4_zero int4_asym = int4_zero::asymmetric;

/// Dense storage: every weight stored as one `T` (float, moela::bf16 or moela::fp16).
/// Conversion from float rounds to nearest even (IEEE overflow: bf16/fp16 overflow to ±inf).
template <class T>
struct dense {
  static constexpr format_kind kind = format_kind::dense;
  using code_type = T;
  using element = T;        ///< alias kept for older code
  using scale_type = float; ///< unused (no scales)
  static constexpr index_t block_rows = 1;
  static constexpr index_t group = 1;       ///< K-extent of a scale (1: no scales)
  static constexpr bool has_scales = false;
  static constexpr bool has_zero = false;
  static constexpr bool packed4 = false;
};
using f32 = dense<float>;
using bf16 = dense<moela::bf16>;
using fp16 = dense<moela::fp16>;

/// Matmul modes (tag types, passed as the last argument of `moela::matmul`).
namespace mode {
/// Weight-only quantization: weights are decoded to fp32 in registers / L1, activations stay
/// fp32 (or bf16 widened to fp32), fp32 accumulation. Most accurate; the default.
struct fast {};
/// Quantized activations, the DeepSeek-V3 `gemm_impl="fp8"` numerics: activations quantized to
/// E4M3 in 1x128 groups (`act_quant`), per 128-wide K block the FP8 x FP8 products are summed in
/// fp32 and then scaled `acc += (P * a_scale) * w_scale`. Only for `fp8_block<128, 128>` formats.
struct faithful {};
/// Integer activations (W8A8 / W4A8), for the int8 and int4 formats: activations are quantized
/// to int8 in 1x128 groups (`quantize_activations_int8` with group 128: `s = amax / 127`,
/// `q = clamp(rne(x / s), -127, 127)`), and `y = Σ_spans (Σ_k q_k c_k) · s_x · s_w` where a span
/// is the intersection of an activation group and a weight scale group and `c_k` the integer
/// weight code (minus its zero point). The integer sums are exact; the AVX2 kernels compute them
/// with `vpmaddubsw`/`vpmaddwd`, ~3x fewer instructions per weight than decoding to fp32, which
/// is what lets an int8/int4 GEMV stream its weights at memory speed on CPUs without VNNI.
/// M > 4 with AVX-512 VNNI runs the integer GEMM of backend/cpu/x86/gemm_a8_avx512.hpp
/// (`vpdpbusd`, the same exact span sums). Other paths (M > 4 without VNNI, no AVX2) multiply
/// the dequantized activations `q * s` in fp32 and agree to fp32 rounding. Cost in accuracy: each activation moves by at most s / 2 (a relative 2^-8 of
/// its group's amax), which adds at most Σ_k |w_k| s_k / 2 to an output.
struct int8_activations {};
/// BF16 activations, for the weight formats whose codes are exact in bf16 (`bf16_exact_format`:
/// `bf16`, every `fp8_block`, every `int4_group`): fp32 activations are rounded to bf16 (RNE;
/// bf16 ones are taken as they are), the weight codes are multiplied with them exactly, summed
/// in fp32, and the block or group scale (and int4 zero point) applied to those sums. With
/// AVX512-BF16: bf16 and FP8 weights with M > 4 run the `vdpbf16ps` GEMM of
/// backend/cpu/x86/gemm_bf16_avx512.hpp (2x the MACs of an fp32 FMA per instruction), int4
/// weights with M <= 256 the `vdpbf16ps` GEMV of backend/cpu/x86/gemv_bf16_avx512.hpp (about
/// half the instructions per weight byte of the fp32 decode, so decode streams int4 weights at
/// memory speed; over 4 rows in blocks of 4, each weight row read once); there bf16 subnormal
/// activations (below 2^-126) count as zero, as the instruction reads them. Otherwise the fast mode multiplies the rounded activations. These are the
/// numerics of a BF16 checkpoint run in bf16 (PyTorch `Linear` on bf16 tensors accumulates in
/// fp32 the same way). Cost in accuracy: each fp32 activation moves by at most 2^-9 of its
/// magnitude. bf16 activations with a bf16 or FP8 weight take the GEMM in the fast mode too
/// (there the rounding is exact).
struct bf16_activations {};
}  // namespace mode
/// Activation group width of `mode::int8_activations` (one int8 scale per 1 x 128 activations).
inline constexpr index_t int8_activation_group = 128;
/// `quant::fp8_mode::faithful` / `quant::fp8_mode::fast`: the same tags under the FP8 name.
namespace fp8_mode = mode;

/// Block-scaled FP8 (DeepSeek-V3 checkpoint layout): codes `Code` (fp8_e4m3 or fp8_e5m2), one
/// float scale per `BR x BC` block, partial edge blocks allowed (their scale covers the valid
/// part only). Quantizer, per block, in fp32: `amax = max(max|w|, 1e-4)`,
/// `scale = amax / max(Code)` (448 for E4M3, 57344 for E5M2), `code = Code::saturate(w / scale)`
/// (IEEE division, round-to-nearest-even, saturating to ±max; NaN stays NaN).
/// `Mode` is the matmul mode a weight of this format gets when none is named (see `mode` and
/// `fp8_block_w8a8`); the storage does not depend on it.
template <int BR = 128, int BC = 128, class Code = fp8_e4m3, class Mode = mode::fast>
struct fp8_block {
  static_assert(BR > 0 && BC > 0);
  static_assert(std::is_same_v<Code, fp8_e4m3> || std::is_same_v<Code, fp8_e5m2>,
                "fp8_block: Code is fp8_e4m3 or fp8_e5m2");
  static_assert(std::is_same_v<Mode, mode::fast> ||
                    (std::is_same_v<Mode, mode::faithful> && BR == 128 && BC == 128 && std::is_same_v<Code, fp8_e4m3>),
                "fp8_block: the faithful (W8A8) mode needs 128x128 blocks of E4M3 codes");
  static constexpr format_kind kind = format_kind::fp8_block;
  using matmul_mode = Mode;
  using code_type = Code;
  using scale_type = float;
  static constexpr index_t block_rows = BR;
  static constexpr index_t group = BC;
  static constexpr bool has_scales = true;
  static constexpr bool has_zero = false;
  static constexpr bool packed4 = false;
  static constexpr float code_max = float(Code::max());
};
/// The E5M2 variant (wider range, one mantissa bit less; not used by DeepSeek checkpoints).
template <int BR = 128, int BC = 128>
using fp8_block_e5m2 = fp8_block<BR, BC, fp8_e5m2>;
/// DeepSeek-V3's FP8 checkpoint format with the official `gemm_impl="fp8"` numerics as the
/// default: every `matmul` with such a weight quantizes its activations to E4M3 in 1x128 groups
/// (W8A8, `mode::faithful`). Same storage as `fp8_block<128, 128>`; a model built on it runs every
/// FP8 linear the way DeepSeek's FP8 inference kernels do (the router, embedding and LM head are
/// not FP8 in DeepSeek checkpoints and stay unquantized).
using fp8_block_w8a8 = fp8_block<128, 128, fp8_e4m3, mode::faithful>;

/// INT8, one scale per output row: `scale = amax(row) / 127`, `code = clamp(rne(w / scale))`.
/// With a bf16 scale, the scale is rounded to bf16 first and the codes are computed with the
/// rounded scale (so dequantization uses exactly the stored scale); codes are clamped to ±127.
template <class Scale = float>
struct int8_rowwise {
  static_assert(std::is_same_v<Scale, float> || std::is_same_v<Scale, moela::bf16>);
  static constexpr format_kind kind = format_kind::int8_rowwise;
  using code_type = std::int8_t;
  using scale_type = Scale;
  static constexpr index_t block_rows = 1;
  static constexpr index_t group = 0;  ///< 0: the whole row
  static constexpr bool has_scales = true;
  static constexpr bool has_zero = false;
  static constexpr bool packed4 = false;
};

/// INT8 with one scale per `G` consecutive weights of a row (G must divide K).
template <int G, class Scale = float>
struct int8_group {
  static_assert(G > 0);
  static_assert(std::is_same_v<Scale, float> || std::is_same_v<Scale, moela::bf16>);
  static constexpr format_kind kind = format_kind::int8_group;
  using code_type = std::int8_t;
  using scale_type = Scale;
  static constexpr index_t block_rows = 1;
  static constexpr index_t group = G;
  static constexpr bool has_scales = true;
  static constexpr bool has_zero = false;
  static constexpr bool packed4 = false;
};

/// 4-bit integers, one scale (and, asymmetric, one uint8 zero point in [0, 15]) per `G`
/// consecutive weights of a row; G in {32, 64, 128} and G must divide K. Two codes per byte,
/// element 2i in the low nibble of byte i (moela::int4x2 / uint4x2). Row-major `[N, K/2]`.
/// Symmetric: `scale = amax / 7`, `code = clamp(rne(w / scale), -8, 7)`.
/// Asymmetric: `lo = min(min w, 0)`, `hi = max(max w, 0)`, `scale = (hi - lo) / 15`,
/// `zero = clamp(rne(-lo / scale), 0, 15)`, `code = clamp(rne(w / scale) + zero, 0, 15)`.
template <int G, int4_zero Z = int4_zero::symmetric, class Scale = float>
struct int4_group {
  static_assert(G == 32 || G == 64 || G == 128, "int4_group: G is 32, 64 or 128");
  static_assert(std::is_same_v<Scale, float> || std::is_same_v<Scale, moela::bf16>);
  static constexpr format_kind kind = format_kind::int4_group;
  using code_type = std::uint8_t;  ///< a byte holding two codes
  using scale_type = Scale;
  static constexpr index_t block_rows = 1;
  static constexpr index_t group = G;
  static constexpr bool has_scales = true;
  static constexpr bool has_zero = Z == int4_zero::asymmetric;
  static constexpr bool packed4 = true;
  static constexpr int4_zero zero_policy = Z;
};
/// Shorthand for the asymmetric (zero-point) int4 format.
template <int G, class Scale = float>
using int4_group_asym = int4_group<G, int4_zero::asymmetric, Scale>;

/// What every weight format provides.
template <class F>
concept weight_format = requires {
  typename F::code_type;
  typename F::scale_type;
  { F::kind } -> std::convertible_to<format_kind>;
  { F::group } -> std::convertible_to<index_t>;
  { F::block_rows } -> std::convertible_to<index_t>;
};


template <class F>
concept fp8_format = F::kind == format_kind::fp8_block;

/// The integer formats (int8_rowwise, int8_group, int4_group): the ones `mode::int8_activations`
/// applies to.
template <class F>
concept integer_format = F::kind == format_kind::int8_rowwise || F::kind == format_kind::int8_group ||
                         F::kind == format_kind::int4_group;

/// The weight formats whose codes are exact in bf16, which `mode::bf16_activations` multiplies
/// with bf16 activations (the scales then multiply the fp32 sums of a block or group): `bf16`
/// (dense), every `fp8_block` (E4M3 or E5M2, any block shape; an FP8 value has at most 4
/// significant bits) and every `int4_group` (codes in [-8, 15]).
template <class F>
concept bf16_exact_format =
    (F::kind == format_kind::dense && std::is_same_v<typename F::code_type, moela::bf16>) ||
    F::kind == format_kind::fp8_block || F::kind == format_kind::int4_group;

/// Format `F` with `Mode` as the matmul mode its weights get when a call names none: same storage,
/// same quantizer, same kernels (`qmatrix<with_mode<F, M>>` holds exactly what `qmatrix<F>`
/// holds). Use it to make a whole model run a mode, e.g. `with_mode<int4_group<32>,
/// mode::int8_activations>` (W4A8).
template <class F, class Mode>
struct with_mode : F {
  static_assert(std::is_same_v<Mode, mode::fast> ||
                    (std::is_same_v<Mode, mode::int8_activations> && integer_format<F>) ||
                    (std::is_same_v<Mode, mode::bf16_activations> && bf16_exact_format<F>),
                "with_mode: mode::int8_activations needs an int8 or int4 format (for FP8 W8A8 use "
                "fp8_block_w8a8), mode::bf16_activations a bf16, fp8_block or int4_group format");
  using matmul_mode = Mode;
};
/// INT8 weights (one scale per row) with int8 activations: W8A8 integer GEMV.
template <class Scale = float>
using int8_rowwise_a8 = with_mode<int8_rowwise<Scale>, mode::int8_activations>;
/// Symmetric int4 weights in groups of G with int8 activations: W4A8 integer GEMV.
template <int G, class Scale = float>
using int4_group_a8 = with_mode<int4_group<G, int4_zero::symmetric, Scale>, mode::int8_activations>;

/// bf16 weights with bf16 activations (`vdpbf16ps`), whatever the activations' type: W16A16.
using bf16_a16 = with_mode<bf16, mode::bf16_activations>;
/// DeepSeek-V3's FP8 blocks with bf16 activations (the codes times bf16 activations, `vdpbf16ps`,
/// block scale per block): W8A16.
template <int BR = 128, int BC = 128>
using fp8_block_a16 = with_mode<fp8_block<BR, BC>, mode::bf16_activations>;

/// int4 weights in groups of G with bf16 activations (the codes times bf16 activations,
/// `vdpbf16ps`, group scale per group): W4A16, the int4 decode at memory speed on AVX512-BF16.
template <int G, int4_zero Zero = int4_zero::symmetric, class Scale = float>
using int4_group_a16 = with_mode<int4_group<G, Zero, Scale>, mode::bf16_activations>;

/// DeepSeek-V3's FP8 layout: E4M3 codes in 128x128 blocks. The faithful (W8A8) mode and loading
/// a checkpoint's FP8 tensors as they are need it.
template <class F>
concept deepseek_fp8_format = fp8_format<F> && F::block_rows == 128 && F::group == 128 &&
                              std::is_same_v<typename F::code_type, fp8_e4m3>;

/// The matmul mode of a weight of format `F` when the call names none: `F::matmul_mode` where
/// the format declares one (fp8_block, with_mode), else `mode::fast`.
template <class F>
struct default_mode {
  using type = mode::fast;
};
template <class F>
  requires requires { typename F::matmul_mode; }
struct default_mode<F> {
  using type = typename F::matmul_mode;
};
template <class F>
using default_mode_t = typename default_mode<F>::type;

}  // namespace moela::quant
