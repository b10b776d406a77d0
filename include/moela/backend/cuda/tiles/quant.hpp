#pragma once
/// \file moela/backend/cuda/tiles/quant.hpp
/// Per-element and per-group arithmetic of the CUDA quantized kernels, as `MOELA_HOST_DEVICE`
/// functions: the same code runs inside the kernels (nvcc) and in the host unit tests (g++),
/// which check it against float64 references on every CI run.
///
/// Covered: FP8 E4M3FN decode/encode (bit-exact, via core/minifloat.hpp), the DeepSeek
/// activation-group scale (`ACT_V3` contract of the spec, §8.5), the UE8M0 power-of-two
/// rounding, the FlashMLA FP8 KV-record scale (§8.8), block-scale promotion of a 128-long FP8
/// partial sum (§8.6), and dequantization of INT8 / INT4 group-quantized weights.
///
/// Weight layouts the CUDA matmul reads (all row-major, `W` is `[N = out, K = in]`):
///  - FP8 block: codes `e4m3 [N, K]`, scales `float [ceil(N/128), ceil(K/128)]`, dequant
///    multiplier (`weight_scale_inv`), partial edge blocks allowed.
///  - INT8 group G: codes `int8 [N, K]`, scales `float [N, K/G]`, `w = q * s` (symmetric).
///  - INT4 group G: codes `int4x2 [N, K/2]` (element 2j in the low nibble, two's complement
///    in [-8, 7]), scales `float [N, K/G]`, `w = q * s` (symmetric).

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "moela/core/config.hpp"
#include "moela/core/minifloat.hpp"

namespace moela::gpu::tiles {

/// Elements per FP8 activation group and per weight block edge (DeepSeek's recipe).
inline constexpr int fp8_block = 128;
/// Largest finite E4M3FN value.
inline constexpr float e4m3_max = 448.0f;
/// Lower clamp of a group's absolute maximum (avoids 0/0 on all-zero groups).
inline constexpr float amax_floor = 1e-4f;

/// Exact value of an E4M3FN code.
MOELA_HOST_DEVICE constexpr float decode_e4m3(std::uint8_t code) {
  return ::moela::detail::decode<fp8_e4m3::format>(code);
}

/// float -> E4M3FN code, round-to-nearest-even, saturating to ±448 (NaN stays NaN).
MOELA_HOST_DEVICE constexpr std::uint8_t encode_e4m3(float x) {
  return ::moela::detail::encode<fp8_e4m3::format>(x, overflow::saturate);
}

/// Exact value of a bf16 code.
MOELA_HOST_DEVICE constexpr float decode_bf16(std::uint16_t code) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(code) << 16);
}

/// float -> bf16 code, RNE (NaN preserved).
MOELA_HOST_DEVICE constexpr std::uint16_t encode_bf16(float x) {
  return ::moela::detail::encode<moela::bf16::format>(x, overflow::ieee);
}

/// `ACT_V3` activation-group scale: `max(amax, 1e-4) / 448` (an fp32 division).
MOELA_HOST_DEVICE constexpr float act_scale(float amax) {
  return (amax > amax_floor ? amax : amax_floor) / e4m3_max;
}

/// One quantized activation: `e4m3(x / s)` (fp32 division, RNE, saturating).
MOELA_HOST_DEVICE constexpr std::uint8_t act_quantize(float x, float scale) { return encode_e4m3(x / scale); }

/// Rounds a positive finite scale up to a power of two (`2^ceil(log2 s)`), exactly from the
/// bits: the exponent goes up by one when any mantissa bit is set (UE8M0 scales, §8.5).
MOELA_HOST_DEVICE constexpr float round_up_pow2(float s) {
  const std::uint32_t b = std::bit_cast<std::uint32_t>(s);
  const std::uint32_t mant = b & 0x7fffffu;
  std::uint32_t exp = (b >> 23) & 0xffu;
  if (exp == 0) {  // subnormal: the next power of two above it (at most the smallest normal)
    if (mant == 0) return s;
    std::uint32_t p = 1;
    while (p < mant) p <<= 1;
    return std::bit_cast<float>(p == 0x800000u ? (1u << 23) : p);
  }
  if (mant != 0) ++exp;
  return std::bit_cast<float>(exp << 23);
}

/// Scale of one 128-wide tile of the FlashMLA FP8 KV record (§8.8):
/// `2^ceil(log2(max(amax / 448, 1e-4)))`.
MOELA_HOST_DEVICE constexpr float kv_fp8_scale(float amax) {
  const float s = amax / e4m3_max;
  return round_up_pow2(s > amax_floor ? s : amax_floor);
}

/// Promotion of one 128-long FP8 partial sum into the FP32 accumulator, in DeepSeek's
/// REF-V3 order: `acc + (partial * a_s) * b_s`.
MOELA_HOST_DEVICE constexpr float promote(float acc, float partial, float a_scale, float b_scale) {
  return acc + (partial * a_scale) * b_scale;
}

/// Dequantized INT8 group weight.
MOELA_HOST_DEVICE constexpr float dequant_int8(std::int8_t q, float scale) { return static_cast<float>(q) * scale; }

/// Dequantized INT4 group weight: nibble `which` (0 = low = even element) of a packed byte.
MOELA_HOST_DEVICE constexpr float dequant_int4(std::uint8_t packed, int which, float scale) {
  const int nib = (packed >> (4 * which)) & 0xF;
  return static_cast<float>(nib >= 8 ? nib - 16 : nib) * scale;
}

/// Number of 128-blocks covering `n` elements (partial last block allowed).
MOELA_HOST_DEVICE constexpr int blocks_of(long n, int block = fp8_block) {
  return static_cast<int>((n + block - 1) / block);
}

}  // namespace moela::gpu::tiles
