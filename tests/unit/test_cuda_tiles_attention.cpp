// Host tests of the CUDA attention tiles (moela/backend/cuda/tiles/attention.hpp): the online
// softmax state and its merge, and the FP8 latent-cache record, against float64.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "moela/backend/cuda/tiles/attention.hpp"

using namespace moela::gpu::tiles;

namespace {
constexpr float ninf = -std::numeric_limits<float>::infinity();

// Runs the online softmax over scores[begin, end) in blocks of `block`, accumulating the
// scalar values v; returns the state and the unnormalized accumulator.
std::pair<softmax_state, float> run(const std::vector<float>& s, const std::vector<float>& v, int begin, int end,
                                    int block) {
  softmax_state st;
  float o = 0.f;
  for (int b = begin; b < end; b += block) {
    const int e = std::min(end, b + block);
    float bm = ninf;
    for (int j = b; j < e; ++j) bm = std::max(bm, s[j]);
    o *= softmax_advance(st, bm);
    for (int j = b; j < e; ++j) o += softmax_accept(st, s[j]) * v[j];
  }
  return {st, o};
}
}  // namespace

TEST_CASE("cuda tiles: online softmax in blocks and split-KV merge equal the one-pass softmax") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 4.f);
  for (int trial = 0; trial < 50; ++trial) {
    CAPTURE(trial);
    const int n = 1 + trial * 13;
    std::vector<float> s(n), v(n);
    for (int j = 0; j < n; ++j) {
      s[j] = nd(rng);
      v[j] = nd(rng);
    }
    if (trial % 7 == 3) s[n / 2] = ninf;  // a masked key
    double mx = -INFINITY, sum = 0, out = 0;
    for (int j = 0; j < n; ++j) mx = std::max(mx, double(s[j]));
    for (int j = 0; j < n; ++j) {
      const double p = std::exp(double(s[j]) - mx);
      sum += p;
      out += p * v[j];
    }
    out /= sum;
    const double lse = mx + std::log(sum);
    // exp of fp32 arguments and fp32 sums of <= 640 terms: relative error well below 1e-5
    // of sum |p v| (which is at most max|v| here).
    double vmax = 0;
    for (float x : v) vmax = std::max(vmax, std::fabs(double(x)));
    const auto [st, o] = run(s, v, 0, n, 16);
    CHECK(std::fabs(o * softmax_normalizer(st) - out) <= 1e-5 * vmax);
    CHECK(std::fabs(softmax_lse(st) - lse) <= 1e-5 * std::max(1.0, std::fabs(lse)));
    // Split at an arbitrary point, merge.
    const int cut = n / 3;
    auto [a, oa] = run(s, v, 0, cut, 8);
    const auto [b, ob] = run(s, v, cut, n, 32);
    const auto c = softmax_merge(a, b);
    const float om = c.a * oa + c.b * ob;
    CHECK(std::fabs(om * softmax_normalizer(a) - out) <= 1e-5 * vmax);
    CHECK(std::fabs(softmax_lse(a) - lse) <= 1e-5 * std::max(1.0, std::fabs(lse)));
  }
}

TEST_CASE("cuda tiles: empty and fully masked softmax states never produce NaN") {
  softmax_state a, b;
  const auto c = softmax_merge(a, b);
  CHECK(c.a == 0.f);
  CHECK(c.b == 0.f);
  CHECK(a.l == 0.f);
  CHECK(softmax_normalizer(a) == 0.f);
  CHECK(softmax_lse(a) == ninf);
  // A block whose every key is masked leaves the state empty.
  CHECK(softmax_advance(a, ninf) == 1.f);
  CHECK(softmax_accept(a, ninf) == 0.f);
  CHECK(a.l == 0.f);
  // Empty merged with non-empty keeps the non-empty one.
  softmax_state x;
  softmax_advance(x, 2.f);
  softmax_accept(x, 2.f);
  softmax_state e;
  const auto d = softmax_merge(e, x);
  CHECK(d.a == 0.f);
  CHECK(d.b == 1.f);
  CHECK(e.m == 2.f);
  CHECK(e.l == 1.f);
}

TEST_CASE("cuda tiles: FP8 latent record encodes within the format's bound and decodes exactly") {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> ckv(512), kpe(64);
  for (int trial = 0; trial < 20; ++trial) {
    const float mag = std::ldexp(1.f, trial - 10);
    for (auto& x : ckv) x = nd(rng) * mag;
    for (auto& x : kpe) x = nd(rng) * mag;
    if (trial == 0) std::fill(ckv.begin(), ckv.begin() + 128, 0.f);  // all-zero tile
    std::vector<std::uint8_t> rec(mla_fp8_record::bytes);
    mla_fp8_record_encode(ckv.data(), kpe.data(), rec.data());
    for (int t = 0; t < 4; ++t) {
      double amax = 0;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(double(ckv[t * 128 + i])));
      const float s = mla_fp8_record_scale(rec.data(), t);
      CHECK(s == kv_fp8_scale(static_cast<float>(amax)));
      CHECK(s >= amax / 448.0);  // no saturation
    }
    for (int d = 0; d < 512; ++d) {
      const float s = mla_fp8_record_scale(rec.data(), d / 128);
      const double err = std::fabs(double(mla_fp8_record_value(rec.data(), d)) - ckv[d]);
      // Half an e4m3 ulp: relative 2^-4 for normals, 2^-10 * s absolute in the subnormal range.
      CHECK(err <= std::max(std::fabs(double(ckv[d])) / 16.0, s * std::ldexp(1.0, -10)));
      CHECK(mla_fp8_record_value(rec.data(), d) == decode_e4m3(rec[d]) * s);
    }
    for (int i = 0; i < 64; ++i) CHECK(mla_fp8_record_value(rec.data(), 512 + i) == decode_bf16(encode_bf16(kpe[i])));
  }
}
