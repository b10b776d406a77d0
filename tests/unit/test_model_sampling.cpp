#include <doctest/doctest.h>

#include <moela/model/sampling.hpp>

#include <cmath>
#include <set>
#include <vector>

TEST_CASE("pcg64_stream reproduces numpy.random.default_rng(42).random()") {
  // numpy.random.default_rng(42).random(5), printed with repr (NumPy 1.x and 2.x agree).
  const double want[] = {0.7739560485559633, 0.4388784397520523, 0.8585979199113825, 0.6973680290593639,
                         0.09417734788764953};
  moela::pcg64_stream r(42);
  for (double w : want) CHECK(r.next_double() == w);
}

TEST_CASE("sampler: greedy, ties, errors") {
  moela::sampler g;
  const std::vector<float> l = {0.5f, 2.f, 2.f, -1.f};
  CHECK(g.greedy());
  CHECK(g(l) == 1);
  const std::vector<float> nan = {0.f, NAN};
  CHECK_THROWS_AS(g(nan), moela::error);
  CHECK_THROWS_AS(g(std::span<const float>{}), moela::error);
  CHECK_THROWS_AS(moela::sampler({.temperature = -1.0}), moela::error);
  CHECK_THROWS_AS(moela::sampler({.temperature = 1.0, .top_p = 0.0}), moela::error);
  CHECK_THROWS_AS(moela::sampler({.temperature = 1.0, .top_p = 1.5}), moela::error);
}

TEST_CASE("sampler: frequencies follow softmax(logits / T), top-k and top-p cut the tail") {
  const std::vector<float> l = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
  const double T = 0.8;
  std::vector<double> p(l.size());
  double s = 0;
  for (std::size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp(double(l[i]) / T);
  for (auto& v : p) v /= s;
  const int n = 200000;
  {
    moela::sampler smp({.temperature = T, .seed = 7});
    std::vector<int> count(l.size());
    for (int i = 0; i < n; ++i) ++count[static_cast<std::size_t>(smp(l))];
    for (std::size_t i = 0; i < l.size(); ++i) {
      // Binomial standard deviation sqrt(n p (1-p)) <= 224; 6 sigma keeps a false alarm below 1e-8.
      const double sd = std::sqrt(n * p[i] * (1 - p[i]));
      CHECK(std::fabs(count[i] - n * p[i]) < 6 * sd);
    }
  }
  {
    moela::sampler smp({.temperature = T, .top_k = 2, .seed = 8});
    std::set<int> seen;
    for (int i = 0; i < 2000; ++i) seen.insert(smp(l));
    CHECK(seen == std::set<int>{0, 2});
  }
  {
    // p sorted: id2 0.61, id0 0.17, id4 0.10, id1 0.05, id3 0.02 (approximately); top_p = 0.7 keeps {2, 0}.
    moela::sampler smp({.temperature = T, .top_p = 0.7, .seed = 9});
    std::set<int> seen;
    for (int i = 0; i < 2000; ++i) seen.insert(smp(l));
    CHECK(seen == std::set<int>{0, 2});
  }
  {
    // Same seed, same sequence.
    moela::sampler a({.temperature = 1.0, .seed = 3}), b({.temperature = 1.0, .seed = 3});
    for (int i = 0; i < 100; ++i) CHECK(a(l) == b(l));
  }
}
