// Router tests: every policy combination against a float64 reference written here, routing
// invariants, ties, edge cases and configuration errors.
#include <doctest/doctest.h>

#include <moela/moe.hpp>

#include "moe_reference.hpp"

#include <algorithm>
#include <cmath>
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
