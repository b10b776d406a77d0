// The per-thread scratch of the parts (core/workspace.hpp): one instance per scratch type and
// thread, counted and released; a model's layers share it, so what a step leaves allocated does
// not grow with the number of layers; and sharing changes no result, whatever order models and
// layers run in.
#include <doctest/doctest.h>

#include <moela/model.hpp>

#include <cstring>
#include <thread>

using namespace moela;

namespace {

struct scratch_a {
  std::vector<float> v;
  std::size_t bytes() const { return detail::capacity_bytes(v); }
};

// A DeepSeek-V3-shaped config small enough to build in memory: MLA with q_lora, a dense first
// layer, then MoE layers with sigmoid group-limited routing and a shared expert.
io::model_config tiny_config(index_t layers) {
  const std::string json = R"({"model_type": "deepseek_v3", "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": )" +
                           std::to_string(layers) + R"(, "num_attention_heads": 4, "num_key_value_heads": 4,
    "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "max_position_embeddings": 512})";
  return io::parse_config(json, "tiny.json");
}

using model_t = deepseek_model<quant::bf16, attn::cache_bf16>;

std::vector<int> prompt_of(index_t n, int salt) {
  std::vector<int> p;
  for (index_t i = 0; i < n; ++i) p.push_back(static_cast<int>((i * 37 + salt) % 300));
  return p;
}

// Logits of a prefill of `prompt` and of `steps` decode steps (tokens fed by rule), in order.
struct run_state {
  decltype(make_cache(std::declval<const model_t&>(), 1)) cache;
  index_t seq;
  std::vector<std::vector<float>> logits;
};

run_state start(const model_t& m) {
  run_state r{make_cache(m, 256), 0, {}};
  r.seq = r.cache.add_sequence();
  return r;
}

void step(model_t& m, run_state& r, const std::vector<int>& tokens) {
  const step_chunk ch{r.seq, static_cast<index_t>(tokens.size())};
  tensor<float, 2> logits;
  m.forward(r.cache, std::span(&ch, 1), tokens, logits);
  r.logits.emplace_back(logits.data(), logits.data() + logits.size());
}

}  // namespace

TEST_CASE("workspace: one instance per type and thread, counted and released") {
  release_thread_workspaces();
  auto& a = detail::thread_workspace<scratch_a>();
  CHECK(&detail::thread_workspace<scratch_a>() == &a);
  a.v.resize(1000);
  CHECK(thread_workspace_bytes() >= 1000 * sizeof(float));
  const scratch_a* other = nullptr;
  std::size_t other_before = 1, other_after = 0, other_capacity = 0;
  std::thread t([&] {
    other_before = thread_workspace_bytes();
    auto& b = detail::thread_workspace<scratch_a>();
    b.v.resize(10);
    other = &b;
    other_capacity = detail::capacity_bytes(b.v);
    other_after = thread_workspace_bytes();
  });
  t.join();
  CHECK(other != &a);
  CHECK(other_before == 0);
  CHECK(other_after == other_capacity);
  CHECK(a.v.size() == 1000);  // the other thread's use left this thread's instance alone
  release_thread_workspaces();
  CHECK(a.v.capacity() == 0);
  CHECK(thread_workspace_bytes() == 0);
}

TEST_CASE("workspace: a model's layers share it; what a step leaves does not grow with the layers") {
  set_num_threads(2);
  const auto prompt = prompt_of(100, 5);
  std::size_t bytes[2];
  int i = 0;
  for (index_t layers : {2, 6}) {
    release_thread_workspaces();
    auto m = random_model<model_t>(tiny_config(layers), 11);
    auto r = start(m);
    step(m, r, prompt);
    bytes[i++] = thread_workspace_bytes();
  }
  CAPTURE(bytes[0]);
  CAPTURE(bytes[1]);
  CHECK(bytes[0] > 0);
  // Kept per layer, the scratch would grow with the MoE layers (1 -> 5 here); shared, it is equal.
  CHECK(bytes[1] == bytes[0]);
}

TEST_CASE("workspace: models run alone, interleaved and after a release give identical logits") {
  set_num_threads(2);
  const auto cfg = tiny_config(3);
  auto m1 = random_model<model_t>(cfg, 3);
  auto m2 = random_model<model_t>(cfg, 4);
  const auto p1 = prompt_of(70, 1), p2 = prompt_of(33, 2);
  const std::vector<std::vector<int>> feed = {{7}, {100}, {299}, {0}};

  auto alone = [&](model_t& m, const std::vector<int>& p) {
    auto r = start(m);
    step(m, r, p);
    for (const auto& t : feed) step(m, r, t);
    return r.logits;
  };
  const auto ref1 = alone(m1, p1), ref2 = alone(m2, p2);

  // Interleaved step by step: the other model's (shorter or longer) steps run in between and
  // overwrite the shared scratch.
  auto r1 = start(m1), r2 = start(m2);
  step(m2, r2, p2);
  step(m1, r1, p1);
  for (const auto& t : feed) {
    step(m1, r1, t);
    step(m2, r2, t);
  }
  REQUIRE(r1.logits.size() == ref1.size());
  REQUIRE(r2.logits.size() == ref2.size());
  for (std::size_t s = 0; s < ref1.size(); ++s) {
    CAPTURE(s);
    CHECK(r1.logits[s] == ref1[s]);
    CHECK(r2.logits[s] == ref2[s]);
  }

  release_thread_workspaces();
  CHECK(thread_workspace_bytes() == 0);
  CHECK(alone(m1, p1) == ref1);
}
