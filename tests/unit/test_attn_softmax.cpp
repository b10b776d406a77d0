// Softmax op and the online-softmax state.
#include <doctest/doctest.h>

#include <moela/ops/softmax.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace moela;

TEST_CASE("softmax: float64 reference, -inf entries, all -inf row") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 4.f);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (index_t n : {1L, 5L, 8L, 33L, 200L}) {
    CAPTURE(n);
    std::vector<float> x(static_cast<std::size_t>(2 * n));
    for (auto& v : x) v = nd(rng);
    x[0] = ninf;
    for (index_t j = 0; j < n; ++j) x[static_cast<std::size_t>(n + j)] = ninf;
    const auto x0 = x;
    softmax(tensor_view<float, 2>(x.data(), {2, n}));
    double mx = -1e300, sum = 0;
    for (index_t j = 0; j < n; ++j) mx = std::max(mx, double(x0[static_cast<std::size_t>(j)]));
    for (index_t j = 0; j < n; ++j) sum += std::exp(double(x0[static_cast<std::size_t>(j)]) - mx);
    for (index_t j = 0; j < n; ++j) {
      const double want = n == 1 ? 0.0 : std::exp(double(x0[static_cast<std::size_t>(j)]) - mx) / sum;
      // xsimd exp is within a few ulp; sum and division add n-scaled FP32 rounding.
      CHECK(std::fabs(x[static_cast<std::size_t>(j)] - want) <= (8 + double(n)) * 0x1p-24 * std::max(want, 1e-30));
      CHECK(x[static_cast<std::size_t>(n + j)] == 0.f);
    }
  }
}

TEST_CASE("softmax_state: online over tiles equals one pass; merging empty states gives no NaN") {
  std::vector<float> s = {3.f, -1.f, 7.f, 0.5f, 9.f, 2.f};
  softmax_state st;
  for (std::size_t t = 0; t < s.size(); t += 2) {
    const float m = std::max(s[t], s[t + 1]);
    st.rescale(m);
    st.sum += std::exp(s[t] - st.max) + std::exp(s[t + 1] - st.max);
  }
  double ref = 0;
  for (float v : s) ref += std::exp(double(v) - 9.0);
  CHECK(st.max == 9.f);
  CHECK(st.sum == doctest::Approx(ref).epsilon(1e-6));
  float fa, fb;
  const auto e = softmax_state::merge(softmax_state{}, softmax_state{}, fa, fb);
  CHECK(e.empty());
  CHECK(fa == 0.f);
  CHECK(fb == 0.f);
  const auto m = softmax_state::merge(st, softmax_state{}, fa, fb);
  CHECK(m.sum == st.sum);
  CHECK(fa == 1.f);
  CHECK(fb == 0.f);
}
