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

TEST_CASE("sampler: top-p applies to the distribution renormalised over the top-k kept") {
  // p = 0.4, 0.3, 0.2, 0.1. top_k = 2 keeps 0.4, 0.3, renormalised 4/7 and 3/7; 4/7 >= 0.5, so
  // top_p = 0.5 keeps id 0 alone (Hugging Face's top-k then top-p warpers). Over the whole
  // distribution 0.4 < 0.5 would have kept ids 0 and 1.
  const std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  moela::sampler s({.temperature = 1.0, .top_k = 2, .top_p = 0.5, .seed = 3});
  int other = 0;
  for (int i = 0; i < 2000; ++i) other += s(l) != 0;
  CHECK(other == 0);
  // Without the top-k cut the same top_p keeps ids 0 and 1 (each drawn about 4/7, 3/7).
  moela::sampler t({.temperature = 1.0, .top_p = 0.5, .seed = 3});
  int ones = 0, rest = 0;
  for (int i = 0; i < 2000; ++i) {
    const int id = t(l);
    ones += id == 1;
    rest += id > 1;
  }
  CHECK(rest == 0);
  CHECK(ones > 700);  // expected 857; 700 is > 6 standard deviations (22) below
}

TEST_CASE("sampler: infinite logits and extreme temperatures") {
  moela::sampler s({.temperature = 1.0, .seed = 7});
  const std::vector<float> pos_inf = {0.f, INFINITY, 0.f, 1.f};
  CHECK_THROWS_WITH_AS(s(pos_inf), "sampler: logit 1 is +inf (no distribution to sample from)", moela::error);
  const std::vector<float> all_neg_inf = {-INFINITY, -INFINITY, -INFINITY};
  CHECK_THROWS_WITH_AS(s(all_neg_inf), "sampler: every logit is -inf (no distribution to sample from)", moela::error);
  // -inf logits (masked tokens) are never drawn.
  const std::vector<float> masked = {-INFINITY, 0.f, -INFINITY, 0.f};
  for (int i = 0; i < 200; ++i) {
    const int id = s(masked);
    CHECK((id == 1 || id == 3));
  }
  // A temperature so small that logits / T overflow: the distribution is the argmax.
  moela::sampler tiny({.temperature = 1e-300, .seed = 7});
  const std::vector<float> l = {1.f, 3.f, 2.f, 0.f};
  for (int i = 0; i < 50; ++i) CHECK(tiny(l) == 1);
  // Greedy takes any non-NaN row.
  moela::sampler g;
  CHECK(g(pos_inf) == 1);
  CHECK(g(all_neg_inf) == 0);
  CHECK_THROWS_WITH_AS(moela::sampler({.temperature = INFINITY}), "sampler: temperature must be finite and >= 0, got inf",
                       moela::error);
}
