// End-to-end model benchmarks: a DeepSeek-V2-Lite-shaped model with its real per-layer dims
// (hidden 2048, 16 heads, no q_lora, kv_lora_rank 512, 64 routed experts top-6, 2 shared,
// moe_intermediate 1408, dense intermediate 10944, vocab 102400) but 4 layers (1 dense + 3 MoE),
// random weights built in memory per weight format, BF16 latent cache, 2 threads.
//
//   e2e/v2lite-l4/<format>/prefill  one 512-token prompt (logits of the last token)
//   e2e/v2lite-l4/<format>/decode   64 greedy decode steps after that prompt (batch 1)
//
// Counters: tokens_per_s; roofline_ratio = roofline time / measured time, where the roofline
// time of a decode step is (bytes of weights and cache the step must read) / triad bandwidth
// (the mean of two triads measured right before and right after the timed decode steps, also
// reported as triad_GBps), and the roofline of the prefill is its FLOPs / the FMA peak.
// The prefill also reports gemm_ratio = its FLOP/s over the FLOP/s of the format's plain
// 512 x 2048 x 2048 matmul (the quantized-matmul benchmark's GEMM shape, the weight format's
// default mode), the two alternating three times in the same process; every prefill counter
// takes the fastest of the three prompts, and gemm_ratio the fastest call of each side.
// Only one format's model is alive at a time (the bf16 one holds ~4.4 GB).
#include <benchmark/benchmark.h>

#include <moela/model.hpp>

#include <memory>
#include <string>

#include "support.hpp"

namespace {

using namespace moela;

const char* v2lite_l4 = R"({
  "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
  "moe_intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 16,
  "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
  "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1,
  "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false, "routed_scaling_factor": 1.0,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
  "max_position_embeddings": 163840, "bos_token_id": 100000, "eos_token_id": 100001,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                   "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}})";

constexpr index_t prompt_len = 512, decode_len = 64;

template <class Format>
using e2e_model = deepseek_model<Format, attn::cache_bf16>;

// The model, cache and prefilled sequence of the format being benchmarked (one at a time).
struct state_base {
  virtual ~state_base() = default;
  std::string format;
};
std::unique_ptr<state_base> current;

template <class Format>
struct state : state_base {
  using M = e2e_model<Format>;
  M model;
  decltype(make_cache(std::declval<const M&>(), 1)) cache;
  index_t seq = -1;
  std::vector<int> prompt;
  explicit state(io::model_config c)
      : model(random_model<M>(c, 7)), cache(make_cache(model, prompt_len + 16 * decode_len)) {
    for (index_t i = 0; i < prompt_len; ++i) prompt.push_back(static_cast<int>((i * 7919 + 13) % c.vocab_size));
  }
};

template <class Format>
state<Format>& get(const char* name) {
  if (!current || current->format != name) {
    current.reset();
    auto cfg = apply_options(io::parse_config(v2lite_l4, "v2lite-l4"), {prompt_len + 16 * decode_len, false});
    current = std::make_unique<state<Format>>(cfg);
    current->format = name;
  }
  return static_cast<state<Format>&>(*current);
}

// Bytes one decode step reads: every weight a token passes through plus the cache it attends over.
template <class Format>
double decode_bytes(state<Format>& s, index_t context) {
  auto& m = s.model;
  const auto& c = m.config();
  double b = double(m.head_bytes()) + double(c.hidden_size) * 2;  // head + one embedding row
  for (auto& l : m.layers())
    std::visit(
        [&](auto& layer) {
          const auto& w = layer.attention().impl().weights();
          b += double(w.q_proj.bytes() + w.q_a_proj.bytes() + w.q_b_proj.bytes() + w.kv_a_proj.bytes() + w.o_proj.bytes());
          b += double(layer.attention().impl().absorbed_bytes());  // W_UK^T, W_UV of absorbed mode
          b += 2.0 * double(c.hidden_size) * 4;  // norm weights
          auto& f = layer.ffn().impl();
          if constexpr (std::remove_cvref_t<decltype(layer)>::is_moe) {
            b += double(c.n_routed_experts * c.hidden_size) * 4 + double(f.shared().bytes()) +
                 double(c.num_experts_per_tok) * double(f.experts()[0].bytes());
          } else {
            b += double(f.weights().bytes());
          }
        },
        l);
  b += double(context) * double(c.num_hidden_layers) * double(s.cache.bytes_per_token());
  return b;
}

template <class Format>
void bm_prefill(benchmark::State& st, const char* name) {
  set_num_threads(2);
  auto& s = get<Format>(name);
  tensor<float, 2> logits;
  const double flop_per_token = [&] {
    // 2 x active parameters per token (attention, FFN, head) + attention scores over the prompt
    const auto& c = s.model.config();
    const double D = double(c.hidden_size), H = double(c.num_attention_heads), R = double(c.kv_lora_rank);
    const double attn = D * H * 192 + D * 576 + 2 * H * 128 * R + H * 128 * D;
    const double dense = 3 * D * double(c.intermediate_size);
    const double moe = 3 * D * double(c.moe_intermediate_size) * double(c.num_experts_per_tok + c.n_shared_experts) +
                       D * double(c.n_routed_experts);
    const double scores = H * double(prompt_len) / 2 * (576 + 512);
    return 2 * (4 * attn + dense + 3 * moe + 4 * scores) + 2 * D * double(c.vocab_size) / double(prompt_len);
  }();
  // The GEMM reference: x [512, 2048] times a random 2048 x 2048 weight of the format.
  const index_t gk = 2048;
  tensor<float, 2> gx({prompt_len, gk}), gy({prompt_len, gk});
  for (index_t i = 0; i < gx.size(); ++i) gx.data()[i] = float((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
  const qmatrix<Format> gw = [&] {
    tensor<float, 2> wf({gk, gk});
    for (index_t i = 0; i < wf.size(); ++i) wf.data()[i] = (float((i * 40503u) % 2001) / 1000.0f - 1.0f) * 0.03f;
    return qmatrix<Format>::quantize(wf.cview());
  }();
  matmul(cpu<>{}, gy.view(), gx.cview(), gw);  // warm-up
  double best = 1e30, gemm_best = 1e30;
  for (auto _ : st) {
    for (int rep = 0; rep < 3; ++rep) {
      if (s.seq >= 0) s.cache.remove_sequence(s.seq);
      s.seq = s.cache.add_sequence();
      const step_chunk ch[] = {{s.seq, prompt_len}};
      double t0 = moela_bench::now_s();
      s.model.forward(s.cache, ch, s.prompt, logits);
      best = std::min(best, moela_bench::now_s() - t0);
      benchmark::DoNotOptimize(logits.data());
      t0 = moela_bench::now_s();
      matmul(cpu<>{}, gy.view(), gx.cview(), gw);
      gemm_best = std::min(gemm_best, moela_bench::now_s() - t0);
      benchmark::DoNotOptimize(gy.data());
    }
  }
  const double flops = flop_per_token * double(prompt_len), gemm_flops = 2.0 * double(prompt_len) * double(gk * gk);
  st.counters["tokens_per_s"] = double(prompt_len) / best;
  // roofline_ratio = achieved FLOP/s / FMA peak (the prefill is compute bound)
  st.counters["roofline_ratio"] = flops / best / moela_bench::fma_peak_flops();
  st.counters["gemm_GFLOPs"] = gemm_flops / gemm_best / 1e9;
  st.counters["gemm_ratio"] = (flops / best) / (gemm_flops / gemm_best);
  st.SetLabel(std::string(name) + ", " + xsimd::default_arch::name());
}

template <class Format>
void bm_decode(benchmark::State& st, const char* name) {
  set_num_threads(2);
  auto& s = get<Format>(name);
  tensor<float, 2> logits;
  if (s.seq < 0) {  // run alone: prefill first (untimed)
    s.seq = s.cache.add_sequence();
    const step_chunk ch[] = {{s.seq, prompt_len}};
    s.model.forward(s.cache, ch, s.prompt, logits);
  }
  double bytes = 0;
  const double triad_before = moela_bench::triad_bytes_per_s_now();
  for (auto _ : st) {
    st.PauseTiming();
    if (s.cache.length(s.seq) + decode_len > prompt_len + 16 * decode_len) {  // keep the context near 512
      s.cache.remove_sequence(s.seq);
      s.seq = s.cache.add_sequence();
      const step_chunk ch[] = {{s.seq, prompt_len}};
      s.model.forward(s.cache, ch, s.prompt, logits);
    }
    const index_t ctx0 = s.cache.length(s.seq);
    st.ResumeTiming();
    int tok = 1;
    for (index_t i = 0; i < decode_len; ++i) {
      const step_chunk ch[] = {{s.seq, 1}};
      const int t[] = {tok};
      s.model.forward(s.cache, ch, t, logits);
      tok = argmax(std::span<const float>(logits.data(), static_cast<std::size_t>(logits.extent(1))));
    }
    bytes += decode_bytes(s, ctx0 + decode_len / 2) * double(decode_len);
  }
  // The roofline's bandwidth: the triad measured right before and right after the timed loop.
  const double triad = (triad_before + moela_bench::triad_bytes_per_s_now()) / 2;
  st.counters["tokens_per_s"] = benchmark::Counter(double(decode_len), benchmark::Counter::kIsIterationInvariantRate);
  st.counters["roofline_ratio"] = benchmark::Counter(bytes / double(st.iterations()) / triad,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  st.counters["triad_GBps"] = triad / 1e9;
  st.counters["step_MB"] = bytes / double(st.iterations()) / double(decode_len) / 1e6;
  st.SetLabel(std::string(name) + ", " + xsimd::default_arch::name());
}

template <class Format>
void register_format(const char* name) {
  const std::string p = std::string("e2e/v2lite-l4/") + name;
  benchmark::RegisterBenchmark((p + "/prefill").c_str(), [name](benchmark::State& st) { bm_prefill<Format>(st, name); })
      ->Unit(benchmark::kSecond)
      ->UseRealTime()
      ->Iterations(1);
  benchmark::RegisterBenchmark((p + "/decode").c_str(), [name](benchmark::State& st) { bm_decode<Format>(st, name); })
      ->Unit(benchmark::kSecond)
      ->UseRealTime()
      ->Iterations(2);
}

const bool registered = [] {
  register_format<quant::bf16>("bf16");
  register_format<quant::fp8_block<128, 128>>("fp8_block");
  register_format<quant::int4_group<32>>("int4_group32");
  register_format<quant::int4_group_a8<32>>("int4_group32_a8");
  register_format<quant::int4_group_a16<32>>("int4_group32_a16");
  return true;
}();

}  // namespace
