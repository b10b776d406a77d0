// Host tests of the CUDA router tile (moela/backend/cuda/tiles/routing.hpp) against an
// independent float64 implementation of spec §6.2, for the V3, V2 and V2-Lite routers.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "moela/backend/cuda/tiles/routing.hpp"

using namespace moela::gpu::tiles;

namespace {
struct ref_result {
  std::vector<int> ids;
  std::vector<double> weights;
  double margin;  // gap between the k-th and (k+1)-th choice score (ties make ids ambiguous)
  double group_margin;
};

ref_result reference(const router_params& p, const std::vector<float>& logits, const std::vector<float>* bias) {
  const int E = p.experts;
  std::vector<double> s(E), c(E);
  if (p.scoring == score_func::sigmoid) {
    for (int e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-double(logits[e])));
  } else {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += s[e] = std::exp(logits[e] - mx);
    for (auto& v : s) v /= sum;
  }
  for (int e = 0; e < E; ++e) c[e] = s[e] + (bias ? double((*bias)[e]) : 0.0);
  double gmargin = INFINITY;
  if (p.groups > 1) {
    const int per = E / p.groups;
    std::vector<std::pair<double, int>> g;
    for (int j = 0; j < p.groups; ++j) {
      std::vector<double> v(c.begin() + j * per, c.begin() + (j + 1) * per);
      std::sort(v.rbegin(), v.rend());
      g.push_back({p.group_rule == group_score::top2_sum ? v[0] + v[1] : v[0], j});
    }
    std::sort(g.begin(), g.end(), [](auto a, auto b) { return a.first > b.first; });
    if (p.top_groups < p.groups) gmargin = g[p.top_groups - 1].first - g[p.top_groups].first;
    for (int j = p.top_groups; j < p.groups; ++j)
      for (int e = 0; e < per; ++e) c[g[j].second * per + e] = -INFINITY;
  }
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return c[a] > c[b]; });
  ref_result r;
  r.ids.assign(order.begin(), order.begin() + p.k);
  r.margin = p.k < E ? c[order[p.k - 1]] - c[order[p.k]] : INFINITY;
  r.group_margin = gmargin;
  double sum = 0;
  for (int id : r.ids) sum += s[id];
  for (int id : r.ids) r.weights.push_back((p.renormalize ? s[id] / sum : s[id]) * p.route_scale);
  return r;
}

void check_router(const router_params& p, bool with_bias, float bias_shift, int trials, unsigned seed) {
  REQUIRE(router_params_valid(p));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::uniform_real_distribution<float> ub(0.f, 0.25f);
  int checked = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<float> logits(p.experts), bias(p.experts);
    for (auto& v : logits) v = nd(rng);
    for (auto& v : bias) v = ub(rng) + bias_shift;
    const auto ref = reference(p, logits, with_bias ? &bias : nullptr);
    // fp32 scores differ from float64 by ~1e-7; skip draws whose decisions are that close.
    if (ref.margin < 1e-5 || ref.group_margin < 1e-5) continue;
    ++checked;
    std::vector<float> scratch(2 * p.experts), w(p.k);
    std::vector<int> ids(p.k);
    route_token(p, logits.data(), with_bias ? bias.data() : nullptr, scratch.data(), ids.data(), w.data());
    CHECK(ids == ref.ids);
    for (int j = 0; j < p.k; ++j) {
      // fp32 sigmoid/softmax (expf within 2 ulp, softmax sum of E terms) and renormalization:
      // relative 1e-5 is a comfortable bound for E <= 256.
      CHECK(std::fabs(w[j] - ref.weights[j]) <= 1e-5 * std::fabs(ref.weights[j]));
    }
  }
  CHECK(checked > trials / 2);
}
}  // namespace

TEST_CASE("cuda tiles: top-k insertion keeps the k best, ties toward the lower index") {
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> ui(0, 9);  // many ties on purpose
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + trial % 40, k = 1 + trial % 8;
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(ui(rng));
    float tv[router_max_k];
    int ti[router_max_k];
    int cnt = 0;
    for (int i = 0; i < n; ++i) cnt = topk_insert(tv, ti, cnt, k, v[i], i);
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
    REQUIRE(cnt == std::min(n, k));
    for (int j = 0; j < cnt; ++j) CHECK(ti[j] == order[j]);
  }
}

TEST_CASE("cuda tiles: V3 router (sigmoid, bias for selection only, top-2-sum groups)") {
  router_params p;  // 256 experts, k 8, 8 groups keep 4, sigmoid, renormalize, x2.5
  check_router(p, true, 0.f, 200, 21);
}

TEST_CASE("cuda tiles: V3 router with negative biased scores masks groups with -inf, not 0") {
  router_params p;
  p.experts = 16;
  p.k = 4;
  p.groups = 4;
  p.top_groups = 2;
  check_router(p, true, -2.f, 300, 22);  // every choice score is negative
  // Every selected expert lies in a kept group: two experts per kept group at most 2 groups.
  std::vector<float> logits(16, 0.f), bias(16, -3.f), scratch(32), w(4);
  std::vector<int> ids(4);
  for (int e = 0; e < 4; ++e) bias[e] = -1.f;      // group 0 best
  for (int e = 4; e < 8; ++e) bias[e] = -1.5f;     // group 1 second
  route_token(p, logits.data(), bias.data(), scratch.data(), ids.data(), w.data());
  for (int id : ids) CHECK(id < 8);
}

TEST_CASE("cuda tiles: V2 router (softmax over all experts, max-score groups, no renormalization)") {
  router_params p;
  p.experts = 160;
  p.k = 6;
  p.groups = 8;
  p.top_groups = 3;
  p.scoring = score_func::softmax;
  p.renormalize = false;
  p.route_scale = 16.f;
  p.group_rule = group_score::max;
  check_router(p, false, 0.f, 200, 23);
  p.group_rule = group_score::top2_sum;  // the rule is independent of the bias
  check_router(p, false, 0.f, 200, 25);
}

TEST_CASE("cuda tiles: V2-Lite router (softmax, one group)") {
  router_params p;
  p.experts = 64;
  p.k = 6;
  p.groups = 1;
  p.top_groups = 1;
  p.scoring = score_func::softmax;
  p.renormalize = false;
  p.route_scale = 1.f;
  check_router(p, false, 0.f, 200, 24);
  p.experts = 600;
  CHECK_FALSE(router_params_valid(p));
}
