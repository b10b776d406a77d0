// DeepSeekMoE layer benchmarks, V2-Lite shape: hidden 2048, 64 routed experts (top-6, softmax,
// greedy), 2 shared experts, moe_intermediate 1408 (shared width 2816).
//
//  moe/<format>/T<tokens>   one moe_layer::forward on T random tokens.
//    T = 1, 8 (decode): 16 different token batches in turn (different experts each step);
//      counter roofline_ratio = (bytes of the weights actually read: gate,
//      active experts, shared expert) / time, over the STREAM-triad bandwidth; gemv_ratio =
//      the same bytes/s over the bytes/s of one plain matmul of the format with M = T on the
//      equal-FLOP weight below (separates the layer's overhead from the kernel's).
//    T = 512 (prefill): counter dense_ratio = the layer's FLOP/s over the FLOP/s of one dense
//      matmul of the same format with the same FLOPs (x [512, 2048] times W [3·11264, 2048]ᵀ,
//      11264 = (6 + 2)·1408 expert rows per token). The two alternate, three calls each per
//      iteration, and the ratio takes the fastest call of each: on a shared host one call of
//      either can be slowed by a neighbour by 30% or more.
//  moe_pages/<format>/T1     the experts in huge pages (as moe_layer keeps them) against the same
//    experts copied into 4 KiB pages, in one process, forwards alternating over 16 different
//    tokens (so different experts): counter huge_page_gain = time with 4 KiB pages / time with
//    huge pages (Linux; elsewhere both are the same memory and it reads ~1).
//  moe_router/T<tokens>     the gate alone (FP32 logits GEMM + selection): counter tokens_per_s,
//    and layer_share = router time / bf16 layer time at the same T.
//
// Formats: bf16, fp8 (fp8_block<128,128>, DeepSeek's), int8 (int8_rowwise), int4 (int4_group<64>).
// int8_a8 and int4_a8: the same int8/int4 weights with int8 activations (quant::mode::int8_activations).
// One layer (about 1.1 GB in bf16) is built per format and kept only while that
// format's benchmarks run.
#include "support.hpp"

#include <moela/moe.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>

namespace {

using namespace moela;
using namespace moela::moe;

moe_config v2_lite_config() {
  moe_config c;
  c.hidden_size = 2048;
  c.n_routed_experts = 64;
  c.num_experts_per_tok = 6;
  c.n_group = 1;
  c.topk_group = 1;
  c.scoring_func = score_fn::softmax;
  c.topk_method = topk_rule::greedy;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0f;
  c.n_shared_experts = 2;
  c.moe_intermediate_size = 1408;
  return c;
}

// Cheap deterministic fill (weights need only be finite and varied; values ~U(-a, a)).
void fill(std::span<float> v, std::uint64_t seed, float a) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = a * (float(s >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

template <class F>
qmatrix<F> random_matrix(index_t r, index_t c, std::uint64_t seed) {
  tensor<float, 2> t({r, c});
  fill(t.flat(), seed, 1.7f / std::sqrt(float(c)));
  return qmatrix<F>::quantize(t.cview());
}

template <class F>
swiglu_weights<F> random_ffn(index_t D, index_t I, std::uint64_t seed) {
  return {random_matrix<F>(I, D, seed), random_matrix<F>(I, D, seed + 1), random_matrix<F>(D, I, seed + 2)};
}

template <class F>
struct bench_layer {
  moe_layer<cpu<>, F> layer;
  qmatrix<F> dense_w;                       // the equal-FLOP dense weight (lazy)
  std::map<index_t, double> dense_seconds;  // T -> seconds of one dense matmul
};

// Keeps one format's layer alive at a time.
std::shared_ptr<void> g_current;
std::string g_current_name;
std::map<index_t, double> g_bf16_layer_seconds;  // T -> seconds per forward (for layer_share)

template <class F>
bench_layer<F>& get_layer(const std::string& name) {
  if (g_current_name != name) {
    g_current.reset();
    const moe_config c = v2_lite_config();
    moe_weights<F> w;
    w.gate = tensor<float, 2>({c.n_routed_experts, c.hidden_size});
    fill(w.gate.flat(), 1, 1.7f / std::sqrt(float(c.hidden_size)));
    for (index_t e = 0; e < c.n_routed_experts; ++e)
      w.experts.push_back(random_ffn<F>(c.hidden_size, c.moe_intermediate_size, 100 + 3 * std::uint64_t(e)));
    w.shared = random_ffn<F>(c.hidden_size, c.shared_intermediate_size(), 50);
    auto p = std::make_shared<bench_layer<F>>(bench_layer<F>{moe_layer<cpu<>, F>(c, std::move(w)), {}, {}});
    g_current = p;
    g_current_name = name;
  }
  return *static_cast<bench_layer<F>*>(g_current.get());
}

tensor<float, 2> random_tokens(index_t T, index_t D) {
  tensor<float, 2> x({T, D});
  fill(x.flat(), 7 + std::uint64_t(T), 1.7f);
  return x;
}

// The format's plain matmul on x [T, 2048] · W [3·11264, 2048]ᵀ: the same FLOPs as the layer
// (and, for T = 1, about the same weight bytes as its active experts). Seconds per call, best of
// 3 after a warm-up.
template <class F>
double dense_seconds(bench_layer<F>& bl, index_t T) {
  auto it = bl.dense_seconds.find(T);
  if (it != bl.dense_seconds.end()) return it->second;
  const moe_config& c = bl.layer.config();
  const index_t N = 3 * (c.num_experts_per_tok * c.moe_intermediate_size + c.shared_intermediate_size());
  if (bl.dense_w.rows() == 0) bl.dense_w = random_matrix<F>(N, c.hidden_size, 9);
  const tensor<float, 2> x = random_tokens(T, c.hidden_size);
  tensor<float, 2> y({T, N});
  matmul(cpu<>{}, y.view(), x.cview(), bl.dense_w);  // warm-up
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = moela_bench::now_s();
    matmul(cpu<>{}, y.view(), x.cview(), bl.dense_w);
    best = std::min(best, moela_bench::now_s() - t0);
  }
  bl.dense_seconds[T] = best;
  return best;
}

template <class F>
void bm_moe(benchmark::State& st, std::string name, index_t T) {
  auto& bl = get_layer<F>(name);
  auto& layer = bl.layer;
  const moe_config& c = layer.config();
  // Decode sizes cycle through 16 different batches, so each step reads other experts (the
  // same token every time would leave its experts in L3); the bytes are counted per step.
  std::vector<tensor<float, 2>> xs;
  for (index_t i = 0; i < (T <= 8 ? 16 : 1); ++i) {
    xs.push_back(tensor<float, 2>({T, c.hidden_size}));
    fill(xs.back().flat(), 7 + std::uint64_t(T) + 1000 * std::uint64_t(i), 1.7f);
  }
  tensor<float, 2> y({T, c.hidden_size});
  for (const auto& x : xs) layer.forward(y.view(), x.cview());  // warm-up (scratch, pages)
  const bool prefill = T > 8;
  const int reps = prefill ? 3 : 1;
  const double dense_t0 = dense_seconds(bl, T);  // (also builds the dense weight before timing)
  tensor<float, 2> yd({prefill ? T : 0, bl.dense_w.rows()});
  double seconds = 0, read = 0, best = 1e30, dense_best = dense_t0;
  std::size_t i = 0;
  for (auto _ : st) {
    for (int r = 0; r < reps; ++r) {
      const auto& x = xs[i++ % xs.size()];
      double t0 = moela_bench::now_s();
      layer.forward(y.view(), x.cview());
      const double dt = moela_bench::now_s() - t0;
      seconds += dt;
      best = std::min(best, dt);
      read += double(layer.active_weight_bytes());
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
      if (prefill) {  // the dense reference, alternating with the layer
        t0 = moela_bench::now_s();
        matmul(cpu<>{}, yd.view(), x.cview(), bl.dense_w);
        dense_best = std::min(dense_best, moela_bench::now_s() - t0);
        benchmark::DoNotOptimize(yd.data());
      }
    }
  }
  const double steps = double(st.iterations()) * reps;
  const double per_iter = seconds / steps;
  const double bytes = read / steps;  // mean weight bytes of a step
  const double flops = 2.0 * double(T) * double(c.hidden_size) * 3.0 *
                       double(c.num_experts_per_tok * c.moe_intermediate_size + c.shared_intermediate_size());
  st.counters["active_MB"] = bytes / 1e6;
  st.counters["active_experts"] = double(layer.plan().active.size());
  st.counters["GBps"] = bytes / per_iter / 1e9;
  st.counters["GFLOPs"] = flops / per_iter / 1e9;
  if (!prefill) {
    st.counters["roofline_ratio"] = bytes / per_iter / moela_bench::triad_bytes_per_s();
    // diagnostic: the layer's weight bytes/s over one plain GEMV/GEMM of the format
    st.counters["gemv_ratio"] = (bytes / per_iter) / (double(bl.dense_w.bytes()) / dense_t0);
  } else {
    st.counters["best_GFLOPs"] = flops / best / 1e9;
    st.counters["dense_GFLOPs"] = flops / dense_best / 1e9;
    st.counters["dense_ratio"] = dense_best / best;  // equal FLOPs, fastest call of each
  }
  if (name == "bf16") g_bf16_layer_seconds[T] = per_iter;
  st.SetLabel(xsimd::default_arch::name());
}

void bm_router(benchmark::State& st, index_t T) {
  auto& bl = get_layer<quant::bf16>("bf16");
  auto& layer = bl.layer;
  const tensor<float, 2> x = random_tokens(T, layer.config().hidden_size);
  routing r;
  tensor<float, 2> logits;
  layer.router().route(x.cview(), r, logits);
  double seconds = 0;
  for (auto _ : st) {
    const double t0 = moela_bench::now_s();
    layer.router().route(x.cview(), r, logits);
    seconds += moela_bench::now_s() - t0;
    benchmark::DoNotOptimize(r.topk_idx.data());
  }
  const double per_iter = seconds / double(st.iterations());
  st.counters["tokens_per_s"] = benchmark::Counter(double(T) * double(st.iterations()), benchmark::Counter::kIsRate);
  if (!g_bf16_layer_seconds.count(T)) {  // the layer bench did not run (filtered): time it here
    tensor<float, 2> y({T, layer.config().hidden_size});
    layer.forward(y.view(), x.cview());
    const double t0 = moela_bench::now_s();
    layer.forward(y.view(), x.cview());
    g_bf16_layer_seconds[T] = moela_bench::now_s() - t0;
  }
  st.counters["layer_share"] = per_iter / g_bf16_layer_seconds[T];
}

// Memory in 4 KiB pages (Linux: MADV_NOHUGEPAGE) that matrices are copied into and borrow.
class small_page_arena {
 public:
  explicit small_page_arena(std::size_t bytes) : size_(bytes) {
#if defined(__linux__)
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    madvise(p, bytes, MADV_NOHUGEPAGE);
    base_ = static_cast<std::uint8_t*>(p);
#else
    own_.resize(bytes);
    base_ = own_.data();
#endif
  }
  ~small_page_arena() {
#if defined(__linux__)
    munmap(base_, size_);
#endif
  }
  small_page_arena(const small_page_arena&) = delete;
  small_page_arena& operator=(const small_page_arena&) = delete;

  template <class T>
  const_view<T, 2> copy(const_view<T, 2> v) {
    const std::size_t n = static_cast<std::size_t>(v.extent(0) * v.extent(1)) * sizeof(T);
    if (used_ + n > size_) throw std::bad_alloc();
    T* d = reinterpret_cast<T*>(base_ + used_);
    for (index_t r = 0; r < v.extent(0); ++r)
      std::memcpy(d + r * v.extent(1), &v(r, 0), sizeof(T) * static_cast<std::size_t>(v.extent(1)));
    used_ += (n + 63) / 64 * 64;
    return const_view<T, 2>(d, v.shape());
  }
  template <class F>
  qmatrix<F> copy(const qmatrix<F>& w) {
    return qmatrix<F>::borrow_parts(copy(w.codes()), copy(w.scales()), copy(w.zeros()));
  }
  template <class F>
  swiglu_weights<F> copy(const swiglu_weights<F>& f) {
    return {copy(f.gate_proj), copy(f.up_proj), copy(f.down_proj)};
  }

 private:
  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0, used_ = 0;
  std::vector<std::uint8_t> own_;
};

template <class F>
void bm_pages(benchmark::State& st, std::string name) {
  auto& huge = get_layer<F>(name).layer;
  const moe_config& c = huge.config();
  std::size_t bytes = huge.shared().bytes() + 64 * 16;
  for (const auto& e : huge.experts()) bytes += e.bytes() + 64 * 16;
  small_page_arena arena(bytes);
  moe_weights<F> w;
  w.gate = huge.router().gate_weight().dequantize();  // FP32: exact
  for (const auto& e : huge.experts()) w.experts.push_back(arena.copy(e));
  w.shared = arena.copy(huge.shared());
  moe_layer<cpu<>, F> small(c, std::move(w));  // borrowed experts: left in the arena's pages
  std::vector<tensor<float, 2>> xs;
  for (index_t i = 0; i < 16; ++i) {
    xs.push_back(tensor<float, 2>({1, c.hidden_size}));
    fill(xs.back().flat(), 1000 + std::uint64_t(i), 1.7f);
  }
  tensor<float, 2> y({1, c.hidden_size});
  double t_small = 0, t_huge = 0;
  std::size_t i = 0;
  for (auto _ : st) {
    const auto& x = xs[i++ % xs.size()];
    double t0 = moela_bench::now_s();
    small.forward(y.view(), x.cview());
    t_small += moela_bench::now_s() - t0;
    t0 = moela_bench::now_s();
    huge.forward(y.view(), x.cview());
    t_huge += moela_bench::now_s() - t0;
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["huge_page_gain"] = t_small / t_huge;
  st.counters["ms_4k_pages"] = t_small / double(st.iterations()) * 1e3;
  st.counters["ms_huge_pages"] = t_huge / double(st.iterations()) * 1e3;
}

template <class F>
void register_format(const std::string& name) {
  for (index_t T : {1, 8, 512}) {
    auto* b = benchmark::RegisterBenchmark(("moe/" + name + "/T" + std::to_string(T)).c_str(),
                                           [name, T](benchmark::State& st) { bm_moe<F>(st, name, T); });
    b->Unit(benchmark::kMillisecond);  // no UseRealTime/Iterations: they would suffix the name
  }
}

const bool registered = [] {
  register_format<quant::bf16>("bf16");
  for (index_t T : {1, 8, 512})
    benchmark::RegisterBenchmark(("moe_router/T" + std::to_string(T)).c_str(),
                                 [T](benchmark::State& st) { bm_router(st, T); })
        ->Unit(benchmark::kMicrosecond);
  register_format<quant::fp8_block<128, 128>>("fp8");
  register_format<quant::int8_rowwise<>>("int8");
  register_format<quant::int4_group<64>>("int4");
  register_format<quant::int8_rowwise_a8<>>("int8_a8");
  register_format<quant::int4_group_a8<64>>("int4_a8");
  register_format<quant::int4_group_a16<64>>("int4_a16");
  benchmark::RegisterBenchmark("moe_pages/fp8/T1", [](benchmark::State& st) {
    bm_pages<quant::fp8_block<128, 128>>(st, "fp8");
  })->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("moe_pages/int4_a8/T1", [](benchmark::State& st) {
    bm_pages<quant::int4_group_a8<64>>(st, "int4_a8");
  })->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
