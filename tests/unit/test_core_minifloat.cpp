// Exhaustive tests of the scalar narrow-float conversions in moela/core/minifloat.hpp.
//
// The reference below is written from the format definitions only, in double arithmetic:
// decoding is `(-1)^s * (1 + m / 2^M) * 2^(e - bias)` (or the subnormal form) via std::ldexp,
// and encoding is "the nearest value of the sorted table of every finite value, ties to the
// even code", found by binary search. It shares no code with the library. Every comparison is
// bit-exact; the loops count mismatches and print the first few, so a single wrong code fails.
#include <doctest/doctest.h>

#include <moela/core/minifloat.hpp>
#include <moela/io/safetensors.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

/// A format described by its parameters only (no library types).
struct fmt_desc {
  const char* name;
  int e_bits, m_bits;
  bool finite_only;  // E4M3FN: no infinities, only S.1111.111 is NaN
};
constexpr fmt_desc e4m3_desc{"fp8_e4m3", 4, 3, true};
constexpr fmt_desc e5m2_desc{"fp8_e5m2", 5, 2, false};
constexpr fmt_desc fp16_desc{"fp16", 5, 10, false};
constexpr fmt_desc bf16_desc{"bf16", 8, 7, false};

int total_bits(const fmt_desc& f) { return 1 + f.e_bits + f.m_bits; }
int bias(const fmt_desc& f) { return (1 << (f.e_bits - 1)) - 1; }

enum class ref_kind { finite, inf, nan };
struct ref_value {
  ref_kind kind;
  double value;  // signed value when finite; the sign (+-1) for inf/nan
};

/// Reference decoder: the format definition, evaluated in double.
ref_value ref_decode(const fmt_desc& f, std::uint32_t code) {
  const std::uint32_t s = (code >> (f.e_bits + f.m_bits)) & 1u;
  const std::uint32_t e = (code >> f.m_bits) & ((1u << f.e_bits) - 1u);
  const std::uint32_t m = code & ((1u << f.m_bits) - 1u);
  const double sign = s ? -1.0 : 1.0;
  const std::uint32_t e_max = (1u << f.e_bits) - 1u, m_max = (1u << f.m_bits) - 1u;
  if (f.finite_only) {
    if (e == e_max && m == m_max) return {ref_kind::nan, sign};
  } else if (e == e_max) {
    return {m ? ref_kind::nan : ref_kind::inf, sign};
  }
  double mag;
  if (e == 0)
    mag = std::ldexp(static_cast<double>(m), 1 - bias(f) - f.m_bits);
  else
    mag = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -f.m_bits), static_cast<int>(e) - bias(f));
  return {ref_kind::finite, sign * mag};
}

/// Every non-negative finite value of a format, ascending, with its code.
struct value_table {
  fmt_desc f;
  std::vector<double> values;
  std::vector<std::uint32_t> codes;
  double max_value() const { return values.back(); }
  std::uint32_t max_code() const { return codes.back(); }
  /// The value one step above max as if the exponent range went on (the overflow threshold
  /// sits halfway to it); its code is max_code + 1.
  double next_after_max() const { return values.back() + (values.back() - values[values.size() - 2]); }
};

value_table make_table(const fmt_desc& f) {
  value_table t{f, {}, {}};
  const std::uint32_t n = 1u << (total_bits(f) - 1);  // the positive half of the codes
  for (std::uint32_t c = 0; c < n; ++c) {
    const ref_value r = ref_decode(f, c);
    if (r.kind != ref_kind::finite) continue;
    t.values.push_back(r.value);
    t.codes.push_back(c);
  }
  return t;
}

enum class ov_rule { saturate, ieee };

/// Reference encoder: the nearest table value (ties to the even code), with the overflow rule.
/// Returns the code; NaN results are returned as `nan_result` (any NaN code is accepted).
constexpr std::uint32_t nan_result = 0xFFFFFFFFu;

std::uint32_t ref_encode(const value_table& t, double x, ov_rule ov) {
  const fmt_desc& f = t.f;
  const std::uint32_t sign = std::signbit(x) ? (1u << (f.e_bits + f.m_bits)) : 0u;
  const std::uint32_t inf_code = ((1u << f.e_bits) - 1u) << f.m_bits;
  if (std::isnan(x)) return nan_result;
  const double a = std::fabs(x);
  auto overflowed = [&]() -> std::uint32_t {
    if (ov == ov_rule::saturate) return sign | t.max_code();
    return f.finite_only ? nan_result : (sign | inf_code);
  };
  if (std::isinf(a)) return overflowed();
  // Candidates: the table plus the virtual value above max.
  const auto it = std::lower_bound(t.values.begin(), t.values.end(), a);
  std::uint32_t lo_code, hi_code;
  double lo, hi;
  if (it == t.values.end()) {
    lo = t.max_value();
    lo_code = t.max_code();
    hi = t.next_after_max();
    hi_code = t.max_code() + 1;
  } else if (*it == a) {
    return sign | t.codes[static_cast<std::size_t>(it - t.values.begin())];
  } else {
    const auto i = static_cast<std::size_t>(it - t.values.begin());
    hi = t.values[i];
    hi_code = t.codes[i];
    lo = t.values[i - 1];  // i > 0 because values[0] == 0 <= a
    lo_code = t.codes[i - 1];
  }
  std::uint32_t code;
  if (a - lo < hi - a)
    code = lo_code;
  else if (a - lo > hi - a)
    code = hi_code;
  else
    code = (lo_code & 1u) ? hi_code : lo_code;
  if (code > t.max_code()) return overflowed();
  return sign | code;
}

/// Builds one message string (doctest's MESSAGE takes a single expression).
template <class... A>
std::string msg(const A&... a) {
  std::ostringstream os;
  os.precision(9);
  (os << ... << a);
  return os.str();
}

std::string hex(std::uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%X", v);
  return b;
}

/// The library under test, bound to a format.
template <class MF>
struct lib {
  static std::uint32_t encode(float x, ov_rule ov) {
    return ov == ov_rule::saturate ? MF::saturate(x).bits : MF::convert(x).bits;
  }
  static float decode(std::uint32_t code) {
    return MF::from_bits(static_cast<typename MF::storage>(code)).to_float();
  }
};

template <class MF>
int count_decode_mismatches(const fmt_desc& f) {
  int bad = 0;
  const std::uint32_t n = 1u << total_bits(f);
  for (std::uint32_t c = 0; c < n; ++c) {
    const ref_value r = ref_decode(f, c);
    const float got = lib<MF>::decode(c);
    bool ok;
    switch (r.kind) {
      case ref_kind::nan: ok = std::isnan(got); break;
      case ref_kind::inf: ok = std::isinf(got) && std::signbit(got) == (r.value < 0); break;
      default:
        // Every code is exactly a float: compare bits (this also checks the sign of zero).
        ok = std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(static_cast<float>(r.value)) &&
             static_cast<double>(static_cast<float>(r.value)) == r.value;
    }
    if (!ok && ++bad <= 5)
      MESSAGE(msg(f.name, " decode(", hex(c), ") = ", got, ", reference ", r.value,
              r.kind == ref_kind::nan ? " (NaN)" : r.kind == ref_kind::inf ? " (inf)" : ""));
  }
  return bad;
}

/// Compares library and reference encoders on one input, both overflow rules; returns the
/// number of mismatches (0..2) and reports the first few through `reported`.
template <class MF>
int compare_encode(const value_table& t, float x, int& reported) {
  int bad = 0;
  for (ov_rule ov : {ov_rule::saturate, ov_rule::ieee}) {
    const std::uint32_t want = ref_encode(t, static_cast<double>(x), ov);
    const std::uint32_t got = lib<MF>::encode(x, ov);
    const bool ok = want == nan_result ? std::isnan(lib<MF>::decode(got)) : got == want;
    if (!ok) {
      ++bad;
      if (++reported <= 5) {
        char xs[64];
        std::snprintf(xs, sizeof xs, "%.9g (0x%08X)", static_cast<double>(x), std::bit_cast<std::uint32_t>(x));
        MESSAGE(msg(t.f.name, (ov == ov_rule::saturate ? " saturate(" : " convert("), xs, ") = ", hex(got),
                ", reference ", want == nan_result ? std::string("NaN") : hex(want)));
      }
    }
  }
  return bad;
}

/// Every midpoint between neighbouring values (including 0 | smallest subnormal and
/// max | overflow threshold), the float on each side of it, and every exact value; both signs.
std::vector<float> midpoint_inputs(const value_table& t) {
  std::vector<float> xs;
  std::vector<double> vals = t.values;
  vals.push_back(t.next_after_max());
  for (std::size_t i = 0; i + 1 < vals.size(); ++i) {
    const double mid = 0.5 * (vals[i] + vals[i + 1]);
    const float m = static_cast<float>(mid);
    if (static_cast<double>(m) != mid) FAIL(msg(t.f.name, ": midpoint ", mid, " is not a float"));  // never for these formats
    const float inf = std::numeric_limits<float>::infinity();
    for (float v : {m, std::nextafter(m, 0.0f), std::nextafter(m, inf), static_cast<float>(vals[i])})
      if (std::isfinite(v)) {
        xs.push_back(v);
        xs.push_back(-v);
      }
  }
  return xs;
}

/// Special inputs: zeros, infinities, NaNs, float subnormals, float extremes.
std::vector<float> special_inputs() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> xs = {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::quiet_NaN(),
                           std::bit_cast<float>(0x7F800001u),  // signalling NaN
                           std::bit_cast<float>(0xFFFFFFFFu),
                           std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
                           -std::numeric_limits<float>::max(), std::bit_cast<float>(0x007FFFFFu),
                           std::bit_cast<float>(0x80400000u)};
  return xs;
}

template <class MF>
void run_encode_suite(const fmt_desc& f, int random_count) {
  const value_table t = make_table(f);
  int reported = 0;

  SUBCASE("every midpoint (ties to even), the float on each side, and every value") {
    int bad = 0;
    const auto xs = midpoint_inputs(t);
    for (float x : xs) bad += compare_encode<MF>(t, x, reported);
    CHECK_MESSAGE(bad == 0, msg(f.name, ": ", bad, " wrong encodings out of ", 2 * xs.size()));
  }
  SUBCASE("zeros, infinities, NaN, float subnormals and extremes") {
    int bad = 0;
    for (float x : special_inputs()) bad += compare_encode<MF>(t, x, reported);
    CHECK(bad == 0);
  }
  SUBCASE("random floats: uniform bit patterns and uniform magnitudes over the format's range") {
    std::mt19937_64 rng(0x6d6f656c61ull + static_cast<unsigned>(total_bits(f)));
    std::uniform_int_distribution<std::uint32_t> bits;
    std::uniform_real_distribution<double> log_mag(std::log2(t.values[1]) - 2.0, std::log2(t.max_value()) + 1.0);
    int bad = 0;
    for (int i = 0; i < random_count; ++i) {
      bad += compare_encode<MF>(t, std::bit_cast<float>(bits(rng)), reported);
      const float m = static_cast<float>(std::exp2(log_mag(rng)));
      bad += compare_encode<MF>(t, (i & 1) ? -m : m, reported);
    }
    CHECK_MESSAGE(bad == 0, msg(f.name, ": ", bad, " wrong encodings of random floats"));
  }
}

}  // namespace

TEST_CASE("reference decoder sanity (the reference itself, against known constants)") {
  CHECK(ref_decode(e4m3_desc, 0x7E).value == 448.0);
  CHECK(ref_decode(e4m3_desc, 0x01).value == std::ldexp(1.0, -9));
  CHECK(ref_decode(e4m3_desc, 0x7F).kind == ref_kind::nan);
  CHECK(ref_decode(e4m3_desc, 0x78).value == 256.0);  // E4M3FN has no infinity: 0x78 is finite
  CHECK(ref_decode(e5m2_desc, 0x7B).value == 57344.0);
  CHECK(ref_decode(e5m2_desc, 0x7C).kind == ref_kind::inf);
  CHECK(ref_decode(fp16_desc, 0x7BFF).value == 65504.0);
  CHECK(ref_decode(fp16_desc, 0x0001).value == std::ldexp(1.0, -24));
  CHECK(ref_decode(bf16_desc, 0x3F80).value == 1.0);
  CHECK(ref_decode(bf16_desc, 0x0001).value == std::ldexp(1.0, -133));
  CHECK(make_table(e4m3_desc).values.size() == 127);
  CHECK(make_table(e5m2_desc).values.size() == 124);
  CHECK(make_table(fp16_desc).values.size() == 31744);
  CHECK(make_table(bf16_desc).values.size() == 32640);
  // Ties to even at the top of E4M3FN: 464 is halfway between 448 (even) and the virtual 480.
  const value_table t = make_table(e4m3_desc);
  CHECK(ref_encode(t, 464.0, ov_rule::ieee) == 0x7E);
  CHECK(ref_encode(t, 464.5, ov_rule::ieee) == nan_result);
  CHECK(ref_encode(t, 464.5, ov_rule::saturate) == 0x7E);
}

TEST_CASE("decode: all 256 FP8 E4M3FN codes") { CHECK(count_decode_mismatches<moela::fp8_e4m3>(e4m3_desc) == 0); }
TEST_CASE("decode: all 256 FP8 E5M2 codes") { CHECK(count_decode_mismatches<moela::fp8_e5m2>(e5m2_desc) == 0); }
TEST_CASE("decode: all 65536 FP16 codes") { CHECK(count_decode_mismatches<moela::fp16>(fp16_desc) == 0); }
TEST_CASE("decode: all 65536 BF16 codes") { CHECK(count_decode_mismatches<moela::bf16>(bf16_desc) == 0); }

TEST_CASE("encode: FP8 E4M3FN") { run_encode_suite<moela::fp8_e4m3>(e4m3_desc, 1000000); }
TEST_CASE("encode: FP8 E5M2") { run_encode_suite<moela::fp8_e5m2>(e5m2_desc, 1000000); }
TEST_CASE("encode: FP16") { run_encode_suite<moela::fp16>(fp16_desc, 1000000); }
TEST_CASE("encode: BF16") { run_encode_suite<moela::bf16>(bf16_desc, 1000000); }

TEST_CASE("encode round-trips every finite code (decode then encode gives the code back)") {
  auto round_trip = [](auto tag, const fmt_desc& f) {
    using MF = decltype(tag);
    int bad = 0;
    for (std::uint32_t c = 0; c < (1u << total_bits(f)); ++c) {
      const float v = lib<MF>::decode(c);
      if (std::isnan(v)) continue;
      for (ov_rule ov : {ov_rule::saturate, ov_rule::ieee}) {
        // Saturating conversion maps inf to max, so only finite codes round-trip under it.
        if (ov == ov_rule::saturate && std::isinf(v)) continue;
        if (lib<MF>::encode(v, ov) != c && ++bad <= 5) MESSAGE(msg(f.name, " round trip of ", hex(c)));
      }
    }
    return bad;
  };
  CHECK(round_trip(moela::fp8_e4m3{}, e4m3_desc) == 0);
  CHECK(round_trip(moela::fp8_e5m2{}, e5m2_desc) == 0);
  CHECK(round_trip(moela::fp16{}, fp16_desc) == 0);
  CHECK(round_trip(moela::bf16{}, bf16_desc) == 0);
}

TEST_CASE("overflow rules, spelled out") {
  const float inf = std::numeric_limits<float>::infinity();
  using moela::fp8_e4m3;
  using moela::fp8_e5m2;
  // E4M3FN: saturate clamps to +-448; the IEEE rule has no infinity, so NaN above 464.
  CHECK(fp8_e4m3::saturate(1e6f).bits == 0x7E);
  CHECK(fp8_e4m3::saturate(-1e6f).bits == 0xFE);
  CHECK(fp8_e4m3::saturate(inf).bits == 0x7E);
  CHECK(fp8_e4m3::saturate(-inf).bits == 0xFE);
  CHECK(fp8_e4m3::convert(464.0f).bits == 0x7E);  // the tie rounds to even (448)
  CHECK(fp8_e4m3::convert(std::nextafter(464.0f, inf)).bits == 0x7F);
  CHECK(fp8_e4m3::convert(-std::nextafter(464.0f, inf)).bits == 0xFF);
  CHECK(fp8_e4m3::convert(inf).is_nan());
  CHECK(fp8_e4m3::from_float(500.0f, moela::overflow::saturate).bits == 0x7E);
  CHECK(fp8_e4m3::from_float(500.0f, moela::overflow::ieee).bits == 0x7F);
  // E5M2: max 57344; the tie at 61440 goes to the even code, which is infinity.
  CHECK(fp8_e5m2::convert(61440.0f).bits == 0x7C);
  CHECK(fp8_e5m2::convert(std::nextafter(61440.0f, 0.0f)).bits == 0x7B);
  CHECK(fp8_e5m2::saturate(61440.0f).bits == 0x7B);
  CHECK(fp8_e5m2::saturate(-inf).bits == 0xFB);
  CHECK(fp8_e5m2::convert(-inf).bits == 0xFC);
  // FP16: 65520 is the tie between 65504 and the virtual 65536: goes to inf.
  CHECK(moela::fp16(65520.0f).bits == 0x7C00);
  CHECK(moela::fp16(std::nextafter(65520.0f, 0.0f)).bits == 0x7BFF);
  CHECK(moela::fp16::saturate(1e9f).bits == 0x7BFF);
  // BF16 shares float's range: only values rounding past 0x7F7F overflow.
  CHECK(moela::bf16(std::numeric_limits<float>::max()).bits == 0x7F80);
  CHECK(moela::bf16::saturate(std::numeric_limits<float>::max()).bits == 0x7F7F);
  CHECK(moela::bf16(std::bit_cast<float>(0x7F7F7FFFu)).bits == 0x7F7F);
}

TEST_CASE("NaN, signed zero and subnormals") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(moela::fp8_e4m3::saturate(nan).is_nan());
  CHECK(moela::fp8_e4m3::saturate(nan).bits == 0x7F);
  CHECK(moela::fp8_e4m3::saturate(-nan).bits == 0xFF);
  CHECK(moela::fp8_e5m2::convert(nan).is_nan());
  CHECK(moela::fp16(nan).is_nan());
  CHECK(moela::bf16(nan).is_nan());
  CHECK(moela::bf16(std::bit_cast<float>(0x7F800001u)).is_nan());  // a NaN never rounds to inf
  CHECK(moela::fp8_e4m3::saturate(-0.0f).bits == 0x80);
  CHECK(moela::fp8_e4m3::saturate(-1e-30f).bits == 0x80);  // sign kept on underflow
  CHECK(moela::fp16(-0.0f).bits == 0x8000);
  CHECK(std::signbit(moela::fp8_e5m2::from_bits(0x80).to_float()));
  // Smallest subnormals, and half of them (ties to even: 0).
  CHECK(moela::fp8_e4m3::saturate(std::ldexp(1.0f, -9)).bits == 0x01);
  CHECK(moela::fp8_e4m3::saturate(std::ldexp(1.0f, -10)).bits == 0x00);
  CHECK(moela::fp8_e4m3::saturate(std::ldexp(1.5f, -10)).bits == 0x01);
  CHECK(moela::fp16(std::ldexp(1.0f, -24)).bits == 0x0001);
  CHECK(moela::fp16(std::ldexp(1.0f, -25)).bits == 0x0000);
  CHECK(moela::fp16(std::ldexp(3.0f, -25)).bits == 0x0002);  // 1.5 ulp: tie between 1 and 2 -> 2
  CHECK(moela::bf16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
  CHECK(moela::bf16(std::bit_cast<float>(0x00018000u)).bits == 0x0002);  // bf16 subnormal tie -> even
  // The largest subnormal rounds up into the smallest normal.
  CHECK(moela::fp8_e4m3::saturate(std::ldexp(1.0f, -6) - std::ldexp(1.0f, -11)).bits == 0x08);
}

TEST_CASE("conversions are usable in constant expressions") {
  static_assert(moela::fp8_e4m3::saturate(448.0f).bits == 0x7E);
  static_assert(moela::fp8_e5m2::from_bits(0x3C).to_float() == 1.0f);
  static_assert(moela::fp16(1.0f).bits == 0x3C00);
  static_assert(moela::bf16::from_bits(0xC000).to_float() == -2.0f);
  CHECK(true);
}

TEST_CASE("golden encode vectors (tests/data/golden/fp8-units): bit-exact, both overflow rules") {
  moela::io::safetensors_file file(MOELA_TEST_DATA_DIR "/golden/fp8-units/fp8-units.safetensors");
  const auto in = file.view<float, 1>("encode.input");
  const auto sat = file.view<moela::fp8_e4m3, 1>("encode.satfinite");
  const auto nonsat = file.view<moela::fp8_e4m3, 1>("encode.nonsat");
  REQUIRE(in.extent(0) == 634);
  REQUIRE(sat.extent(0) == in.extent(0));
  REQUIRE(nonsat.extent(0) == in.extent(0));
  int bad_sat = 0, bad_nonsat = 0;
  for (moela::index_t i = 0; i < in.extent(0); ++i) {
    const float x = in(i);
    const auto s = moela::fp8_e4m3::saturate(x).bits, n = moela::fp8_e4m3::convert(x).bits;
    if (s != sat(i).bits && ++bad_sat <= 5) MESSAGE(msg("saturate(", x, ") = ", hex(s), ", golden ", hex(sat(i).bits)));
    if (n != nonsat(i).bits && ++bad_nonsat <= 5)
      MESSAGE(msg("convert(", x, ") = ", hex(n), ", golden ", hex(nonsat(i).bits)));
  }
  CHECK(bad_sat == 0);
  CHECK(bad_nonsat == 0);
  // The reference encoder agrees with the golden data too (so the two oracles cross-check).
  const value_table t = make_table(e4m3_desc);
  int bad_ref = 0;
  for (moela::index_t i = 0; i < in.extent(0); ++i) {
    const std::uint32_t s = ref_encode(t, in(i), ov_rule::saturate), n = ref_encode(t, in(i), ov_rule::ieee);
    if (s != sat(i).bits) ++bad_ref;
    if (n == nan_result ? (nonsat(i).bits & 0x7F) != 0x7F : n != nonsat(i).bits) ++bad_ref;
  }
  CHECK(bad_ref == 0);
  // And the golden decode table.
  const auto codes = file.view<moela::fp8_e4m3, 1>("decode.codes");
  const auto values = file.view<float, 1>("decode.values");
  for (moela::index_t i = 0; i < codes.extent(0); ++i) {
    const float want = values(i), got = codes(i).to_float();
    if (std::isnan(want))
      CHECK(std::isnan(got));
    else
      CHECK(std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(want));
  }
}
