#pragma once
/// \file moela/backend/cpu/convert.hpp
/// Vectorised bulk conversions between float and the narrow types of `moela/core/minifloat.hpp`
/// (bf16, fp16, fp8_e4m3, fp8_e5m2). Every function gives exactly the result of the scalar
/// conversion in minifloat.hpp applied element-wise (tested bit for bit), only faster:
///  - widening (`to_float`): exact;
///  - narrowing (`from_float`): round-to-nearest-even; bf16/fp16 with IEEE overflow (as their
///    constructors), fp8 with the named `overflow` rule (default saturate, what quantizers use).
///
/// Paths: x86 AVX2 (+F16C) intrinsics when the translation unit is compiled for them and
/// MOELA_FORCE_GENERIC is not defined; a portable path otherwise (scalar loops the compiler
/// vectorises where it can). Template parameter `Arch` is the xsimd architecture (default: the
/// one the translation unit is compiled for), so TUs with different flags never share a symbol.
///
/// Shapes: `in.size() == out.size()` (checked, `moela::error`).
/// \code
///   std::vector<moela::bf16> h(n); std::vector<float> f(n);
///   moela::to_float(std::span<const moela::bf16>(h), std::span<float>(f));
/// \endcode

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__) && !defined(MOELA_FORCE_GENERIC)
#define MOELA_X86_AVX2_KERNELS 1
#include <immintrin.h>
#endif

/// Fully unrolls the next loop (constant trip count): keeps small accumulator arrays in registers.
#ifndef MOELA_UNROLL
#if defined(__clang__)
#define MOELA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MOELA_UNROLL _Pragma("GCC unroll 16")
#else
#define MOELA_UNROLL
#endif
#endif

namespace moela {

namespace detail {

/// True when `Arch` is (or extends) AVX2 or AVX-512 and the AVX2 intrinsic kernels are compiled
/// in. (xsimd's AVX-512 archs do not derive from avx2, but every AVX-512 CPU has AVX2, FMA and
/// F16C, and these kernels use 256-bit intrinsics only, never xsimd batches of `Arch`.)
template <class Arch>
inline constexpr bool use_avx2 =
#ifdef MOELA_X86_AVX2_KERNELS
    std::is_base_of_v<xsimd::avx2, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>;
#else
    false;
#endif

/// Decode table of an FP8 format (256 floats, exact).
template <class Code>
struct fp8_table {
  std::array<float, 256> v{};
  constexpr fp8_table() {
    for (int i = 0; i < 256; ++i) v[static_cast<std::size_t>(i)] = Code::from_bits(static_cast<std::uint8_t>(i)).to_float();
  }
};
template <class Code>
inline constexpr fp8_table<Code> fp8_decode_table{};

/// The bf16 bit patterns of an FP8 format's 128 non-negative codes, as the high and the low
/// bytes (the tables of a two-source byte permute, `vpermt2b`, which reads 7 bits of each index
/// byte: a code's sign is ORed in after the lookup). Exact: an FP8 value has at most 4
/// significant bits and its exponent, subnormal codes included, lies in bf16's normal range;
/// NaN and infinity codes give bf16 NaN and infinity.
template <class Code>
struct fp8_bf16_bytes {
  alignas(64) std::array<std::uint8_t, 128> hi{};
  alignas(64) std::array<std::uint8_t, 128> lo{};
  constexpr fp8_bf16_bytes() {
    for (int i = 0; i < 128; ++i) {
      const auto b = static_cast<std::uint16_t>(
          std::bit_cast<std::uint32_t>(Code::from_bits(static_cast<std::uint8_t>(i)).to_float()) >> 16);
      hi[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(b >> 8);
      lo[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(b & 0xFF);
    }
  }
};
template <class Code>
inline constexpr fp8_bf16_bytes<Code> fp8_bf16_table{};

#if defined(MOELA_X86_AVX2_KERNELS) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#define MOELA_FP8_VBMI 1
/// 64 FP8 codes `v` in natural order -> the bytes of their bf16 patterns (fp8_bf16_table), exact
/// for every code: `hi` the high bytes (sign ORed in), `lo` the low bytes. Interleaving them
/// (unpacklo/hi_epi8(lo, hi)) gives the 16-bit patterns. 3 ops.
template <class Code>
MOELA_ALWAYS_INLINE void fp8x64_bf16_bytes(__m512i v, __m512i& hi, __m512i& lo) {
  const auto& tab = fp8_bf16_table<Code>;
  hi = _mm512_ternarylogic_epi32(
      _mm512_permutex2var_epi8(_mm512_load_si512(tab.hi.data()), v, _mm512_load_si512(tab.hi.data() + 64)), v,
      _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);  // a | (b & c)
  lo = _mm512_permutex2var_epi8(_mm512_load_si512(tab.lo.data()), v, _mm512_load_si512(tab.lo.data() + 64));
}

/// FP8 codes -> bf16 patterns by two `vpermt2b` lookups in fp8_bf16_table, exact for every code.
/// `t` holds each code twice, in the byte where its pattern's high byte goes (`hi_bytes`) and in
/// the byte below it (`lo_bytes`); every other byte is 0 and stays 0. Per byte pair: the high
/// byte looked up (other bytes pass through), the code's sign ORed into it, then the low byte
/// looked up from the code still in place below. 3 ops (the sign constant is loop-invariant).
template <class Code>
MOELA_ALWAYS_INLINE __m512i fp8_bf16_lookup(__m512i t, __mmask64 hi_bytes, __mmask64 lo_bytes) {
  const auto& tab = fp8_bf16_table<Code>;
  __m512i h = _mm512_mask2_permutex2var_epi8(_mm512_load_si512(tab.hi.data()), t, hi_bytes,
                                             _mm512_load_si512(tab.hi.data() + 64));
  h = _mm512_ternarylogic_epi32(h, t, _mm512_maskz_set1_epi8(hi_bytes, static_cast<char>(0x80)), 0xF8);  // a | (b & c)
  return _mm512_mask2_permutex2var_epi8(_mm512_load_si512(tab.lo.data()), h, lo_bytes,
                                        _mm512_load_si512(tab.lo.data() + 64));
}
#endif

#ifdef MOELA_X86_AVX2_KERNELS
/// E4M3 codes (8, one per 16-bit lane after sign extension) -> the fp16 bit patterns of
/// value * 2^-8: sign-extending the byte and shifting it left by 7 puts the sign in bit 15,
/// exponent and mantissa in bits 13..7 (fp16 bias 15 = E4M3 bias 7 + 8) and a copy of the sign
/// in bit 14, which the mask clears. Two integer ops; NaN codes (magnitude 0x7F) come out as
/// the finite pattern 0x3F80 | sign (see e4m3_fp16_nan_lanes).
MOELA_ALWAYS_INLINE __m128i e4m3x8_to_fp16_bits(__m128i c8) {
  return _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(c8), 7), _mm_set1_epi16(static_cast<short>(0xBFFF)));
}
/// The same for 16 codes: the low (`Hi = false`) or high 8 bytes of `c16`. Unpacking against
/// zero puts each code in the high byte of its 16-bit lane (code << 8) and an arithmetic shift
/// by one moves it to bits 14..7 with the sign copied into bit 15: one op fewer per 8 codes
/// than widening each half separately.
template <bool Hi>
MOELA_ALWAYS_INLINE __m128i e4m3x16_to_fp16_bits(__m128i c16) {
  const __m128i w = Hi ? _mm_unpackhi_epi8(_mm_setzero_si128(), c16) : _mm_unpacklo_epi8(_mm_setzero_si128(), c16);
  return _mm_and_si128(_mm_srai_epi16(w, 1), _mm_set1_epi16(static_cast<short>(0xBFFF)));
}
/// All-ones in the 16-bit lanes of e4m3x8_to_fp16_bits's result that hold a NaN code.
MOELA_ALWAYS_INLINE __m128i e4m3_fp16_nan_lanes(__m128i h) {
  return _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x3F80)), _mm_set1_epi16(0x3F80));
}

/// 8 FP8 codes (low 8 bytes of `c`) -> 8 floats, exact (E4M3: NaN codes give NaN). Uses the
/// F16C converter: an FP8 code shifted into an fp16 bit pattern is the same value scaled by a
/// power of two (E4M3: 2^-8, folded into `mul`; E5M2: exact, fp16 with its low byte cleared).
/// `mul` multiplies the result (the caller's scale, times 256 for E4M3).
template <class Code>
MOELA_ALWAYS_INLINE __m256 fp8x8_to_ps(__m128i c8, __m256 mul) {
  if constexpr (std::is_same_v<Code, fp8_e5m2>) {
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(c8), 8)), mul);
  } else {
    __m128i h = e4m3x8_to_fp16_bits(c8);
    h = _mm_or_si128(h, _mm_and_si128(e4m3_fp16_nan_lanes(h), _mm_set1_epi16(0x7E00)));  // -> fp16 qNaN
    return _mm256_mul_ps(_mm256_cvtph_ps(h), mul);
  }
}
/// 16 FP8 codes -> 16 fp16 bit patterns, the first step of fp8x8_to_ps on 16 lanes (for
/// `_mm512_cvtph_ps`): E5M2 codes are the high byte of an fp16; E4M3 codes become value * 2^-8
/// (e4m3x8_to_fp16_bits) with NaN codes turned into fp16 qNaN. Multiply the floats by
/// fp8_fp16_rescale<Code>.
template <class Code>
MOELA_ALWAYS_INLINE __m256i fp8x16_to_fp16_bits(__m128i c16) {
  if constexpr (std::is_same_v<Code, fp8_e5m2>) {
    return _mm256_slli_epi16(_mm256_cvtepu8_epi16(c16), 8);
  } else {
    const __m256i h =
        _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(c16), 7), _mm256_set1_epi16(static_cast<short>(0xBFFF)));
    const __m256i m = _mm256_set1_epi16(0x3F80);  // NaN lanes: exponent and mantissa all ones
    return _mm256_or_si256(h, _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(h, m), m), _mm256_set1_epi16(0x7E00)));
  }
}
/// The factor an fp8x8_to_ps result needs for unit scale.
template <class Code>
inline constexpr float fp8_fp16_rescale = std::is_same_v<Code, fp8_e5m2> ? 1.0f : 256.0f;

/// True where the vector FP8 decoders take the table route (`MOELA_FP8_VBMI`: exact values),
/// false where they take the fp16 route (E4M3 as value / 256).
inline constexpr bool fp8_table_decode =
#ifdef MOELA_FP8_VBMI
    true;
#else
    false;
#endif
/// The factor from an FP8 code as the vector decoders give it to its value.
template <class Code>
inline constexpr float fp8_vector_rescale = fp8_table_decode ? 1.0f : fp8_fp16_rescale<Code>;

/// NaN lanes replaced by the canonical quiet NaN of the same sign (what the scalar encoders give).
MOELA_ALWAYS_INLINE __m256i canonical_nan(__m256i b) {
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
  const __m256i qn = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(int(0x80000000u))),
                                     _mm256_set1_epi32(0x7FC00000));
  return _mm256_blendv_epi8(b, qn, is_nan);
}

MOELA_ALWAYS_INLINE __m256 bf16x8_to_ps(const void* p) {
  const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

}  // namespace detail

// ---- widening ---------------------------------------------------------------------------------------

/// bf16 -> float, exact.
template <class Arch = xsimd::default_arch>
void to_float(std::span<const bf16> in, std::span<float> out) {
  check(in.size() == out.size(), "to_float(bf16): input has ", in.size(), " elements, output ", out.size());
  std::size_t i = 0;
  const std::size_t n = in.size();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (detail::use_avx2<Arch>)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out.data() + i, detail::bf16x8_to_ps(in.data() + i));
#endif
  for (; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(in[i].bits) << 16);
}

/// fp16 -> float, exact.
template <class Arch = xsimd::default_arch>
void to_float(std::span<const fp16> in, std::span<float> out) {
  check(in.size() == out.size(), "to_float(fp16): input has ", in.size(), " elements, output ", out.size());
  std::size_t i = 0;
  const std::size_t n = in.size();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (detail::use_avx2<Arch>)
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out.data() + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in.data() + i))));
#endif
  for (; i < n; ++i) out[i] = in[i].to_float();
}

/// fp8 (E4M3FN or E5M2) -> float, exact (NaN codes give NaN).
template <class Arch = xsimd::default_arch, class Code>
  requires(std::is_same_v<Code, fp8_e4m3> || std::is_same_v<Code, fp8_e5m2>)
void to_float(std::span<const Code> in, std::span<float> out) {
  check(in.size() == out.size(), "to_float(fp8): input has ", in.size(), " elements, output ", out.size());
  std::size_t i = 0;
  const std::size_t n = in.size();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (detail::use_avx2<Arch>) {
    const __m256 mul = _mm256_set1_ps(detail::fp8_fp16_rescale<Code>);
    for (; i + 8 <= n; i += 8) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in.data() + i));
      _mm256_storeu_ps(out.data() + i, detail::fp8x8_to_ps<Code>(c, mul));
    }
  }
#endif
  const auto& tab = detail::fp8_decode_table<Code>.v;
  for (; i < n; ++i) out[i] = tab[in[i].bits];
}

// ---- narrowing --------------------------------------------------------------------------------------

/// float -> bf16, RNE, IEEE overflow, NaN kept (quiet), exactly as `bf16(float)`.
template <class Arch = xsimd::default_arch>
void from_float(std::span<const float> in, std::span<bf16> out) {
  check(in.size() == out.size(), "from_float(bf16): input has ", in.size(), " elements, output ", out.size());
  std::size_t i = 0;
  const std::size_t n = in.size();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (detail::use_avx2<Arch>) {
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
    for (; i + 8 <= n; i += 8) {
      const __m256i b = detail::canonical_nan(_mm256_castps_si256(_mm256_loadu_ps(in.data() + i)));
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(bias, lsb)), 16);
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.data() + i), _mm256_castsi256_si128(packed));
    }
  }
#endif
  for (; i < n; ++i) out[i] = bf16(in[i]);
}

/// float -> fp16, RNE, IEEE overflow (±inf), NaN kept, exactly as `fp16(float)`.
template <class Arch = xsimd::default_arch>
void from_float(std::span<const float> in, std::span<fp16> out) {
  check(in.size() == out.size(), "from_float(fp16): input has ", in.size(), " elements, output ", out.size());
  std::size_t i = 0;
  const std::size_t n = in.size();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (detail::use_avx2<Arch>)
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.data() + i),
                       _mm256_cvtps_ph(_mm256_castsi256_ps(detail::canonical_nan(
                                           _mm256_castps_si256(_mm256_loadu_ps(in.data() + i)))),
                                       _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) out[i] = fp16(in[i]);
}

/// float -> fp8 (E4M3FN or E5M2), RNE, with the named overflow rule (default saturate).
/// Scalar bit-exact encoder per element (the FP8 encoders are not on the GEMM hot path).
template <class Arch = xsimd::default_arch, class Code>
  requires(std::is_same_v<Code, fp8_e4m3> || std::is_same_v<Code, fp8_e5m2>)
void from_float(std::span<const float> in, std::span<Code> out, overflow ov = overflow::saturate) {
  check(in.size() == out.size(), "from_float(fp8): input has ", in.size(), " elements, output ", out.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = Code::from_float(in[i], ov);
}

}  // namespace moela
