// Greedy decoding of the shipped tiny-fortunes model (BF16 weights used as stored, FP32
// compute, FP32 cache) reproduces the float64 reference's greedy texts from
// examples/models/tiny-fortunes/expected_samples.json, step by step while the reference's
// top-1/top-2 logit margin is above what FP32 arithmetic can move.
#include <doctest/doctest.h>

#include <moela/model.hpp>

#include <fstream>

#include <nlohmann/json.hpp>

using namespace moela;

TEST_CASE("tiny-fortunes: FP32 greedy decoding matches the reference texts") {
  const std::string dir = MOELA_SOURCE_DIR "/examples/models/tiny-fortunes";
  std::ifstream in(dir + "/expected_samples.json");
  REQUIRE(in);
  const auto j = nlohmann::json::parse(in);
  using M = deepseek_model<quant::bf16, attn::cache_f32>;
  auto m = load_model<M>(dir);
  auto cache = make_cache(m, 256);
  // The golden checks measure moela's FP32 logits within ~6e-7 x max|logit| of float64 (about
  // 1e-5 here, logits stay below ~20). A step is compared only while the reference margin is
  // above 2e-4, 20x that error; every margin in the file is above it (smallest 9.6e-4), so all
  // 200 steps of every prompt are checked.
  constexpr double guard = 2e-4;
  for (const auto& g : j.at("greedy")) {
    const std::string prompt = g.at("prompt");
    CAPTURE(prompt);
    const auto want = g.at("ids").get<std::vector<int>>();
    const auto margins = g.at("top1_top2_logit_margins").get<std::vector<double>>();
    std::size_t safe = 0;
    while (safe < margins.size() && margins[safe] > guard) ++safe;
    std::vector<int> ids = {256};
    for (unsigned char c : prompt) ids.push_back(c);
    generate_options o;
    o.max_new_tokens = static_cast<index_t>(want.size());
    o.stop_tokens = {257};
    sampler greedy;
    const auto r = generate(m, cache, ids, o, greedy);
    REQUIRE(r.tokens[0].size() >= safe);
    CHECK(safe == want.size());
    CHECK(std::vector<int>(r.tokens[0].begin(), r.tokens[0].begin() + static_cast<long>(safe)) ==
          std::vector<int>(want.begin(), want.begin() + static_cast<long>(safe)));
  }
}

TEST_CASE("tiny-fortunes: the one-line API (load_model(dir), model.generate) streams the greedy text") {
  const std::string dir = MOELA_SOURCE_DIR "/examples/models/tiny-fortunes";
  auto m = load_model(dir);  // BF16 weights, BF16 cache
  std::vector<int> prompt = {256};
  for (char c : std::string("Love is")) prompt.push_back(static_cast<unsigned char>(c));
  std::vector<int> streamed;
  const auto got = m.generate(prompt, 40, moela::sampling{}, [&](int t) {
    streamed.push_back(t);
    return true;
  });
  CHECK(got == streamed);
  CHECK(!got.empty());
  CHECK(got.size() <= 40);
  // Same as the explicit form with a greedy sampler (the BF16 cache rounds the latents, so
  // the reference text is not asserted here; test above covers it with an FP32 cache).
  auto cache = make_cache(m, 64);
  generate_options o;
  o.max_new_tokens = 40;
  o.stop_tokens = {257};
  sampler g;
  CHECK(generate(m, cache, prompt, o, g).tokens[0] == got);
}
