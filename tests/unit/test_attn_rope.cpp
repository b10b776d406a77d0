// RoPE / YaRN: frequency tables against a float64 reference written here from the spec (§4.2),
// the spec's test vectors (§4.3, §4.5), the golden `rope_inv_freq`, and the interleaved rotation.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

#include <complex>
#include <numbers>

using namespace moela;

namespace {

// Float64 YaRN inverse frequencies (spec §4.2 evaluated entirely in double).
std::vector<double> yarn_f64(const attn::rope_config& c) {
  const double d = double(c.dim);
  auto corr = [&](double r) {
    return d * std::log(double(c.original_max_positions) / (2 * std::numbers::pi * r)) / (2 * std::log(c.theta));
  };
  double low = std::max(std::floor(corr(c.beta_fast)), 0.0), high = std::min(std::ceil(corr(c.beta_slow)), d - 1);
  if (low == high) high += 0.001;
  std::vector<double> f;
  for (index_t i = 0; i < c.dim / 2; ++i) {
    const double th = 1.0 / std::pow(c.theta, 2.0 * double(i) / d);
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    f.push_back(c.yarn ? th / c.factor * ramp + th * (1 - ramp) : th);
  }
  return f;
}

}  // namespace

TEST_CASE("yarn: V3 correction range and the spec's test vectors") {
  const auto c = attn::mla_config::deepseek_v3().rope;
  double low, high;
  attn::yarn_correction_range(c, low, high);
  CHECK(low == 10);
  CHECK(high == 23);
  const auto f = attn::rope_inv_freq(c);
  REQUIRE(f.size() == 32);
  // Spec §4.3 table (9 significant digits). Those digits are the exact blend rounded once; the
  // step-by-step FP32 evaluation that §4.2 prescribes lands up to 2 ulp away (i = 16:
  // 0x1.6872b2p-8 against 0x1.6872bp-8), so the bound is 2 ulp = 2^-22 relative.
  const std::pair<int, double> table[] = {{0, 1.0},           {1, 0.749894202},      {10, 0.0562341288},
                                          {11, 0.0390069255}, {16, 0.00549999988},   {22, 0.000177827943},
                                          {23, 3.33380362e-05}, {31, 3.33380376e-06}};
  for (const auto& row : table) {
    const int i = row.first;  // a plain variable: CAPTURE's lambda cannot take a structured binding in Clang 14
    const double v = row.second;
    CAPTURE(i);
    CHECK(std::fabs(f[static_cast<std::size_t>(i)] - v) <= 0x1p-22 * v);
  }
}

TEST_CASE("yarn: inverse frequencies against float64 for V3, V2-Lite, tiny-v3 and plain RoPE") {
  auto plain = attn::mla_config::deepseek_v3().rope;
  plain.yarn = false;
  for (const auto& c : {attn::mla_config::deepseek_v3().rope, attn::mla_config::deepseek_v2_lite().rope,
                        attn_test::tiny_config().rope, plain}) {
    const auto f = attn::rope_inv_freq(c);
    const auto r = yarn_f64(c);
    for (std::size_t i = 0; i < f.size(); ++i) {
      CAPTURE(i);
      // FP32 pow, reciprocal, ramp and blend: a few roundings of 2^-24 each; 4 ulp covers them.
      CHECK(std::fabs(f[i] - r[i]) <= 4 * 0x1p-24 * r[i]);
    }
  }
}

TEST_CASE("yarn: matches the golden rope_inv_freq of tiny-v3") {
  io::safetensors_file exp(attn_test::golden_dir() + "/expected-bf16.safetensors");
  const auto want = exp.view<double, 1>("rope_inv_freq");
  const auto f = attn::rope_inv_freq(attn_test::tiny_config().rope);
  REQUIRE(static_cast<index_t>(f.size()) == want.extent(0));
  for (index_t i = 0; i < want.extent(0); ++i) {
    CAPTURE(i);
    CHECK(std::fabs(f[static_cast<std::size_t>(i)] - want(i)) <= 4 * 0x1p-24 * want(i));  // as above
  }
}

TEST_CASE("yarn: softmax scale and magnitude") {
  // Spec §4.5 values and the golden manifest's value.
  CHECK(attn::mla_config::deepseek_v3().softmax_scale() == doctest::Approx(0.135233779).epsilon(1e-8));
  CHECK(attn::mla_config::deepseek_v2_lite().softmax_scale() == doctest::Approx(0.114721387).epsilon(1e-8));
  CHECK(attn_test::tiny_config().softmax_scale() == doctest::Approx(0.16562687709876717).epsilon(1e-14));
  CHECK(attn::rope_magnitude(attn::mla_config::deepseek_v2_lite().rope) == 1.0);
  attn::rope_config r = attn::mla_config::deepseek_v3().rope;
  r.mscale = 1.0;
  r.mscale_all_dim = 0.0;  // a derivative config: only the cos/sin ratio applies, no softmax correction
  CHECK(attn::rope_magnitude(r) == doctest::Approx(1.0 + 0.1 * std::log(40.0)));
  CHECK(attn::softmax_scale(192, r) == doctest::Approx(1 / std::sqrt(192.0)));
}

TEST_CASE("rope: interleaved rotation equals complex multiplication (float64), positions checked") {
  const auto c = attn_test::tiny_config().rope;
  attn::rope_table t(c, 2048);
  CHECK(t.positions() == 2048);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (index_t p : {0L, 1L, 11L, 511L, 512L, 2047L}) {
    CAPTURE(p);
    std::vector<float> u(64);
    for (auto& v : u) v = nd(rng);
    auto v = u;
    t.apply(view_of(std::span<float>(v)), p);
    for (index_t i = 0; i < 32; ++i) {
      // Reference: the FP32 angle (the table's contract) rotated in double.
      const double ang = double(float(p) * t.inv_freq()[static_cast<std::size_t>(i)]);
      const std::complex<double> z(u[2 * i], u[2 * i + 1]), w = z * std::polar(1.0, ang);
      // Two FP32 products and one sum per output: 3 roundings of |z| 2^-24, plus 1 ulp in cos/sin.
      const double tol = 8 * 0x1p-24 * std::abs(z);
      CHECK(std::fabs(v[static_cast<std::size_t>(2 * i)] - w.real()) <= tol);
      CHECK(std::fabs(v[static_cast<std::size_t>(2 * i + 1)] - w.imag()) <= tol);
    }
  }
  std::vector<float> u(64);
  CHECK_THROWS_AS(t.apply(view_of(std::span<float>(u)), 2048), moela::error);
  CHECK_THROWS_AS(t.apply(view_of(std::span<float>(u)).slice(0, 0, 32), 0), moela::error);
  attn::rope_config bad = c;
  bad.dim = 63;
  CHECK_THROWS_AS(attn::rope_table{bad}, moela::error);
}
