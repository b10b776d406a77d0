// Host tests of the CUDA elementwise tiles (moela/backend/cuda/tiles/elementwise.hpp):
// YaRN frequencies against the spec's table, RoPE rotation, RMSNorm reduction, SwiGLU.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "moela/backend/cuda/tiles/elementwise.hpp"

using namespace moela::gpu::tiles;

TEST_CASE("cuda tiles: YaRN frequencies and softmax scale reproduce spec §4.3 / §4.5") {
  yarn_params p;  // DeepSeek-V3: d 64, base 1e4, s 40, L0 4096, 32 / 1
  p.factor = 40.f;
  CHECK(std::floor(yarn_correction_dim(p, 32)) == 10);
  CHECK(std::ceil(yarn_correction_dim(p, 1)) == 23);
  const struct {
    int i;
    double want;
  } table[] = {{0, 1.0},           {1, 0.749894202},      {10, 0.0562341288},     {11, 0.0390069255},
               {16, 0.00549999988}, {22, 0.000177827943}, {23, 3.33380362e-05}, {31, 3.33380376e-06}};
  for (const auto& t : table) {
    CAPTURE(t.i);
    // The spec's values are printed with 9 significant digits; pow/division in fp32 may
    // differ by 1 ulp between math libraries (§4.7): allow 2^-22 relative.
    CHECK(std::fabs(yarn_inv_freq(p, t.i) - t.want) <= t.want * std::ldexp(1.0, -22));
  }
  CHECK(std::fabs(yarn_softmax_scale(p, 192) - 0.135233779) <= 1e-8);
  p.mscale = p.mscale_all_dim = 0.707f;
  CHECK(std::fabs(yarn_softmax_scale(p, 192) - 0.114721387) <= 1e-8);
  CHECK(yarn_cos_sin_factor(p) == 1.0f);
  // tiny-v3 golden model: L0 = 512 gives the correction range [3, 16] and scale 0.16562687709876717.
  yarn_params t;
  t.factor = 40.f;
  t.original_max_pos = 512;
  CHECK(std::floor(yarn_correction_dim(t, 32)) == 3);
  CHECK(std::ceil(yarn_correction_dim(t, 1)) == 16);
  CHECK(std::fabs(yarn_softmax_scale(t, 128) - 0.16562687709876717) <= 1e-8);
  // Without scaling, plain RoPE.
  yarn_params plain;
  CHECK(yarn_inv_freq(plain, 3) == 1.0f / std::pow(10000.f, 6.f / 64.f));
}

TEST_CASE("cuda tiles: RoPE rotation of an adjacent pair") {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  for (int i = 0; i < 1000; ++i) {
    float a = u(rng), b = u(rng);
    const double ang = u(rng);
    const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
    const double ra = double(a) * c - double(b) * s, rb = double(a) * s + double(b) * c;
    rope_rotate(a, b, c, s);
    // Two products and one sum in fp32: within 2 ulp of the magnitude |x| <= 4*sqrt(2).
    CHECK(std::fabs(a - ra) <= 6 * std::ldexp(1.0, -22));
    CHECK(std::fabs(b - rb) <= 6 * std::ldexp(1.0, -22));
  }
}

TEST_CASE("cuda tiles: RMSNorm reduction over strided threads equals float64") {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (int n : {1, 7, 128, 1000, 7168}) {
    CAPTURE(n);
    std::vector<float> x(n), w(n);
    for (int j = 0; j < n; ++j) {
      x[j] = nd(rng);
      w[j] = nd(rng);
    }
    const int threads = 64;  // what one block of the kernel does, thread by thread
    float total = 0.f;
    for (int t = 0; t < threads; ++t) total += rms_partial(x.data(), t, n, threads);
    const float r = rms_factor(total, n, 1e-6f);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double rr = 1.0 / std::sqrt(ss / n + 1e-6);
    // fp32 sum of n squares: relative error <= n * 2^-24 (loose; the real error is ~sqrt(n)).
    CHECK(std::fabs(r - rr) <= rr * (n + 4) * std::ldexp(1.0, -24));
    for (int j = 0; j < n; j += 97) {
      const double want = double(x[j]) * rr * w[j];
      CHECK(std::fabs(rms_apply(x[j], w[j], r) - want) <= std::fabs(want) * (n + 8) * std::ldexp(1.0, -24));
    }
  }
}

TEST_CASE("cuda tiles: SiLU and SwiGLU") {
  for (float z = -30.f; z <= 30.f; z += 0.37f) {
    const double want = double(z) / (1.0 + std::exp(-double(z)));
    // expf is within 2 ulp; one add, one division: 4 ulp of the result (plus tiny absolute).
    CHECK(std::fabs(silu(z) - want) <= std::fabs(want) * 4 * std::ldexp(1.0, -23) + 1e-30);
    CHECK(std::fabs(swiglu(z, 0.5f) - 0.5 * want) <= std::fabs(want) * 4 * std::ldexp(1.0, -23) + 1e-30);
  }
}
