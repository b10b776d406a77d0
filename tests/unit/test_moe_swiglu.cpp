// ops/swiglu.hpp against float64: every tail length, in-place use, extreme inputs, 2-D rows,
// and the SSE2 instantiation (every x86-64 CPU runs it) against the build's default arch.
#include <doctest/doctest.h>

#include <moela/ops/swiglu.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace moela;

namespace {
double ref(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

// xsimd's exp is within ~2 ulp and the division/multiplication add 1 ulp each: 1e-6 relative
// to max(|result|, 1e-30) is about 8 ulp, tight enough to catch a wrong formula (sigmoid
// instead of silu changes results by O(1)).
void check_close(float got, double want) {
  CHECK(std::abs(double(got) - want) <= 1e-6 * std::max(std::abs(want), 1e-30));
}

template <class Arch>
void check_arch() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 4.f);
  for (std::size_t n = 0; n <= 67; ++n) {
    CAPTURE(n);
    std::vector<float> g(n), u(n), h(n);
    for (std::size_t i = 0; i < n; ++i) {
      g[i] = nd(rng);
      u[i] = nd(rng);
    }
    swiglu<Arch>(h, g, u);
    for (std::size_t i = 0; i < n; ++i) check_close(h[i], ref(g[i], u[i]));
    swiglu<Arch>(g, g, u);  // in place
    for (std::size_t i = 0; i < n; ++i) CHECK(g[i] == h[i]);
  }
}
}  // namespace

TEST_CASE("swiglu matches float64 (default arch)") { check_arch<xsimd::default_arch>(); }
TEST_CASE("swiglu matches float64 (sse2)") { check_arch<xsimd::sse2>(); }

TEST_CASE("swiglu: extreme inputs") {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> g = {-1000.f, -88.f, -20.f, 0.f, 20.f, 88.f, 1000.f, -inf, 1e-30f, 3.f, 3.f, 3.f, 3.f, 3.f, 3.f, 3.f};
  std::vector<float> u(g.size(), 2.f), h(g.size());
  swiglu(h, g, u);
  CHECK(h[0] == 0.f);
  CHECK(std::isnan(h[7]));  // -inf / inf, as PyTorch's silu(-inf)
  CHECK(h[6] == 2000.f);
  for (std::size_t i : {1, 2, 3, 4, 5, 8, 9}) check_close(h[i], ref(g[i], u[i]));
  std::vector<float> nan_in = {std::nanf("")};
  std::vector<float> one = {1.f}, out = {0.f};
  swiglu(out, nan_in, one);
  CHECK(std::isnan(out[0]));
}

TEST_CASE("swiglu: 2-D rows and errors") {
  tensor<float, 2> g({5, 13}), u({5, 13}), h({5, 13});
  for (index_t i = 0; i < g.size(); ++i) {
    g.data()[i] = float(i % 17) - 8.f;
    u.data()[i] = 0.25f * float(i % 5);
  }
  swiglu(cpu<>{}, h.view(), g.cview(), u.cview());
  for (index_t r = 0; r < 5; ++r)
    for (index_t c = 0; c < 13; ++c) check_close(h(r, c), ref(g(r, c), u(r, c)));
  tensor<float, 2> bad({5, 12});
  CHECK_THROWS_WITH_AS(swiglu(cpu<>{}, bad.view(), g.cview(), u.cview()), doctest::Contains("swiglu: h is [5, 12]"),
                       moela::error);
  std::vector<float> a(3), b(4);
  CHECK_THROWS_AS(swiglu(std::span<float>(a), std::span<const float>(b), std::span<const float>(a)), moela::error);
}
