#pragma once
/// \file moela/backend/cpu/x86/avx512_qdot.hpp
/// Dot-product kernels for AVX-512 CPUs with VNNI (`vpdpbusd`) and AVX512-BF16 (`vdpbf16ps`),
/// with portable scalar references of exactly the same numerics (internal, moela::detail).
///
/// | kernel                 | operands                                    | result                         | instruction |
/// |------------------------|---------------------------------------------|--------------------------------|-------------|
/// | `dot_s8`               | int8 activations x int8 weights             | Σ a·b, int32, exact             | vpdpbusd    |
/// | `dot_u4s8<Flip>`       | packed 4-bit weight codes x int8 activations| Σ (nibble ^ (Flip ? 8 : 0))·x, int32, exact | vpdpbusd |
/// | `dot_bf16`             | bf16 x bf16                                 | Σ a·b, fp32 accumulation        | vdpbf16ps   |
/// | `dot_fp8_bf16<Code>`   | FP8 weight codes x bf16 activations         | Σ code·x (unscaled), fp32       | vdpbf16ps   |
///
/// These are the building blocks of the W8A8 / W4A8 integer GEMV (activations quantized per row
/// to int8, see quantize_activations_int8: y = sx · Σ_g sw_g (Σ_{k in g} xq wq), and for 4-bit
/// codes minus z_g Σ_{k in g} xq) and of the BF16-activation GEMV. The `vpdpbusd` operand order
/// is unsigned x signed: int8 x int8 uses (a ^ 0x80) = a + 128 as the unsigned side and removes
/// 128 Σ b; 4-bit codes are naturally unsigned.
///
/// Roofline: per 64 int8 MACs one `vpdpbusd` (int8/int4) and per 32 bf16 MACs one `vdpbf16ps`:
/// 4x / 2x the MACs per instruction of an fp32 FMA, so the weights' decode, not the arithmetic,
/// bounds these kernels at GEMV sizes.
///
/// The intrinsic versions exist only when the translation unit is compiled with
/// `__AVX512VNNI__` / `__AVX512BF16__` (and not MOELA_FORCE_GENERIC); the `_ref` versions always.
/// Each function is a template on the xsimd `Arch` so translation units with different ISA flags
/// never share a symbol.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moela/core/config.hpp"
#include "moela/core/minifloat.hpp"

#if (defined(__AVX512VNNI__) || defined(__AVX512BF16__)) && defined(__AVX512BW__) && !defined(MOELA_FORCE_GENERIC)
#include <immintrin.h>
#endif

namespace moela::detail {

// ---- portable references --------------------------------------------------------------------------

/// Σ a[k] b[k], k < n, exact in int32 (n <= 2^17 keeps |sum| < 2^31).
inline std::int32_t dot_s8_ref(const std::int8_t* a, const std::int8_t* b, index_t n) {
  std::int32_t s = 0;
  for (index_t k = 0; k < n; ++k) s += std::int32_t(a[k]) * std::int32_t(b[k]);
  return s;
}

/// Σ u_k x[k] with u_k = nibble k of `packed` (element 2i = low nibble of byte i) xor (Flip ? 8 : 0).
/// `n` even.
template <bool Flip>
std::int32_t dot_u4s8_ref(const std::uint8_t* packed, const std::int8_t* x, index_t n) {
  std::int32_t s = 0;
  for (index_t k = 0; k < n; ++k) {
    const int u = ((packed[k / 2] >> (4 * (k & 1))) & 0xF) ^ (Flip ? 8 : 0);
    s += u * std::int32_t(x[k]);
  }
  return s;
}

/// Σ a[k] b[k] in fp32 (the products of two bf16 are exact in fp32).
inline float dot_bf16_ref(const bf16* a, const bf16* b, index_t n) {
  float s = 0;
  for (index_t k = 0; k < n; ++k) s += a[k].to_float() * b[k].to_float();
  return s;
}

/// Σ float(code[k]) x[k] in fp32 (FP8 x bf16 products are exact in fp32).
template <class Code>
float dot_fp8_bf16_ref(const Code* w, const bf16* x, index_t n) {
  float s = 0;
  for (index_t k = 0; k < n; ++k) s += w[k].to_float() * x[k].to_float();
  return s;
}

// ---- AVX-512 VNNI ---------------------------------------------------------------------------------

#if (defined(__AVX512VNNI__) || defined(__AVX512BF16__)) && defined(__AVX512BW__) && !defined(MOELA_FORCE_GENERIC)
// Horizontal sums (GCC 12's _mm512_reduce_add_* trip -Werror=uninitialized): the int32 one
// through memory (exact in any order).
template <class Arch>
std::int32_t hsum_epi32_512(__m512i v) {
  alignas(64) std::int32_t t[16];
  _mm512_store_si512(t, v);
  std::int32_t s = 0;
  for (int i = 0; i < 16; ++i) s += t[i];
  return s;
}
/// The float sum is a tree (halves added, 16 -> 8 -> 4 -> 2 -> 1): four dependent adds where a
/// serial loop has sixteen, paid once per output of a GEMV. Two-source permutes only: GCC 12's
/// one-source shuffles and 512 -> 256-bit casts trip the same warning.
template <class Arch>
float hsum_ps_512(__m512 v) {
  const __m512i i8 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i i4 = _mm512_setr_epi32(4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
  const __m512i i2 = _mm512_setr_epi32(2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  const __m512i i1 = _mm512_set1_epi32(1);
  v = _mm512_add_ps(v, _mm512_permutex2var_ps(v, i8, v));  // lane j + lane j + 8
  v = _mm512_add_ps(v, _mm512_permutex2var_ps(v, i4, v));
  v = _mm512_add_ps(v, _mm512_permutex2var_ps(v, i2, v));
  v = _mm512_add_ps(v, _mm512_permutex2var_ps(v, i1, v));
  return _mm512_cvtss_f32(v);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(MOELA_FORCE_GENERIC)
#define MOELA_AVX512_VNNI_KERNELS 1

/// dot_s8_ref with vpdpbusd, 64 MACs per instruction. Exact (same int32 result).
template <class Arch>
std::int32_t dot_s8(const std::int8_t* a, const std::int8_t* b, index_t n) {
  __m512i acc = _mm512_setzero_si512(), accb = _mm512_setzero_si512();
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80)), ones = _mm512_set1_epi8(1);
  index_t k = 0;
  for (; k + 64 <= n; k += 64) {
    const __m512i av = _mm512_xor_si512(_mm512_loadu_si512(a + k), bias);  // a + 128, unsigned
    const __m512i bv = _mm512_loadu_si512(b + k);
    acc = _mm512_dpbusd_epi32(acc, av, bv);
    accb = _mm512_dpbusd_epi32(accb, ones, bv);  // Σ b
  }
  std::int32_t s = hsum_epi32_512<Arch>(acc) - 128 * hsum_epi32_512<Arch>(accb);
  return s + dot_s8_ref(a + k, b + k, n - k);
}

/// dot_u4s8_ref with vpdpbusd: 64 codes (32 bytes) per step, nibbles expanded to bytes in order.
template <class Arch, bool Flip>
std::int32_t dot_u4s8(const std::uint8_t* packed, const std::int8_t* x, index_t n) {
  __m512i acc = _mm512_setzero_si512();
  const __m512i lo_mask = _mm512_set1_epi16(0x000F), hi_mask = _mm512_set1_epi16(0x0F00);
  const __m512i flip = _mm512_set1_epi8(Flip ? 8 : 0);
  index_t k = 0;
  for (; k + 64 <= n; k += 64) {
    // byte i -> 16-bit lane i = [low nibble | high nibble << 8]: codes 2i, 2i+1 in order.
    const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + k / 2)));
    __m512i u = _mm512_or_si512(_mm512_and_si512(w16, lo_mask), _mm512_and_si512(_mm512_slli_epi16(w16, 4), hi_mask));
    u = _mm512_xor_si512(u, flip);
    acc = _mm512_dpbusd_epi32(acc, u, _mm512_loadu_si512(x + k));
  }
  return hsum_epi32_512<Arch>(acc) + dot_u4s8_ref<Flip>(packed + k / 2, x + k, n - k);
}
#endif

// ---- AVX512-BF16 ----------------------------------------------------------------------------------

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && !defined(MOELA_FORCE_GENERIC)
#define MOELA_AVX512_BF16_KERNELS 1

/// dot_bf16_ref with vdpbf16ps (32 MACs per instruction). Note: vdpbf16ps treats bf16 subnormal
/// inputs as zero and flushes subnormal results (DAZ/FTZ), which the reference does not.
template <class Arch>
float dot_bf16(const bf16* a, const bf16* b, index_t n) {
  __m512 acc = _mm512_setzero_ps();
  index_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m512i av = _mm512_loadu_si512(a + k), bv = _mm512_loadu_si512(b + k);
    acc = _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(bv));
  }
  return hsum_ps_512<Arch>(acc) + dot_bf16_ref(a + k, b + k, n - k);
}

/// dot_fp8_bf16_ref with vdpbf16ps: 32 FP8 codes -> fp16 bit pattern -> fp32 (vcvtph2ps) ->
/// bf16 (vcvtne2ps2bf16, exact: an FP8 value has <= 4 significant bits) -> dot with x.
/// E4M3 codes are decoded as value / 256 (bf16-normal even for FP8 subnormals, so the DAZ rule
/// of vdpbf16ps never triggers) and the sum is multiplied by 256.
template <class Arch, class Code>
float dot_fp8_bf16(const Code* w, const bf16* x, index_t n) {
  constexpr bool e4m3 = std::is_same_v<Code, fp8_e4m3>;
  auto decode16 = [](const Code* p) {
    const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    __m256i h;
    if constexpr (e4m3) {
      const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi16(0x7F));
      h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8), _mm256_slli_epi16(mag, 7));
      h = _mm256_or_si256(h, _mm256_and_si256(_mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F)), _mm256_set1_epi16(0x7E00)));
    } else {
      h = _mm256_slli_epi16(c, 8);
    }
    return _mm512_maskz_cvtph_ps(static_cast<__mmask16>(0xFFFF), h);  // (maskz: GCC 12 -Wuninitialized)
  };
  __m512 acc = _mm512_setzero_ps();
  index_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m512bh wv = _mm512_cvtne2ps_pbh(decode16(w + k + 16), decode16(w + k));  // (upper, lower)
    const __m512i xv = _mm512_loadu_si512(x + k);
    acc = _mm512_dpbf16_ps(acc, wv, reinterpret_cast<const __m512bh&>(xv));
  }
  const float scale = e4m3 ? 256.0f : 1.0f;
  return hsum_ps_512<Arch>(acc) * scale + dot_fp8_bf16_ref(w + k, x + k, n - k);
}
#endif

}  // namespace moela::detail
