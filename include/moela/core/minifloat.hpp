#pragma once
/// \file moela/core/minifloat.hpp
/// Bit-exact scalar conversions between `float` and the narrow floating-point formats
/// (bf16, fp16, FP8 E4M3FN, FP8 E5M2). Everything here is constexpr and branch-light; the
/// vectorised bulk conversions used by kernels live in `moela/backend/cpu/convert.hpp` and
/// are tested against these.
///
/// Rounding is always round-to-nearest, ties-to-even (RNE), subnormals included.
/// Two overflow behaviours are offered, and every caller names the one it wants:
///  - `overflow::saturate`: a finite value that rounds above the largest finite value becomes
///    ±max (what DeepSeek's quantization kernels do: `cvt.rn.satfinite`, Triton, TileLang);
///    ±inf saturates too; NaN stays NaN.
///  - `overflow::ieee`: the IEEE rule. A value that rounds above max becomes ±inf, or NaN for
///    formats without infinities (E4M3FN: |x| > 464 gives NaN, while 464 itself, a tie,
///    rounds to the even 448: exactly PyTorch's `.to(torch.float8_e4m3fn)`); NaN stays NaN.

#include <bit>
#include <cstdint>

#include "moela/core/config.hpp"

namespace moela {

/// Overflow behaviour of a narrowing conversion; see the file comment.
enum class overflow { saturate, ieee };

namespace detail {

/// Describes a binary floating-point format of 1 sign bit, `E` exponent bits and `M`
/// mantissa bits. `Finite` formats (the "fn" FP8 variants) have no infinities and use the
/// all-ones code (both exponent and mantissa) as their only NaN.
template <int E, int M, bool Finite, class Storage>
struct minifloat_format {
  using storage = Storage;
  static constexpr int exp_bits = E;
  static constexpr int man_bits = M;
  static constexpr int bias = (1 << (E - 1)) - 1;
  static constexpr int emin = 1 - bias;  // exponent of the smallest normal
  static constexpr std::uint32_t sign_bit = 1u << (E + M);
  static constexpr std::uint32_t exp_mask = ((1u << E) - 1u) << M;
  static constexpr std::uint32_t man_mask = (1u << M) - 1u;
  // Largest finite magnitude code: all-ones exponent is reserved unless the format is Finite,
  // where only the all-ones mantissa under it is (the NaN).
  static constexpr std::uint32_t max_finite = Finite ? (exp_mask | man_mask) - 1u : exp_mask - 1u;
  static constexpr std::uint32_t inf_code = exp_mask;                         // !Finite only
  static constexpr std::uint32_t nan_code = Finite ? (exp_mask | man_mask)    // 0x7F for E4M3FN
                                                   : (exp_mask | (1u << (M - 1)));  // quiet NaN
  static constexpr bool finite_only = Finite;
};

MOELA_HOST_DEVICE constexpr float pow2f(int e) {
  // 2^e for e in [-149, 127], built from bits so it stays constexpr.
  if (e >= -126) return std::bit_cast<float>(static_cast<std::uint32_t>(e + 127) << 23);
  return std::bit_cast<float>(1u << (e + 149));
}

/// float -> format code, RNE, with the chosen overflow rule.
template <class F>
MOELA_HOST_DEVICE constexpr typename F::storage encode(float f, overflow ov) {
  const std::uint32_t b = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (b >> 31) ? F::sign_bit : 0u;
  const std::uint32_t a = b & 0x7fffffffu;
  using S = typename F::storage;
  if (a > 0x7f800000u) return static_cast<S>(sign | F::nan_code);  // NaN (sign kept)
  if (a == 0x7f800000u) {                                          // ±inf
    if (ov == overflow::saturate) return static_cast<S>(sign | F::max_finite);
    return static_cast<S>(sign | (F::finite_only ? F::nan_code : F::inf_code));
  }
  const int fe = static_cast<int>(a >> 23);
  // Full significand and unbiased exponent of the float (subnormal floats: fe == 0).
  const std::uint32_t mant = fe ? ((a & 0x7fffffu) | 0x800000u) : (a & 0x7fffffu);
  const int ex = fe ? fe - 127 : -126;
  int shift = 23 - F::man_bits;
  std::uint32_t te = 0;
  if (ex >= F::emin) {
    te = static_cast<std::uint32_t>(ex + F::bias);
  } else {
    shift += F::emin - ex;
  }
  std::uint32_t q;
  if (shift >= 32) {
    q = 0;  // far below half the smallest subnormal
  } else if (shift == 0) {
    q = mant;
  } else {
    q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
  }
  // Normal: q carries the implicit bit; a carry out of the mantissa bumps the exponent.
  const std::uint32_t code = te ? (te << F::man_bits) + q - (1u << F::man_bits) : q;
  if (code > F::max_finite) {
    if (ov == overflow::saturate) return static_cast<S>(sign | F::max_finite);
    return static_cast<S>(sign | (F::finite_only ? F::nan_code : F::inf_code));
  }
  return static_cast<S>(sign | code);
}

/// format code -> float (exact: every code of these formats is a float).
template <class F>
MOELA_HOST_DEVICE constexpr float decode(typename F::storage raw) {
  const std::uint32_t c = raw;
  const std::uint32_t sign = (c & F::sign_bit) ? 0x80000000u : 0u;
  const std::uint32_t e = (c & F::exp_mask) >> F::man_bits;
  const std::uint32_t m = c & F::man_mask;
  if constexpr (F::finite_only) {
    if ((c & (F::exp_mask | F::man_mask)) == (F::exp_mask | F::man_mask))
      return std::bit_cast<float>(sign | 0x7fc00000u);
  } else {
    if (e == (F::exp_mask >> F::man_bits))
      return std::bit_cast<float>(sign | (m ? 0x7fc00000u : 0x7f800000u));
  }
  if (e == 0) {
    const float v = static_cast<float>(m) * pow2f(F::emin - F::man_bits);
    return sign ? -v : v;
  }
  const std::uint32_t fe = e - static_cast<std::uint32_t>(F::bias) + 127u;
  return std::bit_cast<float>(sign | (fe << 23) | (m << (23 - F::man_bits)));
}

}  // namespace detail

// The formats. Each is a 1-, 2-byte trivially copyable value type holding its raw bits.
// CRTP keeps the shared surface (bits, from_bits, conversions, comparisons) in one place.
template <class Derived, class Format>
struct minifloat_base {
  using format = Format;
  using storage = typename Format::storage;
  storage bits{};

  /// The value with the given raw bit pattern.
  MOELA_HOST_DEVICE static constexpr Derived from_bits(storage raw) {
    Derived d;
    d.bits = raw;
    return d;
  }
  /// RNE conversion; finite overflow and ±inf become ±max; NaN stays NaN.
  MOELA_HOST_DEVICE static constexpr Derived saturate(float f) {
    return from_bits(detail::encode<Format>(f, overflow::saturate));
  }
  /// RNE conversion with IEEE overflow (±inf, or NaN where the format has no infinity).
  MOELA_HOST_DEVICE static constexpr Derived convert(float f) {
    return from_bits(detail::encode<Format>(f, overflow::ieee));
  }
  /// RNE conversion with the named overflow rule.
  MOELA_HOST_DEVICE static constexpr Derived from_float(float f, overflow ov) {
    return from_bits(detail::encode<Format>(f, ov));
  }
  /// Exact widening to float.
  MOELA_HOST_DEVICE constexpr float to_float() const { return detail::decode<Format>(bits); }
  MOELA_HOST_DEVICE constexpr operator float() const { return to_float(); }
  /// Largest finite value.
  MOELA_HOST_DEVICE static constexpr Derived max() { return from_bits(static_cast<storage>(Format::max_finite)); }
  MOELA_HOST_DEVICE static constexpr Derived lowest() {
    return from_bits(static_cast<storage>(Format::max_finite | Format::sign_bit));
  }
  MOELA_HOST_DEVICE constexpr bool is_nan() const { return to_float() != to_float(); }
  /// Bitwise equality (distinguishes +0 and -0; NaN codes equal themselves).
  MOELA_HOST_DEVICE friend constexpr bool same_bits(Derived a, Derived b) { return a.bits == b.bits; }
};

/// bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the top half of a float).
/// Constructing from float rounds RNE with IEEE overflow (bf16 shares float's range, so only
/// values that round past 0x7F7F become inf).
struct bf16 : minifloat_base<bf16, detail::minifloat_format<8, 7, false, std::uint16_t>> {
  constexpr bf16() = default;
  MOELA_HOST_DEVICE explicit constexpr bf16(float f) { bits = detail::encode<format>(f, overflow::ieee); }
};

/// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits; max 65504.
struct fp16 : minifloat_base<fp16, detail::minifloat_format<5, 10, false, std::uint16_t>> {
  constexpr fp16() = default;
  MOELA_HOST_DEVICE explicit constexpr fp16(float f) { bits = detail::encode<format>(f, overflow::ieee); }
};

/// FP8 E4M3FN ("fn": finite): 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448, no
/// infinities, NaN = 0x7F/0xFF, smallest subnormal 2^-9. The format of DeepSeek-V3 weights,
/// activations and FP8 KV caches. No implicit constructor from float: say `saturate` (what
/// quantizers use) or `convert` (IEEE-style, |x| > 464 becomes NaN).
struct fp8_e4m3 : minifloat_base<fp8_e4m3, detail::minifloat_format<4, 3, true, std::uint8_t>> {};

/// FP8 E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; max 57344, IEEE infinities and NaNs.
struct fp8_e5m2 : minifloat_base<fp8_e5m2, detail::minifloat_format<5, 2, false, std::uint8_t>> {};

static_assert(sizeof(bf16) == 2 && sizeof(fp16) == 2 && sizeof(fp8_e4m3) == 1 && sizeof(fp8_e5m2) == 1);
static_assert(float(fp8_e4m3::max()) == 448.0f && float(fp8_e5m2::max()) == 57344.0f);
static_assert(float(fp16::max()) == 65504.0f);
static_assert(fp8_e4m3::saturate(1000.0f).bits == 0x7E && fp8_e4m3::convert(1000.0f).bits == 0x7F);
static_assert(bf16(1.0f).bits == 0x3F80);

/// Two 4-bit integers packed in one byte: element 0 in the low nibble, element 1 in the high
/// nibble (the order of GPTQ/AWQ-style packings along a row). `Signed` codes are two's
/// complement in [-8, 7]; unsigned codes are in [0, 15].
template <bool Signed>
struct int4x2_t {
  std::uint8_t bits{};
  using value_type = int;
  static constexpr int min_value = Signed ? -8 : 0;
  static constexpr int max_value = Signed ? 7 : 15;

  /// Packs two values; each must already lie in [min_value, max_value] (masked otherwise).
  MOELA_HOST_DEVICE static constexpr int4x2_t pack(int lo, int hi) {
    int4x2_t p;
    p.bits = static_cast<std::uint8_t>((static_cast<unsigned>(lo) & 0xFu) |
                                       ((static_cast<unsigned>(hi) & 0xFu) << 4));
    return p;
  }
  MOELA_HOST_DEVICE constexpr int get(int i) const {
    const int nib = (bits >> (4 * i)) & 0xF;
    if constexpr (Signed) return nib >= 8 ? nib - 16 : nib;
    else return nib;
  }
  MOELA_HOST_DEVICE constexpr int lo() const { return get(0); }
  MOELA_HOST_DEVICE constexpr int hi() const { return get(1); }
};
using int4x2 = int4x2_t<true>;
using uint4x2 = int4x2_t<false>;
static_assert(sizeof(int4x2) == 1 && int4x2::pack(-8, 7).lo() == -8 && int4x2::pack(-8, 7).hi() == 7);

}  // namespace moela
