// Bulk conversions (moela/backend/cpu/convert.hpp) equal the scalar conversions of
// minifloat.hpp bit for bit, on every code / special value and random floats, for both the
// build's arch and a portable (SSE) arch.
#include <doctest/doctest.h>

#include <moela/backend/cpu/convert.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using namespace moela;

namespace {

std::vector<float> test_floats() {
  std::vector<float> v = {0.f, -0.f, 1.f, -1.f, 448.f, 464.f, 480.f, 65504.f, 65520.f, 1e-8f, -1e-40f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                          std::bit_cast<float>(0x7f800001u), std::bit_cast<float>(0xffa00001u),
                          std::numeric_limits<float>::max(), std::bit_cast<float>(0x3f808000u),
                          std::bit_cast<float>(0x3f818000u), std::bit_cast<float>(0x7f7fffffu)};
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 5000; ++i) v.push_back(std::bit_cast<float>(bits(rng)));
  std::normal_distribution<float> nd(0.f, 100.f);
  for (int i = 0; i < 3000; ++i) v.push_back(nd(rng));
  return v;  // odd length on purpose: exercises the vector tails
}

template <class Arch>
void check_narrowing() {
  const auto f = test_floats();
  std::vector<bf16> b(f.size());
  std::vector<fp16> h(f.size());
  std::vector<fp8_e4m3> e4(f.size());
  std::vector<fp8_e5m2> e5(f.size());
  from_float<Arch>(std::span<const float>(f), std::span<bf16>(b));
  from_float<Arch>(std::span<const float>(f), std::span<fp16>(h));
  from_float<Arch>(std::span<const float>(f), std::span<fp8_e4m3>(e4));
  from_float<Arch>(std::span<const float>(f), std::span<fp8_e5m2>(e5), overflow::ieee);
  int bad = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    bad += b[i].bits != bf16(f[i]).bits;
    bad += h[i].bits != fp16(f[i]).bits;
    bad += e4[i].bits != fp8_e4m3::saturate(f[i]).bits;
    bad += e5[i].bits != fp8_e5m2::convert(f[i]).bits;
  }
  CHECK(bad == 0);
}

template <class Arch>
void check_widening() {
  // Every code of every format (fp16/bf16: all 65536 patterns), plus an odd tail.
  std::vector<bf16> b(65537);
  std::vector<fp16> h(65537);
  for (std::uint32_t i = 0; i < 65537; ++i) {
    b[i] = bf16::from_bits(static_cast<std::uint16_t>(i));
    h[i] = fp16::from_bits(static_cast<std::uint16_t>(i));
  }
  std::vector<fp8_e4m3> e4(259);
  std::vector<fp8_e5m2> e5(259);
  for (std::uint32_t i = 0; i < 259; ++i) {
    e4[i] = fp8_e4m3::from_bits(static_cast<std::uint8_t>(i));
    e5[i] = fp8_e5m2::from_bits(static_cast<std::uint8_t>(i));
  }
  std::vector<float> fb(b.size()), fh(h.size()), f4(e4.size()), f5(e5.size());
  to_float<Arch>(std::span<const bf16>(b), std::span<float>(fb));
  to_float<Arch>(std::span<const fp16>(h), std::span<float>(fh));
  to_float<Arch>(std::span<const fp8_e4m3>(e4), std::span<float>(f4));
  to_float<Arch>(std::span<const fp8_e5m2>(e5), std::span<float>(f5));
  auto same = [](float a, float r) {
    return std::isnan(r) ? std::isnan(a) : std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(r);
  };
  int bad = 0;
  for (std::size_t i = 0; i < b.size(); ++i) bad += !same(fb[i], b[i].to_float()) + !same(fh[i], h[i].to_float());
  for (std::size_t i = 0; i < e4.size(); ++i) bad += !same(f4[i], e4[i].to_float()) + !same(f5[i], e5[i].to_float());
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("bulk narrowing conversions equal the scalar ones (build arch)") { check_narrowing<xsimd::default_arch>(); }
TEST_CASE("bulk narrowing conversions equal the scalar ones (portable arch)") { check_narrowing<xsimd::sse2>(); }
TEST_CASE("bulk widening conversions equal the scalar ones (build arch)") { check_widening<xsimd::default_arch>(); }
TEST_CASE("bulk widening conversions equal the scalar ones (portable arch)") { check_widening<xsimd::sse2>(); }

TEST_CASE("bulk conversions reject mismatched sizes") {
  std::vector<float> f(4);
  std::vector<bf16> b(5);
  CHECK_THROWS_AS(from_float(std::span<const float>(f), std::span<bf16>(b)), moela::error);
  CHECK_THROWS_AS(to_float(std::span<const bf16>(b), std::span<float>(f)), moela::error);
}
