// RMSNorm against a float64 reference.
#include <doctest/doctest.h>

#include <moela/ops/rmsnorm.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace moela;

TEST_CASE("rmsnorm: float64 reference, odd widths, in place, strided rows") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (index_t n : {1L, 7L, 8L, 17L, 160L, 513L, 7168L}) {
    CAPTURE(n);
    const index_t M = 3, ld = n + 5;
    std::vector<float> x(static_cast<std::size_t>(M * ld)), w(static_cast<std::size_t>(n)), y(x.size());
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = 1.f + 0.1f * nd(rng);
    const_view<float, 2> xv(x.data(), {M, n}, {ld, 1});
    tensor_view<float, 2> yv(y.data(), {M, n}, {ld, 1});
    rmsnorm(yv, xv, const_view<float, 1>(w.data(), {n}), 1e-6f);
    for (index_t m = 0; m < M; ++m) {
      double ss = 0;
      for (index_t j = 0; j < n; ++j) ss += double(xv(m, j)) * xv(m, j);
      const double r = 1.0 / std::sqrt(ss / double(n) + 1e-6);
      for (index_t j = 0; j < n; ++j) {
        const double want = double(xv(m, j)) * r * w[static_cast<std::size_t>(j)];
        // The FP32 sum of squares runs in 2 x lanes chains of about n / 16 terms: worst-case
        // relative error (n / 16) 2^-24, halved by the square root; then the square root, the
        // reciprocal and two products add 4 roundings of 2^-24.
        CHECK(std::fabs(yv(m, j) - want) <= (4.0 + 0.5 * double(n) / 16.0) * 0x1p-24 * std::fabs(want));
      }
    }
    // In place gives the same bits.
    std::vector<float> z = x;
    tensor_view<float, 2> zv(z.data(), {M, n}, {ld, 1});
    rmsnorm(zv, const_view<float, 1>(w.data(), {n}), 1e-6f);
    for (index_t m = 0; m < M; ++m)
      for (index_t j = 0; j < n; ++j) CHECK(zv(m, j) == yv(m, j));
  }
}

TEST_CASE("rmsnorm: zero row gives zeros; shape errors") {
  std::vector<float> x(16, 0.f), w(16, 1.f), y(16, 5.f);
  rmsnorm(tensor_view<float, 2>(y.data(), {1, 16}), const_view<float, 2>(x.data(), {1, 16}),
          const_view<float, 1>(w.data(), {16}), 1e-6f);
  for (float v : y) CHECK(v == 0.f);
  CHECK_THROWS_AS(rmsnorm(tensor_view<float, 2>(y.data(), {1, 16}), const_view<float, 2>(x.data(), {1, 16}),
                          const_view<float, 1>(w.data(), {15}), 1e-6f),
                  moela::error);
  CHECK_THROWS_AS(rmsnorm(tensor_view<float, 2>(y.data(), {2, 8}), const_view<float, 2>(x.data(), {1, 16}),
                          const_view<float, 1>(w.data(), {16}), 1e-6f),
                  moela::error);
}
