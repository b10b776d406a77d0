// Host tests of the CUDA kernels' quantization tiles (moela/backend/cuda/tiles/quant.hpp):
// the same functions run inside the kernels; here they are checked against float64.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "moela/backend/cuda/tiles/quant.hpp"

using namespace moela::gpu::tiles;

namespace {
// E4M3FN value from the bit fields (spec §8.1), in double.
double e4m3_ref(int code) {
  const int s = code >> 7, e = (code >> 3) & 0xF, m = code & 7;
  if ((code & 0x7F) == 0x7F) return std::numeric_limits<double>::quiet_NaN();
  const double v = e ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6);
  return s ? -v : v;
}
// Nearest finite E4M3FN code to x (ties to the even code), saturating; brute force.
int e4m3_nearest(double x) {
  int best = 0;
  double bd = std::numeric_limits<double>::infinity();
  for (int c = 0; c < 256; ++c) {
    const double v = e4m3_ref(c);
    if (std::isnan(v)) continue;
    const double d = std::fabs(v - x);
    if (d < bd || (d == bd && (c & 1) == 0 && std::signbit(v) == std::signbit(x))) {
      bd = d;
      best = c;
    }
  }
  return best;
}
}  // namespace

TEST_CASE("cuda tiles: e4m3 decode matches the bit-field formula for all 256 codes") {
  for (int c = 0; c < 256; ++c) {
    CAPTURE(c);
    const double r = e4m3_ref(c);
    const float v = decode_e4m3(static_cast<std::uint8_t>(c));
    if (std::isnan(r)) {
      CHECK(std::isnan(v));
    } else {
      CHECK(static_cast<double>(v) == r);  // every code is exact in fp32
    }
  }
}

TEST_CASE("cuda tiles: e4m3 encode is round-to-nearest-even and saturating") {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-12.f, 9.5f);
  for (int i = 0; i < 4000; ++i) {
    const float x = (i & 1 ? -1.f : 1.f) * std::exp2(mag(rng));
    CAPTURE(x);
    const int want = e4m3_nearest(x);
    // Both signed zeros are nearest to tiny values; compare values there.
    CHECK(decode_e4m3(encode_e4m3(x)) == static_cast<float>(e4m3_ref(want)));
  }
  CHECK(encode_e4m3(1e6f) == 0x7E);
  CHECK(encode_e4m3(-1e6f) == 0xFE);
  CHECK(encode_e4m3(std::numeric_limits<float>::infinity()) == 0x7E);
  CHECK((encode_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7F) == 0x7F);
  // Ties: 0.5 * (1 + 1.125) = 1.0625 lies halfway between 1 (even mantissa) and 1.125.
  CHECK(decode_e4m3(encode_e4m3(1.0625f)) == 1.0f);
  CHECK(decode_e4m3(encode_e4m3(1.1875f)) == 1.25f);
}

TEST_CASE("cuda tiles: bf16 round trip is RNE") {
  CHECK(decode_bf16(encode_bf16(1.0f)) == 1.0f);
  CHECK(encode_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);  // tie -> even
  CHECK(encode_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);
}

TEST_CASE("cuda tiles: activation scale, UE8M0 and KV-record scales") {
  // ACT_V3: max(amax, 1e-4) / 448, an fp32 division (correctly rounded: within half an ulp).
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mag(-20.f, 20.f);
  for (int i = 0; i < 2000; ++i) {
    const float a = std::exp2(mag(rng));
    const double want = std::max(static_cast<double>(a), static_cast<double>(1e-4f)) / 448.0;
    CHECK(std::fabs(act_scale(a) - want) <= want * std::ldexp(1.0, -24));
    const float p = round_up_pow2(a);
    int e = 0;
    CHECK(std::frexp(p, &e) == 0.5);  // a power of two
    CHECK(p >= a);
    CHECK(p / 2 < a);
  }
  CHECK(act_scale(0.0f) == 1e-4f / 448.0f);
  CHECK(round_up_pow2(1.0f) == 1.0f);
  CHECK(round_up_pow2(std::ldexp(1.0f, -140)) == std::ldexp(1.0f, -140));  // subnormal power of two
  CHECK(round_up_pow2(3 * std::ldexp(1.0f, -140)) == std::ldexp(1.0f, -138));
  // KV record: the clamp acts on the scale: amax = 0 gives 2^ceil(log2 1e-4) = 2^-13.
  CHECK(kv_fp8_scale(0.0f) == std::ldexp(1.0f, -13));
  CHECK(kv_fp8_scale(448.0f) == 1.0f);
  CHECK(kv_fp8_scale(449.0f) == 2.0f);
}

TEST_CASE("cuda tiles: block-scaled FP8 GEMM built from the tiles matches float64") {
  // Simulates what a thread of the FP8 matmul kernel does for one output: quantize the
  // activation per 1x128 group (ACT_V3), decode weight codes, sum each 128-long partial in
  // fp32, promote with the two scales. K = 320 has a partial last group of 64.
  const int K = 320, N = 3;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(K);
  for (auto& v : x) v = nd(rng) * 3.f;
  std::vector<std::uint8_t> wq(N * K);
  for (auto& c : wq) c = encode_e4m3(nd(rng) * 50.f);
  const int groups = blocks_of(K);
  CHECK(groups == 3);
  std::vector<float> ws = {0.01f, 0.02f, 0.005f};  // one block row, 3 block columns
  std::vector<float> xs(groups);
  std::vector<std::uint8_t> xq(K);
  for (int g = 0; g < groups; ++g) {
    float amax = 0.f;
    for (int k = g * 128; k < std::min(K, g * 128 + 128); ++k) amax = std::max(amax, std::fabs(x[k]));
    xs[g] = act_scale(amax);
    for (int k = g * 128; k < std::min(K, g * 128 + 128); ++k) {
      xq[k] = act_quantize(x[k], xs[g]);
      // Quantization error bound: half an e4m3 ulp (relative 2^-4) or half the smallest
      // subnormal step (2^-10 in units of the scale).
      CHECK(std::fabs(decode_e4m3(xq[k]) * xs[g] - x[k]) <=
            std::max(std::fabs(x[k]) / 16.f, xs[g] * std::ldexp(1.f, -10)) * 1.0001f);
    }
  }
  for (int n = 0; n < N; ++n) {
    float acc = 0.f;
    double ref = 0.0, abs_sum = 0.0;
    for (int g = 0; g < groups; ++g) {
      float partial = 0.f;
      for (int k = g * 128; k < std::min(K, g * 128 + 128); ++k) {
        partial += decode_e4m3(xq[k]) * decode_e4m3(wq[n * K + k]);
        const double t = double(decode_e4m3(xq[k])) * xs[g] * double(decode_e4m3(wq[n * K + k])) * ws[g];
        ref += t;
        abs_sum += std::fabs(t);
      }
      acc = promote(acc, partial, xs[g], ws[g]);
    }
    // fp32 summation of 128 terms plus two scale multiplies and 3 promotions: error below
    // (128 + 5) * 2^-24 * sum |terms| (standard recursive-summation bound).
    CHECK(std::fabs(acc - ref) <= 133 * std::ldexp(1.0, -24) * abs_sum);
  }
}

TEST_CASE("cuda tiles: int8 and int4 group dequantization") {
  for (int q = -128; q < 128; ++q) CHECK(dequant_int8(static_cast<std::int8_t>(q), 0.25f) == q * 0.25f);
  for (int b = 0; b < 256; ++b) {
    const int lo = (b & 0xF) >= 8 ? (b & 0xF) - 16 : (b & 0xF);
    const int hi = (b >> 4) >= 8 ? (b >> 4) - 16 : (b >> 4);
    CHECK(dequant_int4(static_cast<std::uint8_t>(b), 0, 0.5f) == lo * 0.5f);
    CHECK(dequant_int4(static_cast<std::uint8_t>(b), 1, 0.5f) == hi * 0.5f);
  }
}
