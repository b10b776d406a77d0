// The composition machinery of model<> / decoder_layer<> / generate, with small parts defined
// here whose outputs are easy to compute independently: the test checks layer selection
// (dense first, MoE after), batching of chunks of different lengths, the cache protocol,
// logits rows, tracing, and generation (stop tokens, streaming, batching).
#include <doctest/doctest.h>

#include <moela/model/generate.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

namespace fs = std::filesystem;
using namespace moela;

namespace {

// A KV "cache" holding the raw rows each layer saw, per sequence; same protocol as attn caches.
struct toy_cache {
  std::map<std::pair<index_t, index_t>, std::vector<std::vector<float>>> rows;  // (layer, seq) -> rows
  std::vector<index_t> len, pend;
  std::vector<bool> live;
  int commits = 0, rollbacks = 0;
  index_t slot_limit = 1 << 20;  // live sequences allowed at once
  index_t live_count() const { return static_cast<index_t>(std::count(live.begin(), live.end(), true)); }
  index_t add_sequence() {
    check(live_count() < slot_limit, "toy_cache: all ", slot_limit, " slots are in use");
    len.push_back(0);
    pend.push_back(0);
    live.push_back(true);
    return static_cast<index_t>(len.size()) - 1;
  }
  void remove_sequence(index_t s) { live[static_cast<std::size_t>(s)] = false; }
  void prepare(std::span<const step_chunk> ch) {
    for (auto c : ch) check(c.seq < static_cast<index_t>(live.size()) && live[static_cast<std::size_t>(c.seq)], "toy_cache: no sequence ", c.seq);
    for (auto c : ch) pend[static_cast<std::size_t>(c.seq)] = c.tokens;
  }
  void commit() {
    ++commits;
    for (std::size_t s = 0; s < len.size(); ++s) len[s] += std::exchange(pend[s], 0);
  }
  void rollback() {
    ++rollbacks;
    for (std::size_t s = 0; s < len.size(); ++s) {
      for (auto& [k, v] : rows)
        if (k.second == static_cast<index_t>(s)) v.resize(static_cast<std::size_t>(len[s]));
      pend[s] = 0;
    }
  }
};

// Norm: x * w (no normalisation, so expected values stay simple).
struct toy_norm {
  tensor<float, 1> w;
  static toy_norm load(io::weight_loader& l, const io::model_config& c, const std::string& p) {
    return {l.vector(p + ".weight", c.hidden_size)};
  }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) const {
    for (index_t t = 0; t < x.extent(0); ++t)
      for (index_t j = 0; j < x.extent(1); ++j) y(t, j) = x(t, j) * w(j);
  }
};

// Attention: the mean of the inputs of this sequence so far (causal), read back from the cache.
struct toy_attention {
  static toy_attention load(io::weight_loader&, const io::model_config&, const std::string&) { return {}; }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x, toy_cache& c, index_t layer,
               std::span<const step_chunk> chunks) {
    index_t row = 0;
    for (auto ch : chunks) {
      auto& v = c.rows[{layer, ch.seq}];
      for (index_t t = 0; t < ch.tokens; ++t, ++row) {
        v.emplace_back(&x(row, 0), &x(row, 0) + x.extent(1));
        for (index_t j = 0; j < x.extent(1); ++j) {
          double s = 0;
          for (auto& r : v) s += r[static_cast<std::size_t>(j)];
          y(row, j) = static_cast<float>(s / double(v.size()));
        }
      }
    }
  }
};

struct toy_dense {
  static constexpr bool is_moe = false;
  qmatrix<quant::f32> w;
  static toy_dense load(io::weight_loader& l, const io::model_config& c, const std::string& p) {
    return {l.matrix<quant::f32>(p + ".down_proj.weight", c.hidden_size, c.hidden_size)};
  }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) { matmul(y, x, w); }
};

struct toy_moe {
  static constexpr bool is_moe = true;
  static toy_moe load(io::weight_loader&, const io::model_config&, const std::string&) { return {}; }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) {
    for (index_t t = 0; t < x.extent(0); ++t)
      for (index_t j = 0; j < x.extent(1); ++j) y(t, j) = std::tanh(x(t, j));
  }
};

using B = cpu<>;
using dense_layer = decoder_layer<B, toy_attention, toy_dense, toy_norm>;
using moe_layer = decoder_layer<B, toy_attention, toy_moe, toy_norm>;
using toy_model = model<B, quant::f32, dense_layer, moe_layer>;

template <class Q>
constexpr bool can_borrow = requires(const_view<float, 2> v) { Q::borrow(v); };

constexpr index_t V = 11, D = 4, L = 3;

struct fixture {
  fs::path dir;
  std::vector<float> embed, head, norms[2 * L + 1], down;
  io::model_config cfg;
  fixture() {
    std::string tmpl = (fs::temp_directory_path() / "moela-model-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto fill = [&](std::vector<float>& v, std::size_t n) {
      v.resize(n);
      for (auto& e : v) e = u(rng);
    };
    io::safetensors_writer w;
    fill(embed, V * D);
    fill(head, V * D);
    fill(down, D * D);
    w.add<float>("model.embed_tokens.weight", {V, D}, embed);
    w.add<float>("lm_head.weight", {V, D}, head);
    w.add<float>("model.layers.0.mlp.down_proj.weight", {D, D}, down);
    for (index_t i = 0; i < L; ++i) {
      fill(norms[2 * i], D);
      fill(norms[2 * i + 1], D);
      w.add<float>("model.layers." + std::to_string(i) + ".input_layernorm.weight", {D}, norms[2 * i]);
      w.add<float>("model.layers." + std::to_string(i) + ".post_attention_layernorm.weight", {D}, norms[2 * i + 1]);
    }
    fill(norms[2 * L], D);
    w.add<float>("model.norm.weight", {D}, norms[2 * L]);
    w.save((dir / "model.safetensors").string());
    cfg = io::parse_config(R"({"model_type": "deepseek_v3", "vocab_size": 11, "hidden_size": 4,
      "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 4, "num_experts_per_tok": 1,
      "n_group": 2, "topk_group": 1, "intermediate_size": 4, "moe_intermediate_size": 4, "eos_token_id": 3,
      "bos_token_id": 0})", "toy.json");
  }
  ~fixture() { fs::remove_all(dir); }

  // Independent evaluation of the same network for one sequence, all positions, in double.
  std::vector<std::vector<double>> reference(const std::vector<int>& toks) const {
    const std::size_t T = toks.size();
    std::vector<std::vector<double>> h(T, std::vector<double>(D));
    for (std::size_t t = 0; t < T; ++t)
      for (index_t j = 0; j < D; ++j) h[t][static_cast<std::size_t>(j)] = embed[static_cast<std::size_t>(toks[t] * D + j)];
    for (index_t i = 0; i < L; ++i) {
      std::vector<std::vector<double>> x(T, std::vector<double>(D));
      for (std::size_t t = 0; t < T; ++t)
        for (index_t j = 0; j < D; ++j)
          x[t][static_cast<std::size_t>(j)] = float(float(h[t][static_cast<std::size_t>(j)]) * norms[2 * i][static_cast<std::size_t>(j)]);
      for (std::size_t t = 0; t < T; ++t)
        for (index_t j = 0; j < D; ++j) {
          double s = 0;
          for (std::size_t k = 0; k <= t; ++k) s += x[k][static_cast<std::size_t>(j)];
          h[t][static_cast<std::size_t>(j)] += s / double(t + 1);
        }
      for (std::size_t t = 0; t < T; ++t) {
        std::vector<double> xn(D), y(D);
        for (index_t j = 0; j < D; ++j) xn[static_cast<std::size_t>(j)] = h[t][static_cast<std::size_t>(j)] * norms[2 * i + 1][static_cast<std::size_t>(j)];
        for (index_t o = 0; o < D; ++o) {
          if (i == 0) {
            double s = 0;
            for (index_t j = 0; j < D; ++j) s += down[static_cast<std::size_t>(o * D + j)] * xn[static_cast<std::size_t>(j)];
            y[static_cast<std::size_t>(o)] = s;
          } else {
            y[static_cast<std::size_t>(o)] = std::tanh(xn[static_cast<std::size_t>(o)]);
          }
        }
        for (index_t j = 0; j < D; ++j) h[t][static_cast<std::size_t>(j)] += y[static_cast<std::size_t>(j)];
      }
    }
    std::vector<std::vector<double>> logits(T, std::vector<double>(V));
    for (std::size_t t = 0; t < T; ++t)
      for (index_t v = 0; v < V; ++v) {
        double s = 0;
        for (index_t j = 0; j < D; ++j)
          s += head[static_cast<std::size_t>(v * D + j)] * h[t][static_cast<std::size_t>(j)] * norms[2 * L][static_cast<std::size_t>(j)];
        logits[t][static_cast<std::size_t>(v)] = s;
      }
    return logits;
  }
};

double max_diff(const_view<float, 2> a, const std::vector<std::vector<double>>& ref, std::size_t first_ref_row) {
  double m = 0;
  for (index_t r = 0; r < a.extent(0); ++r)
    for (index_t v = 0; v < a.extent(1); ++v)
      m = std::max(m, std::fabs(a(r, v) - ref[first_ref_row + static_cast<std::size_t>(r)][static_cast<std::size_t>(v)]));
  return m;
}

}  // namespace

// FP32 vs double for 3 tiny layers of 4-wide sums: errors ~1e-6; 1e-4 leaves room and still
// catches any wrong wiring (those change logits by O(0.1)).
constexpr double tol = 1e-4;

TEST_CASE("model: load picks dense then MoE layers, forward matches an independent evaluation") {
  fixture f;
  auto ck = std::make_shared<const io::checkpoint>(f.dir.string());
  auto m = toy_model::load(f.cfg, ck);
  REQUIRE(m.num_layers() == 3);
  CHECK(m.layers()[0].index() == 0);
  CHECK(m.layers()[1].index() == 1);
  CHECK(m.layers()[2].index() == 1);
  if constexpr (can_borrow<qmatrix<quant::f32>>)
    CHECK(m.load_stats().borrowed == (V * D + D * D) * sizeof(float));  // head and FFN weight in place
  toy_cache c;
  const std::vector<int> a = {0, 5, 7, 2, 9}, b = {0, 1};
  const auto ra = f.reference(a), rb = f.reference(b);
  const index_t sa = c.add_sequence(), sb = c.add_sequence();

  // prefill both sequences in one step (chunks of different lengths), all logits rows
  std::vector<int> toks(a.begin(), a.begin() + 3);
  toks.insert(toks.end(), b.begin(), b.end());
  const step_chunk ch[] = {{sa, 3}, {sb, 2}};
  tensor<float, 2> logits;
  std::vector<std::string> traced;
  m.forward(c, ch, toks, logits, logits_rows::all, [&](const std::string& n, const_view<float, 2>) { traced.push_back(n); });
  REQUIRE(logits.extent(0) == 5);
  CHECK(max_diff(logits.view().slice(0, 0, 3), ra, 0) < tol);
  CHECK(max_diff(logits.view().slice(0, 3, 5), rb, 0) < tol);
  CHECK(traced.front() == "layers.0.input");
  CHECK(traced.back() == "final_hidden");
  CHECK(traced.size() == 4 * 3 + 1);
  CHECK(c.commits == 1);

  // decode: the rest of a, one token at a time, only the last row of each chunk
  for (std::size_t t = 3; t < a.size(); ++t) {
    const step_chunk d[] = {{sa, 1}};
    const int tok[] = {a[t]};
    m.forward(c, d, tok, logits);
    REQUIRE(logits.extent(0) == 1);
    CHECK(max_diff(logits.view(), ra, t) < tol);
  }
  CHECK(c.len[static_cast<std::size_t>(sa)] == 5);

  // errors: bad token id, token count mismatch; the cache is unchanged
  const step_chunk d[] = {{sb, 1}};
  const int bad[] = {11};
  CHECK_THROWS_WITH_AS(m.forward(c, d, bad, logits), doctest::Contains("outside the vocabulary"), moela::error);
  const int two[] = {1, 2};
  CHECK_THROWS_AS(m.forward(c, d, two, logits), moela::error);
  CHECK(c.len[static_cast<std::size_t>(sb)] == 2);
}

TEST_CASE("model: a type without an MoE layer rejects a config with MoE layers") {
  fixture f;
  auto ck = std::make_shared<const io::checkpoint>(f.dir.string());
  using dense_only = model<B, quant::f32, dense_layer>;
  CHECK_THROWS_WITH_AS(dense_only::load(f.cfg, ck), doctest::Contains("layer 1 an MoE layer"), moela::error);
  auto cfg = f.cfg;
  cfg.hidden_size = 5;
  CHECK_THROWS_WITH_AS(toy_model::load(cfg, ck), doctest::Contains("model.embed_tokens.weight"), moela::error);
}

TEST_CASE("generate: greedy equals the reference argmax chain; stop tokens, streaming, batches") {
  fixture f;
  auto ck = std::make_shared<const io::checkpoint>(f.dir.string());
  auto m = toy_model::load(f.cfg, ck);
  toy_cache c;
  const std::vector<int> prompt = {0, 4, 6};
  generate_options o;
  o.max_new_tokens = 6;
  std::vector<int> streamed;
  o.on_token = [&](index_t, int t) {
    streamed.push_back(t);
    return true;
  };
  sampler greedy;
  auto r = generate(m, c, prompt, o, greedy);
  REQUIRE(r.tokens.size() == 1);
  CHECK(streamed == r.tokens[0]);
  // Reference: re-evaluate the growing sequence from scratch, take the argmax each time
  // (margins of this random net are far above FP32 error for these steps).
  std::vector<int> seq = prompt;
  for (int s = 0; s < 6; ++s) {
    auto lg = f.reference(seq).back();
    seq.push_back(static_cast<int>(std::max_element(lg.begin(), lg.end()) - lg.begin()));
  }
  CHECK(std::vector<int>(seq.begin() + 3, seq.end()) == r.tokens[0]);
  CHECK(r.stats.prompt_tokens == 3);
  CHECK(r.stats.generated_tokens == 6);
  CHECK(r.stats.decode_steps == 5);
  CHECK_FALSE(r.stopped[0]);

  // stop at the second generated token
  generate_options s = o;
  s.on_token = {};
  s.stop_tokens = {r.tokens[0][1]};
  if (r.tokens[0][0] != r.tokens[0][1]) {
    auto r2 = generate(m, c, prompt, s, greedy);
    CHECK(r2.tokens[0].size() == 2);
    CHECK(r2.stopped[0]);
  }
  // the callback can stop
  generate_options cb = o;
  cb.on_token = [](index_t, int) { return false; };
  CHECK(generate(m, c, prompt, cb, greedy).tokens[0].size() == 1);

  // a batch of prompts of different lengths gives each prompt's own greedy continuation
  const std::vector<std::vector<int>> prompts = {{0, 4, 6}, {0, 1}, {0, 9, 9, 2, 8}};
  generate_options bo;
  bo.max_new_tokens = 4;
  auto rb = generate_batch(m, c, std::span<const std::vector<int>>(prompts), bo);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    sampler g;
    CHECK(rb.tokens[i] == generate(m, c, prompts[i], bo, g).tokens[0]);
  }
  CHECK(rb.stats.decode_tokens == 3 * 3);

  // Prefill in steps of at most 2 tokens: the batch's 10 prompt tokens take 5 steps, two of
  // them holding the end of one prompt and the start of the next; the continuations, the order
  // of the streamed tokens and the stats are those of the single-step prefill.
  generate_options po = bo;
  po.prefill_chunk = 2;
  std::vector<index_t> streamed_seq;
  po.on_token = [&](index_t sq, int) {
    streamed_seq.push_back(sq);
    return true;
  };
  const int commits = c.commits;
  auto rp = generate_batch(m, c, std::span<const std::vector<int>>(prompts), po);
  CHECK(rp.tokens == rb.tokens);
  CHECK(c.commits - commits == 5 + rp.stats.decode_steps);
  CHECK(rp.stats.prompt_tokens == 10);
  CHECK(rp.stats.decode_tokens == rb.stats.decode_tokens);
  REQUIRE(streamed_seq.size() >= 3);
  CHECK(streamed_seq[0] == 0);
  CHECK(streamed_seq[1] == 1);
  CHECK(streamed_seq[2] == 2);
  // one prompt token per step
  generate_options one = o;
  one.on_token = {};
  one.prefill_chunk = 1;
  sampler g1;
  const int c1 = c.commits;
  auto r1 = generate(m, c, prompt, one, g1);
  CHECK(r1.tokens[0] == r.tokens[0]);
  CHECK(c.commits - c1 == 3 + r1.stats.decode_steps);
}

TEST_CASE("generate: bad requests fail before any work; sequences are removed whatever happens") {
  fixture f;
  auto ck = std::make_shared<const io::checkpoint>(f.dir.string());
  auto m = toy_model::load(f.cfg, ck);
  toy_cache c;
  sampler g;
  generate_options o;
  o.max_new_tokens = -1;
  CHECK_THROWS_WITH_AS(generate(m, c, {0, 4}, o, g), "generate: max_new_tokens must be >= 0, got -1", moela::error);
  o.max_new_tokens = 3;
  CHECK_THROWS_WITH_AS(generate(m, c, {0, 11, 2}, o, g),
                       "generate: token 11 at index 1 of prompt 0 is outside the vocabulary [0, 11)", moela::error);
  CHECK_THROWS_WITH_AS(generate(m, c, {}, o, g), "generate: prompt 0 is empty", moela::error);
  CHECK(c.len.empty());  // no sequence was added, nothing ran
  CHECK(c.commits == 0);
  // The third of three prompts finds no free slot: the two added before are removed again.
  c.slot_limit = 2;
  const std::vector<std::vector<int>> prompts = {{0, 4}, {0, 1}, {0, 2}};
  CHECK_THROWS_WITH_AS(generate_batch(m, c, std::span<const std::vector<int>>(prompts), o),
                       "toy_cache: all 2 slots are in use", moela::error);
  CHECK(c.live_count() == 0);
  CHECK(c.commits == 0);
  // With the slots free again the same cache serves a batch that fits.
  const std::vector<std::vector<int>> two = {{0, 4}, {0, 1}};
  CHECK(generate_batch(m, c, std::span<const std::vector<int>>(two), o).tokens.size() == 2);
  CHECK(c.live_count() == 0);
}
