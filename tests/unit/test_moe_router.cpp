// Router tests: every policy combination against a float64 reference written here, routing
// invariants, ties, edge cases and configuration errors.
#include <doctest/doctest.h>

#include <moela/io/config.hpp>
#include <moela/model/parts.hpp>  // to_moe_config: io::model_config -> moe_config
#include <moela/moe.hpp>

#include "moe_reference.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "support/random.hpp"

using namespace moela;
using namespace moela::moe;
using moe_ref::ref_result;
using moe_ref::reference_route;

namespace {

using moela_test::random_matrix;

moe_config make_config(index_t E, index_t K, index_t G, index_t TG, score_fn s, topk_rule m, bool norm, float scale) {
  moe_config c;
  c.hidden_size = 32;
  c.n_routed_experts = E;
  c.num_experts_per_tok = K;
  c.n_group = G;
  c.topk_group = TG;
  c.scoring_func = s;
  c.topk_method = m;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = scale;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 16;
  return c;
}

// Checks `r` (library) against the float64 reference for every token of `logits`, whose rows
// are exactly representable in float. Returns the number of tokens whose decisive margin was
// too small to demand identical selections (their weights are still checked when ids agree).
int check_against_reference(const moe_config& c, const tensor<float, 2>& logits, const std::vector<double>& bias,
                            const routing& r) {
  const index_t T = logits.extent(0), E = c.n_routed_experts, K = c.num_experts_per_tok;
  REQUIRE(r.tokens() == T);
  REQUIRE(r.k() == K);
  int near_ties = 0;
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    std::vector<double> l(E);
    for (index_t e = 0; e < E; ++e) l[e] = logits(t, e);
    const ref_result ref = reference_route(c, l, bias);
    // FP32 scores differ from float64 by a few ulp (|s| <= 1, so <= 1e-6 absolute): a
    // decision whose margin exceeds 1e-5 must come out the same.
    for (index_t e = 0; e < E; ++e) CHECK(std::abs(r.scores(t, e) - ref.scores[e]) <= 1e-6);
    if (ref.margin <= 1e-5) {
      ++near_ties;
      continue;
    }
    for (index_t i = 0; i < K; ++i) {
      CAPTURE(i);
      CHECK(r.topk_idx(t, i) == ref.idx[i]);  // same order too: descending choice score
      // weights: FP32 scores (<= 1e-6 abs), one division and one scaling (a few ulp), times
      // the scale factor (<= 16 here): 2e-5 relative to max(1, |w|) is generous and still
      // far below any routing mistake (a wrong expert or a missing normalisation is >= 1e-2).
      CHECK(std::abs(r.topk_weight(t, i) - ref.weight[i]) <= 2e-5 * std::max(1.0, std::abs(ref.weight[i])));
    }
  }
  return near_ties;
}

template <class Router>
void run_variant(const moe_config& c, std::uint32_t seed, float logit_sd = 2.0f) {
  std::mt19937 rng(seed);
  const index_t T = 37, E = c.n_routed_experts;
  tensor<float, 1> bias;
  std::vector<double> bias_d;
  if (c.has_bias()) {
    bias = tensor<float, 1>({E});
    std::uniform_real_distribution<float> ud(0.f, 0.25f);
    for (auto& v : bias.flat()) {
      v = ud(rng);
      bias_d.push_back(v);
    }
  }
  Router router(c, random_matrix(rng, E, c.hidden_size, 0.3f), bias);
  const tensor<float, 2> logits = random_matrix(rng, T, E, logit_sd);
  routing r;
  router.select(logits.cview(), r);
  const int near = check_against_reference(c, logits, bias_d, r);
  CHECK(near <= T / 4);  // random data: near-ties are rare; most tokens are checked exactly

  // route(x) = select(x · Wᵀ): compare with the logits computed in float64 from x and W.
  const tensor<float, 2> x = random_matrix(rng, T, c.hidden_size, 1.0f);
  router.route(x.cview(), r);
  const tensor<float, 2> W = router.gate_weight().dequantize();
  tensor<float, 2> lx({T, E});
  for (index_t t = 0; t < T; ++t)
    for (index_t e = 0; e < E; ++e) {
      double acc = 0;
      for (index_t d = 0; d < c.hidden_size; ++d) acc += double(x(t, d)) * double(W(e, d));
      lx(t, e) = float(acc);  // FP32 GEMM vs float64: |err| <= 32 * 2^-24 * Σ|x·w| << 1e-5 margin bound
    }
  const int near2 = check_against_reference(c, lx, bias_d, r);
  CHECK(near2 <= T / 4);
}

}  // namespace

TEST_CASE("router: every policy combination matches the float64 reference") {
  SUBCASE("V2-Lite: softmax, greedy, no normalisation") {
    run_variant<v2_lite_router>(make_config(64, 6, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f), 1);
    run_variant<config_router>(make_config(64, 6, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f), 2);
  }
  SUBCASE("V2: softmax, group max, x16") {
    run_variant<v2_router>(make_config(160, 6, 8, 3, score_fn::softmax, topk_rule::group_limited_greedy, false, 16.0f), 3);
    run_variant<config_router>(make_config(160, 6, 8, 3, score_fn::softmax, topk_rule::group_limited_greedy, false, 16.0f), 4);
  }
  SUBCASE("V3: sigmoid, bias, group top-2 sum, normalised, x2.5") {
    run_variant<v3_router>(make_config(256, 8, 8, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 5);
    run_variant<config_router>(make_config(256, 8, 8, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 6);
    run_variant<config_router>(make_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 7);
  }
  SUBCASE("mixed policies") {
    run_variant<config_router>(make_config(32, 4, 1, 1, score_fn::sigmoid, topk_rule::greedy, true, 1.0f), 8);
    run_variant<config_router>(make_config(32, 4, 4, 2, score_fn::softmax, topk_rule::noaux_tc, true, 1.5f), 9);
    run_variant<config_router>(make_config(32, 4, 4, 2, score_fn::sigmoid, topk_rule::group_limited_greedy, false, 1.0f), 10);
    run_variant<config_router>(make_config(30, 3, 3, 1, score_fn::softmax, topk_rule::group_limited_greedy, true, 1.0f), 11);
  }
  SUBCASE("n_group = 1 with a grouped method") {
    run_variant<config_router>(make_config(16, 4, 1, 1, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 12);
    run_variant<v3_router>(make_config(16, 4, 1, 1, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 13);
  }
  SUBCASE("topk_group = n_group (the group step keeps everything)") {
    run_variant<config_router>(make_config(16, 4, 4, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f), 14);
    run_variant<v2_router>(make_config(16, 4, 4, 4, score_fn::softmax, topk_rule::group_limited_greedy, false, 1.0f), 15);
  }
  SUBCASE("top-k = number of experts") {
    run_variant<config_router>(make_config(8, 8, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f), 16);
    run_variant<config_router>(make_config(8, 8, 4, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.0f), 17);
  }
  SUBCASE("top-k = everything the groups allow") {
    run_variant<config_router>(make_config(16, 8, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 1.0f), 18);
  }
}

namespace {

// Routes one token of hand-built logits (the gate weight is unused: select() takes logits).
template <class Router>
routing route_row(const moe_config& c, std::span<const float> l, std::span<const float> b) {
  tensor<float, 2> logits({1, c.n_routed_experts});
  for (index_t e = 0; e < c.n_routed_experts; ++e) logits(0, e) = l[static_cast<std::size_t>(e)];
  tensor<float, 1> bias;
  if (!b.empty()) {
    bias = tensor<float, 1>({c.n_routed_experts});
    for (index_t e = 0; e < c.n_routed_experts; ++e) bias(e) = b[static_cast<std::size_t>(e)];
  }
  Router router(c, tensor<float, 2>({c.n_routed_experts, c.hidden_size}), bias);
  routing r;
  router.select(logits.cview(), r);
  return r;
}

// float64 affinities of one row of FP32 logits (spec §6.2 step 2).
std::vector<double> scores_f64(const moe_config& c, std::span<const float> l) {
  std::vector<double> s(l.size());
  if (c.scoring_func == score_fn::sigmoid) {
    for (std::size_t e = 0; e < l.size(); ++e) s[e] = 1.0 / (1.0 + std::exp(-double(l[e])));
  } else {
    double z = 0;
    for (std::size_t e = 0; e < l.size(); ++e) z += std::exp(double(l[e]));
    for (std::size_t e = 0; e < l.size(); ++e) s[e] = std::exp(double(l[e])) / z;
  }
  return s;
}

// Token 0 of `r` selects exactly `ids` (in this order) with the float64 weights of §6.2 steps
// 6-8. FP32 scoring (a few ulp of each s), one sum of K <= 3 terms, one division and one
// scaling: ~5e-7 relative in all; epsilon 1e-6 (relative to 1 + |w|) keeps a margin and is far
// below any normalisation or scaling mistake; the ids are compared exactly.
void check_route(const moe_config& c, const routing& r, const std::vector<int>& ids, const std::vector<double>& s) {
  REQUIRE(r.tokens() == 1);
  REQUIRE(r.k() == index_t(ids.size()));
  double sum = 0;
  for (int e : ids) sum += s[static_cast<std::size_t>(e)];
  for (std::size_t i = 0; i < ids.size(); ++i) {
    CAPTURE(i);
    CHECK(r.topk_idx(0, index_t(i)) == ids[i]);
    const double w = s[static_cast<std::size_t>(ids[i])] / (c.norm_topk_prob ? sum : 1.0) * c.routed_scaling_factor;
    CHECK(r.topk_weight(0, index_t(i)) == doctest::Approx(w).epsilon(1e-6));
  }
}

std::vector<double> widen(std::span<const float> v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("router: dropped groups are -inf, not 0, when the kept choice scores are negative") {
  // Spec §6.2 step 4 and §12 item 15: the experts of the dropped groups must become -inf.
  // DeepSeek's remote code and transformers have filled them with 0 (masked_fill(..., 0.0)),
  // which is harmless while every kept choice score is positive and wrong as soon as one is
  // not. Each case below is built so that a 0-fill picks a dropped expert (checked by running
  // these cases against a copy of router.hpp with the fill set to 0: every subcase fails).
  // E = 12 in 4 groups of 3.
  SUBCASE("sigmoid, noaux_tc (V3 rule), every bias <= -0.1") {
    const moe_config c = make_config(12, 3, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f);
    const float l[12] = {0, 0, 0, 0.4f, -0.4f, 0.2f, 0, 0, 0, 0.1f, -0.2f, 0.3f};
    const float b[12] = {-0.55f, -1.4f, -1.4f, -0.7f, -0.6f, -0.8f, -2, -2, -2, -0.75f, -0.6f, -0.9f};
    // c = sigmoid(l) + b, negative everywhere:
    //   group 0: -0.050 -0.900 -0.900   top-2 sum -0.950   dropped
    //   group 1: -0.101 -0.199 -0.250             -0.300   kept
    //   group 2: -1.500 -1.500 -1.500             -3.000   dropped
    //   group 3: -0.225 -0.150 -0.326             -0.375   kept
    // Correct: experts 3, 10, 4 (descending c; the next, expert 9, is 0.026 lower). A 0-fill
    // lifts groups 0 and 2 to c = 0, above every kept score, and routes to experts 0, 1, 2
    // (ties to the lower index); skipping the group limit would take expert 0 (c = -0.05) first.
    const std::vector<int> expect = {3, 10, 4};
    CHECK(reference_route(c, widen(l), widen(b)).idx == expect);  // the float64 reference agrees
    const auto s = scores_f64(c, l);
    check_route(c, route_row<v3_router>(c, l, b), expect, s);
    check_route(c, route_row<config_router>(c, l, b), expect, s);
  }
  SUBCASE("softmax scores with the noaux_tc rule, every bias <= -0.15") {
    const moe_config c = make_config(12, 3, 4, 2, score_fn::softmax, topk_rule::noaux_tc, true, 1.5f);
    const float l[12] = {0, 0, 0, 0.4f, -0.4f, 0.2f, 0, 0, 0, 0.1f, -0.2f, 0.3f};
    const float b[12] = {-0.15f, -0.9f, -0.9f, -0.2f, -0.3f, -0.4f, -1, -1, -1, -0.25f, -0.22f, -0.5f};
    // s = softmax(l) (0.053 .. 0.118), c = s + b:
    //   group 0: -0.071 -0.821 -0.821   top-2 sum -0.892   dropped
    //   group 1: -0.082 -0.247 -0.304             -0.329   kept
    //   group 2: -0.921 -0.921 -0.921             -1.842   dropped
    //   group 3: -0.163 -0.155 -0.393             -0.318   kept
    // Correct: experts 3, 10, 9 (next: expert 4, 0.084 lower). A 0-fill routes to 0, 1, 2; no
    // group limit would take expert 0 first.
    const std::vector<int> expect = {3, 10, 9};
    CHECK(reference_route(c, widen(l), widen(b)).idx == expect);
    check_route(c, route_row<config_router>(c, l, b), expect, scores_f64(c, l));
  }
  SUBCASE("softmax, group_limited_greedy (V2 rule): scores that underflow to 0") {
    // Without a bias, softmax scores are positive, so a 0-fill stays below every kept expert in
    // exact arithmetic. It still matters in FP32 once a kept expert's score underflows to exactly
    // 0 (a logit gap above ~104): the fill then ties with it and the lower-index rule hands the
    // slot to a dropped expert. Keep 1 group, K = 2: group 1 holds the only non-zero FP32 score
    // (expert 3, s = 1); experts 4 and 5 underflow (float64: e^-150 and e^-200, so 4 ranks first).
    // Correct: experts 3, 4. A 0-fill (and no group limit) gives 3, 0.
    const moe_config c = make_config(12, 2, 4, 1, score_fn::softmax, topk_rule::group_limited_greedy, false, 16.0f);
    float l[12];
    std::fill(std::begin(l), std::end(l), -200.0f);
    l[3] = 0.0f;
    l[4] = -150.0f;
    const std::vector<int> expect = {3, 4};
    CHECK(reference_route(c, widen(l), {}).idx == expect);
    const auto s = scores_f64(c, l);  // s[3] = 1 - 1e-65, s[4] = 7e-66: FP32 gives 16 and 0
    check_route(c, route_row<v2_router>(c, l, {}), expect, s);
    check_route(c, route_row<config_router>(c, l, {}), expect, s);
  }
}

TEST_CASE("router: top-k = 1 with norm_topk_prob normalises, so the weight is routed_scaling_factor") {
  // Two conventions exist for K = 1. Hugging Face transformers' DeepseekV3 router normalises
  // whenever norm_topk_prob is set (`if self.norm_topk_prob:`), so w = s / (s + 1e-20) * scale
  // = scale. DeepSeek's remote code (modeling_deepseek.py of the V2 / V3 hub repositories,
  // MoEGate.forward) normalises only `if self.top_k > 1 and self.norm_topk_prob:`, giving
  // w = s * scale. The library follows transformers (spec §6.2 step 7, "if norm_topk_prob
  // (HF)"); no released DeepSeek config has K = 1, so both agree on every released model. This
  // test pins the choice: moving to the remote-code convention must be a deliberate change.
  struct variant { score_fn sf; topk_rule m; index_t G, TG; float scale; };
  for (const variant v : {variant{score_fn::sigmoid, topk_rule::noaux_tc, 4, 2, 2.5f},
                          variant{score_fn::softmax, topk_rule::greedy, 1, 1, 1.0f},
                          variant{score_fn::softmax, topk_rule::group_limited_greedy, 4, 2, 16.0f}}) {
    CAPTURE(to_string(v.sf));
    CAPTURE(to_string(v.m));
    for (const bool norm : {true, false}) {
      CAPTURE(norm);
      const moe_config c = make_config(16, 1, v.G, v.TG, v.sf, v.m, norm, v.scale);
      std::mt19937 rng(21);
      tensor<float, 1> bias;
      std::vector<double> bias_d;
      if (c.has_bias()) {
        bias = tensor<float, 1>({16});
        std::uniform_real_distribution<float> ud(-0.5f, 0.5f);
        for (auto& b : bias.flat()) bias_d.push_back(b = ud(rng));
      }
      config_router router(c, tensor<float, 2>({16, c.hidden_size}), bias);
      const tensor<float, 2> logits = random_matrix(rng, 40, 16, 2.0f);
      routing r;
      router.select(logits.cview(), r);
      for (index_t t = 0; t < 40; ++t) {
        CAPTURE(t);
        std::vector<double> l(16);
        for (index_t e = 0; e < 16; ++e) l[static_cast<std::size_t>(e)] = logits(t, e);
        const ref_result ref = reference_route(c, l, bias_d);
        if (ref.margin > 1e-5) CHECK(r.topk_idx(t, 0) == ref.idx[0]);  // see check_against_reference
        if (norm) {
          // s + 1e-20 rounds to s in FP32 (any s above ~1e-12 has an ulp >> 1e-20), s / s is
          // exactly 1 and 1 * scale is exact: the weight is bit-equal to the factor.
          CHECK(r.topk_weight(t, 0) == v.scale);
        } else {
          // The remote code's K = 1 value, s * scale: one FP32 rounding on the FP32 score.
          CHECK(r.topk_weight(t, 0) == doctest::Approx(r.scores(t, r.topk_idx(t, 0)) * v.scale).epsilon(1e-6));
          CHECK(r.topk_weight(t, 0) < v.scale);  // s < 1: the two conventions really differ
        }
      }
    }
  }
}

TEST_CASE("router: invariants of grouped biased routing") {
  const moe_config c = make_config(64, 6, 8, 3, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f);
  std::mt19937 rng(99);
  tensor<float, 1> bias({64});
  std::uniform_real_distribution<float> ud(-0.5f, 0.5f);
  for (auto& v : bias.flat()) v = ud(rng);
  config_router router(c, random_matrix(rng, 64, c.hidden_size, 0.3f), bias);
  const tensor<float, 2> logits = random_matrix(rng, 200, 64, 2.0f);
  routing r;
  router.select(logits.cview(), r);
  for (index_t t = 0; t < 200; ++t) {
    std::set<int> ids, groups;
    double wsum = 0;
    for (index_t i = 0; i < 6; ++i) {
      const int e = r.topk_idx(t, i);
      ids.insert(e);
      groups.insert(e / 8);
      // weights come from the unbiased score: w = s / Σ s · 2.5
      wsum += r.scores(t, e);
      if (i > 0)  // descending choice score (score + bias)
        CHECK(r.scores(t, r.topk_idx(t, i - 1)) + bias(r.topk_idx(t, i - 1)) >= r.scores(t, e) + bias(e));
    }
    CHECK(ids.size() == 6);
    CHECK(groups.size() <= 3);
    for (index_t i = 0; i < 6; ++i)  // FP32 division and scaling: a few ulp of 2.5
      CHECK(std::abs(r.topk_weight(t, i) - r.scores(t, r.topk_idx(t, i)) / wsum * 2.5) <= 2e-6);
  }
}

TEST_CASE("router: ties go to the lower index") {
  SUBCASE("equal scores") {
    const moe_config c = make_config(16, 4, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f);
    config_router router(c, tensor<float, 2>({16, c.hidden_size}));
    tensor<float, 2> logits({2, 16});  // row 0 all equal; row 1: experts 5, 9, 12 tied highest
    for (index_t e : {5, 9, 12}) logits(1, e) = 1.0f;
    routing r;
    router.select(logits.cview(), r);
    for (index_t i = 0; i < 4; ++i) CHECK(r.topk_idx(0, i) == i);
    CHECK(r.topk_idx(1, 0) == 5);
    CHECK(r.topk_idx(1, 1) == 9);
    CHECK(r.topk_idx(1, 2) == 12);
    CHECK(r.topk_idx(1, 3) == 0);
    CHECK(r.topk_weight(0, 0) == doctest::Approx(1.0 / 16));
  }
  SUBCASE("equal group scores keep the lower groups") {
    const moe_config c = make_config(16, 2, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 1.0f);
    config_router router(c, tensor<float, 2>({16, c.hidden_size}), tensor<float, 1>({16}));
    tensor<float, 2> logits({1, 16});  // all groups tie: groups 0 and 1 are kept, experts 0 and 1 chosen
    routing r;
    router.select(logits.cview(), r);
    CHECK(r.topk_idx(0, 0) == 0);
    CHECK(r.topk_idx(0, 1) == 1);
    CHECK(r.topk_weight(0, 0) == doctest::Approx(0.5));
  }
  SUBCASE("NaN logits rank last") {
    const moe_config c = make_config(8, 2, 1, 1, score_fn::sigmoid, topk_rule::greedy, false, 1.0f);
    config_router router(c, tensor<float, 2>({8, c.hidden_size}));
    tensor<float, 2> logits({1, 8});
    logits(0, 0) = std::nanf("");
    logits(0, 3) = -1.0f;
    routing r;
    router.select(logits.cview(), r);
    CHECK(r.topk_idx(0, 0) == 1);
    CHECK(r.topk_idx(0, 1) == 2);
  }
}

TEST_CASE("router: the bias selects but does not weight") {
  const moe_config c = make_config(8, 2, 1, 1, score_fn::sigmoid, topk_rule::noaux_tc, false, 1.0f);
  tensor<float, 1> bias({8});
  bias(6) = 10.0f;  // expert 6 is always selected, with its unbiased score as weight
  config_router router(c, tensor<float, 2>({8, c.hidden_size}), bias);
  tensor<float, 2> logits({1, 8});
  logits(0, 2) = 3.0f;
  logits(0, 6) = -2.0f;
  routing r;
  router.select(logits.cview(), r);
  CHECK(r.topk_idx(0, 0) == 6);
  CHECK(r.topk_idx(0, 1) == 2);
  CHECK(r.topk_weight(0, 0) == doctest::Approx(1.0 / (1.0 + std::exp(2.0))).epsilon(1e-6));
  CHECK(r.topk_weight(0, 1) == doctest::Approx(1.0 / (1.0 + std::exp(-3.0))).epsilon(1e-6));
}

TEST_CASE("router: T = 0") {
  const moe_config c = make_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f);
  config_router router(c, tensor<float, 2>({16, c.hidden_size}), tensor<float, 1>({16}));
  tensor<float, 2> x({0, c.hidden_size});
  routing r;
  router.route(x.cview(), r);
  CHECK(r.tokens() == 0);
  CHECK(r.k() == 4);
}

namespace {
std::string error_of(const moe_config& c) {
  try {
    c.validate();
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("moe_config: bad configurations give errors naming the field") {
  const moe_config ok = make_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f);
  CHECK(error_of(ok).empty());
  auto with = [&](auto f) {
    moe_config c = ok;
    f(c);
    return error_of(c);
  };
  CHECK(with([](moe_config& c) { c.n_group = 3; }).find("n_group (3) does not divide n_routed_experts (16)") !=
        std::string::npos);
  CHECK(with([](moe_config& c) { c.num_experts_per_tok = 9; }).find("num_experts_per_tok (9) is larger than the 8 experts") !=
        std::string::npos);
  CHECK(with([](moe_config& c) { c.topk_group = 5; }).find("topk_group") != std::string::npos);
  CHECK(with([](moe_config& c) { c.num_experts_per_tok = 17; }).find("num_experts_per_tok") != std::string::npos);
  CHECK(with([](moe_config& c) { c.num_experts_per_tok = 0; }).find("num_experts_per_tok") != std::string::npos);
  CHECK(with([](moe_config& c) { c.n_routed_experts = 0; }).find("n_routed_experts") != std::string::npos);
  CHECK(with([](moe_config& c) { c.hidden_size = 0; }).find("hidden_size") != std::string::npos);
  CHECK(with([](moe_config& c) { c.moe_intermediate_size = -1; }).find("moe_intermediate_size") != std::string::npos);
  CHECK(with([](moe_config& c) { c.routed_scaling_factor = 0; }).find("routed_scaling_factor") != std::string::npos);
  CHECK(with([](moe_config& c) { c.n_group = 16; c.topk_group = 16; }).find("noaux_tc") != std::string::npos);
  // greedy ignores the groups (HF behaviour), so these are fine
  CHECK(with([](moe_config& c) { c.topk_method = topk_rule::greedy; c.n_group = 3; c.num_experts_per_tok = 12; }).empty());
}

TEST_CASE("moe_config: from_hf_json") {
  SUBCASE("V2-Lite and V3 fields") {
    const auto v2 = moe_config::from_hf_json(nlohmann::json::parse(R"({"hidden_size": 2048, "n_routed_experts": 64,
      "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1, "topk_method": "greedy", "scoring_func": "softmax",
      "norm_topk_prob": false, "routed_scaling_factor": 1.0, "n_shared_experts": 2, "moe_intermediate_size": 1408})"));
    CHECK(v2.n_routed_experts == 64);
    CHECK(v2.shared_intermediate_size() == 2816);
    CHECK(v2.scoring_func == score_fn::softmax);
    CHECK(!v2.has_bias());
    const auto v3 = moe_config::from_hf_json(nlohmann::json::parse(R"({"hidden_size": 7168, "n_routed_experts": 256,
      "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
      "norm_topk_prob": true, "routed_scaling_factor": 2.5, "n_shared_experts": 1, "moe_intermediate_size": 2048})"));
    CHECK(v3.has_bias());
    CHECK(v3.group_limited());
    CHECK(v3.routed_scaling_factor == 2.5f);
    CHECK(v3.allowed_experts() == 128);
  }
  SUBCASE("errors name the field") {
    auto err = [](const char* text) -> std::string {
      try {
        (void)moe_config::from_hf_json(nlohmann::json::parse(text));
      } catch (const moela::error& e) {
        return e.what();
      }
      return "";
    };
    CHECK(err(R"({"hidden_size": 8, "n_routed_experts": 4, "moe_intermediate_size": 4})").find("num_experts_per_tok") !=
          std::string::npos);
    CHECK(err(R"({"hidden_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
      "scoring_func": "relu"})").find("scoring_func") != std::string::npos);
    CHECK(err(R"({"hidden_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
      "topk_method": "noaux"})").find("topk_method") != std::string::npos);
    CHECK(err(R"({"hidden_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
      "topk_method": "noaux_tc", "n_group": 3, "topk_group": 1})").find("n_group (3) does not divide") != std::string::npos);
    CHECK(err(R"({"hidden_size": 8, "n_routed_experts": 4.5, "num_experts_per_tok": 2, "moe_intermediate_size": 4})")
              .find("n_routed_experts") != std::string::npos);
  }
}

namespace {
// Every field of two MoE configs, one CHECK each (so a failure names the field).
void check_same(const moe_config& a, const moe_config& b) {
  CHECK(a.hidden_size == b.hidden_size);
  CHECK(a.n_routed_experts == b.n_routed_experts);
  CHECK(a.num_experts_per_tok == b.num_experts_per_tok);
  CHECK(a.n_group == b.n_group);
  CHECK(a.topk_group == b.topk_group);
  CHECK(a.scoring_func == b.scoring_func);
  CHECK(a.topk_method == b.topk_method);
  CHECK(a.norm_topk_prob == b.norm_topk_prob);
  CHECK(a.routed_scaling_factor == b.routed_scaling_factor);
  CHECK(a.n_shared_experts == b.n_shared_experts);
  CHECK(a.moe_intermediate_size == b.moe_intermediate_size);
}
// from_hf_json(text), checked field by field against the full reader: to_moe_config(parse_config(text)).
moe_config read_both(const std::string& text) {
  CAPTURE(text);
  const moe_config direct = moe_config::from_hf_json(nlohmann::json::parse(text));
  check_same(direct, to_moe_config(io::parse_config(text)));
  return direct;
}
std::string hf_json_error(const std::string& text) {
  try {
    (void)moe_config::from_hf_json(nlohmann::json::parse(text));
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("moe_config: from_hf_json takes io::parse_config's defaults, per model_type") {
  SUBCASE("deepseek_v3 without the routing fields: the V3 defaults") {
    const auto c = read_both(R"({"model_type": "deepseek_v3", "hidden_size": 256, "n_routed_experts": 16,
      "num_experts_per_tok": 4, "moe_intermediate_size": 64})");
    CHECK(c.scoring_func == score_fn::sigmoid);
    CHECK(c.topk_method == topk_rule::noaux_tc);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 2.5f);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 4);
    CHECK(c.n_shared_experts == 1);
    CHECK(c.has_bias());
  }
  SUBCASE("deepseek_v3 with nothing but model_type: V3's sizes too") {
    const auto c = read_both(R"({"model_type": "deepseek_v3"})");
    CHECK(c.hidden_size == 7168);
    CHECK(c.n_routed_experts == 256);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(c.moe_intermediate_size == 2048);
    CHECK(c.allowed_experts() == 128);
  }
  SUBCASE("null is absent") {
    const auto c = read_both(R"({"model_type": "deepseek_v3", "hidden_size": 256, "n_routed_experts": 16,
      "num_experts_per_tok": 4, "moe_intermediate_size": 64, "scoring_func": null, "topk_method": null,
      "norm_topk_prob": null, "routed_scaling_factor": null, "n_group": null, "topk_group": null,
      "n_shared_experts": null})");
    CHECK(c.topk_method == topk_rule::noaux_tc);
    CHECK(c.n_group == 8);
  }
  SUBCASE("deepseek_v2 without the routing fields: the V2 defaults") {
    const auto c = read_both(R"({"model_type": "deepseek_v2", "hidden_size": 2048, "num_experts_per_tok": 6,
      "moe_intermediate_size": 1408})");
    CHECK(c.n_routed_experts == 64);
    CHECK(c.scoring_func == score_fn::softmax);
    CHECK(c.topk_method == topk_rule::greedy);
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 1.0f);
    CHECK(c.n_group == 1);
    CHECK(c.topk_group == 1);
    CHECK(c.n_shared_experts == 2);
  }
  SUBCASE("\"gready\", DeepSeek's remote-code spelling, is greedy; greedy ignores the groups") {
    const auto c = read_both(R"({"model_type": "deepseek_v2", "hidden_size": 64, "n_routed_experts": 64,
      "num_experts_per_tok": 12, "moe_intermediate_size": 32, "topk_method": "gready", "n_group": 8,
      "topk_group": 1})");
    CHECK(c.topk_method == topk_rule::greedy);
    CHECK_FALSE(c.group_limited());
    CHECK(c.allowed_experts() == 64);
    CHECK(moe_config::from_hf_json(nlohmann::json::parse(R"({"hidden_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 4, "topk_method": "gready"})")).topk_method ==
          topk_rule::greedy);
  }
  SUBCASE("explicit values win over the defaults; integral floats are integers") {
    const auto c = read_both(R"({"model_type": "deepseek_v3", "hidden_size": 256.0, "n_routed_experts": 16,
      "num_experts_per_tok": 4, "moe_intermediate_size": 64, "scoring_func": "softmax", "topk_method":
      "group_limited_greedy", "norm_topk_prob": false, "routed_scaling_factor": 16.0, "n_group": 4,
      "topk_group": 2, "n_shared_experts": 2})");
    CHECK(c.hidden_size == 256);
    CHECK(c.topk_method == topk_rule::group_limited_greedy);
    CHECK(c.routed_scaling_factor == 16.0f);
  }
  SUBCASE("the shipped tiny-v3 checkpoint config") {
    std::ifstream in(std::string(MOELA_TEST_DATA_DIR) + "/golden/tiny-v3/bf16/config.json");
    REQUIRE(in);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto c = read_both(text);
    CHECK(c.n_group == 4);
    CHECK(c.topk_group == 2);
  }
  SUBCASE("without model_type: sizes required, V2 routing, no shared experts") {
    const auto c = moe_config::from_hf_json(nlohmann::json::parse(R"({"hidden_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 4})"));
    CHECK(c.scoring_func == score_fn::softmax);
    CHECK(c.topk_method == topk_rule::greedy);
    CHECK(c.n_shared_experts == 0);
    CHECK(hf_json_error(R"({"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4})")
              .find("'hidden_size'") != std::string::npos);
  }
  SUBCASE("errors") {
    CHECK(hf_json_error(R"({"model_type": "llama", "hidden_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 4})").find("'model_type' is 'llama'") != std::string::npos);
    CHECK(hf_json_error(R"({"model_type": "deepseek_v2", "n_routed_experts": null})").find("'n_routed_experts'") !=
          std::string::npos);
    // V2 has no default K, in either reader.
    CHECK(hf_json_error(R"({"model_type": "deepseek_v2"})").find("'num_experts_per_tok'") != std::string::npos);
    CHECK_THROWS_WITH_AS((void)io::parse_config(R"({"model_type": "deepseek_v2"})"),
                         doctest::Contains("num_experts_per_tok"), moela::error);
    CHECK(hf_json_error(R"({"model_type": "deepseek_v3", "topk_method": 3})").find("'topk_method'") !=
          std::string::npos);
    // A model_config made by hand with a spelling config.json cannot hold: an error, not greedy.
    auto mc = io::parse_config(R"({"model_type": "deepseek_v3"})");
    mc.topk_method = "top_k";
    CHECK_THROWS_WITH_AS((void)to_moe_config(mc), doctest::Contains("to_moe_config: topk_method 'top_k'"), moela::error);
    mc.topk_method = "gready";
    CHECK(to_moe_config(mc).topk_method == topk_rule::greedy);
    mc.scoring_func = "relu";
    CHECK_THROWS_WITH_AS((void)to_moe_config(mc), doctest::Contains("to_moe_config: scoring_func 'relu'"), moela::error);
  }
}

TEST_CASE("router: construction errors") {
  const moe_config v3 = make_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f);
  const moe_config v2 = make_config(16, 4, 4, 2, score_fn::softmax, topk_rule::group_limited_greedy, false, 1.0f);
  CHECK_THROWS_WITH_AS(config_router(v3, tensor<float, 2>({16, 32})), doctest::Contains("e_score_correction_bias"),
                       moela::error);
  CHECK_THROWS_WITH_AS(config_router(v2, tensor<float, 2>({16, 32}), tensor<float, 1>({16})),
                       doctest::Contains("only noaux_tc"), moela::error);
  CHECK_THROWS_WITH_AS(config_router(v2, tensor<float, 2>({15, 32})), doctest::Contains("gate weight is [15, 32]"),
                       moela::error);
  CHECK_THROWS_WITH_AS(v3_router(v2, tensor<float, 2>({16, 32})), doctest::Contains("scoring_func is softmax"),
                       moela::error);
  CHECK_THROWS_WITH_AS(v2_lite_router(v2, tensor<float, 2>({16, 32})), doctest::Contains("no_group_limit"),
                       moela::error);
  config_router r(v2, tensor<float, 2>({16, 32}));
  routing out;
  CHECK_THROWS_WITH_AS(r.route(tensor<float, 2>({2, 31}).cview(), out), doctest::Contains("hidden_size is 32"),
                       moela::error);
  CHECK_THROWS_WITH_AS(r.select(tensor<float, 2>({2, 15}).cview(), out), doctest::Contains("16 experts"), moela::error);
}
