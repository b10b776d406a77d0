// Quantized GEMV / GEMM benchmarks. Every figure is reported as a ratio to a reference measured
// by this same process:
//   gemv/<format>/<K>x<N>      counter triad_ratio = weight bytes/s / STREAM-triad bytes/s
//   gemm/<format>/<M>x<K>x<N>  counters eigen_ratio = FLOP/s / Eigen FP32 GEMM FLOP/s (same shape)
//                                       peak_ratio  = FLOP/s / FP32 FMA peak
// Format names: f32 bf16 fp16 fp8_block (E4M3, 128x128) fp8_block_e5m2 fp8_block_faithful
// (W8A8 DeepSeek numerics) int8_rowwise int8_group64 int4_group{32,64,128} int4_group64_asym, and
// with an `_a8` suffix the same integer formats with int8 activations (quant::mode::int8_activations,
// the W8A8 / W4A8 integer kernels), and bf16_a16 / fp8_block_a16 / int4_group{32,128}_a16 /
// int4_group64_asym_a16: bf16, FP8 and int4 weights with the fp32 activations rounded to bf16
// (quant::mode::bf16_activations: the vdpbf16ps GEMM for bf16 and FP8, GEMV for int4).
// Example: moela-bench --benchmark_filter='gemv/|gemm/' --benchmark_min_time=0.05
#include "support.hpp"

#include <moela/quant.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace q = moela::quant;
using moela::index_t;

moela::tensor<float, 2> random_matrix(index_t r, index_t c, unsigned seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sd);
  moela::tensor<float, 2> t({r, c});
  for (auto& v : t.flat()) v = d(rng);
  return t;
}

/// Eigen FP32 GEMM y = x · Wᵀ (row-major, all moela threads), FLOP/s, best of 5, once per shape.
double eigen_gemm_flops(index_t m, index_t k, index_t n) {
  static std::map<std::array<index_t, 3>, double> cache;
  const std::array<index_t, 3> key{m, k, n};
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::setNbThreads(moela::num_threads());
  const mat x = mat::Random(m, k), w = mat::Random(n, k);
  mat y(m, n);
  double best = 0;
  for (int rep = 0; rep < 6; ++rep) {
    const double t0 = moela_bench::now_s();
    y.noalias() = x * w.transpose();
    const double dt = moela_bench::now_s() - t0;
    benchmark::DoNotOptimize(y.data());
    if (rep > 0) best = std::max(best, 2.0 * double(m) * double(k) * double(n) / dt);
  }
  cache[key] = best;
  return best;
}

/// A copy of `w` with its own storage (qmatrix copies share theirs), row by row.
template <class F>
moela::qmatrix<F> deep_copy(const moela::qmatrix<F>& w) {
  auto copy = [](auto view) {
    using T = std::remove_const_t<typename decltype(view)::value_type>;
    moela::tensor<T, 2> t({view.extent(0), view.extent(1)});
    for (index_t r = 0; r < view.extent(0); ++r) std::copy_n(&view(r, 0), view.extent(1), &t(r, 0));
    return t;
  };
  if constexpr (F::has_scales)
    return moela::qmatrix<F>(copy(w.codes()), copy(w.scales()), copy(w.zeros()), w.cols());
  else
    return moela::qmatrix<F>(copy(w.codes()));
}

/// GEMV streams its weights from DRAM, as decode does (a model's weights are far larger than the
/// caches): the benchmark cycles through enough copies of W to span 256 MiB, so no iteration
/// finds its weights in the last-level cache.
template <class F, class Mode = q::mode::fast>
void bm_gemv(benchmark::State& st) {
  const index_t k = st.range(0), n = st.range(1);
  std::vector<moela::qmatrix<F>> ws{moela::qmatrix<F>::quantize(random_matrix(n, k, 1, 0.02f).cview())};
  const std::size_t bytes = ws[0].bytes();
  while (ws.size() * bytes < (std::size_t{256} << 20)) ws.push_back(deep_copy(ws[0]));
  const auto x = random_matrix(1, k, 2, 1.f);
  moela::tensor<float, 2> y({1, n});
  const double triad = moela_bench::triad_bytes_per_s();
  moela::matmul(y.view(), x.cview(), ws[0], Mode{});  // warm-up
  std::size_t i = 0;
  const double t0 = moela_bench::now_s();
  for (auto _ : st) {
    moela::matmul(y.view(), x.cview(), ws[i], Mode{});
    i = i + 1 == ws.size() ? 0 : i + 1;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double dt = moela_bench::now_s() - t0;
  const double bps = double(bytes) * double(st.iterations()) / dt;
  st.SetBytesProcessed(static_cast<int64_t>(bytes) * st.iterations());
  st.counters["weight_GBps"] = bps / 1e9;
  st.counters["triad_ratio"] = bps / triad;
  st.SetLabel(xsimd::default_arch::name());
}

template <class F, class Mode = q::mode::fast>
void bm_gemm(benchmark::State& st) {
  const index_t m = st.range(0), k = st.range(1), n = st.range(2);
  const auto w = moela::qmatrix<F>::quantize(random_matrix(n, k, 3, 0.02f).cview());
  const auto x = random_matrix(m, k, 4, 1.f);
  moela::tensor<float, 2> y({m, n});
  const double eigen = eigen_gemm_flops(m, k, n), peak = moela_bench::fma_peak_flops();
  moela::matmul(y.view(), x.cview(), w, Mode{});
  const double t0 = moela_bench::now_s();
  for (auto _ : st) {
    moela::matmul(y.view(), x.cview(), w, Mode{});
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double dt = moela_bench::now_s() - t0;
  const double flops = 2.0 * double(m) * double(k) * double(n) * double(st.iterations()) / dt;
  st.counters["GFLOPs"] = flops / 1e9;
  st.counters["eigen_ratio"] = flops / eigen;
  st.counters["peak_ratio"] = flops / peak;
  st.SetLabel(xsimd::default_arch::name());
}

void bm_eigen_gemm(benchmark::State& st) {
  const index_t m = st.range(0), k = st.range(1), n = st.range(2);
  double v = 0;
  for (auto _ : st) v = eigen_gemm_flops(m, k, n);
  st.counters["GFLOPs"] = v / 1e9;
  st.counters["eigen_ratio"] = 1.0;
  st.counters["peak_ratio"] = v / moela_bench::fma_peak_flops();
}

template <class F, class Mode = q::mode::fast>
void register_format(const std::string& name) {
  // (K, N): the decode shapes; names become gemv/<format>/<K>x<N>.
  for (auto [k, n] : {std::pair<index_t, index_t>{2048, 2048}, {2048, 10944}, {10944, 2048}, {7168, 2048},
                      {2048, 1408}}) {
    if (F::kind == q::format_kind::int8_group || F::kind == q::format_kind::int4_group)
      if (k % F::group != 0) continue;  // e.g. K = 10944 is not a multiple of 128
    benchmark::RegisterBenchmark(("gemv/" + name + "/" + std::to_string(k) + "x" + std::to_string(n)).c_str(),
                                 bm_gemv<F, Mode>)
        ->Args({k, n})
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
  }
  // M = 512: a prefill; 48 x 2048 x 1408: one routed expert's gate (or up) GEMM in a 512-token
  // V2-Lite prefill (3072 token-expert pairs over 64 experts), where the packed GEMM and the
  // dot-product tiles met on AVX2 (`gemm_pack_min_rows`).
  for (auto [m, n] : {std::pair<index_t, index_t>{512, 2048}, {48, 1408}})
    benchmark::RegisterBenchmark(("gemm/" + name + "/" + std::to_string(m) + "x2048x" + std::to_string(n)).c_str(),
                                 bm_gemm<F, Mode>)
        ->Args({m, 2048, n})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
}

const int registered = [] {
  for (auto [m, n] : {std::pair<index_t, index_t>{512, 2048}, {48, 1408}})
    benchmark::RegisterBenchmark(("gemm/eigen_f32/" + std::to_string(m) + "x2048x" + std::to_string(n)).c_str(),
                                 bm_eigen_gemm)
        ->Args({m, 2048, n})
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  register_format<q::f32>("f32");
  register_format<q::bf16>("bf16");
  register_format<q::fp16>("fp16");
  register_format<q::fp8_block<128, 128>>("fp8_block");
  register_format<q::fp8_block<128, 128>, q::fp8_mode::faithful>("fp8_block_faithful");
  register_format<q::fp8_block_e5m2<128, 128>>("fp8_block_e5m2");
  register_format<q::int8_rowwise<>>("int8_rowwise");
  register_format<q::int8_group<64>>("int8_group64");
  register_format<q::int4_group<32>>("int4_group32");
  register_format<q::int4_group<64>>("int4_group64");
  register_format<q::int4_group<128>>("int4_group128");
  register_format<q::int4_group_asym<64>>("int4_group64_asym");
  register_format<q::int8_rowwise<>, q::mode::int8_activations>("int8_rowwise_a8");
  register_format<q::int8_group<64>, q::mode::int8_activations>("int8_group64_a8");
  register_format<q::int4_group<32>, q::mode::int8_activations>("int4_group32_a8");
  register_format<q::int4_group<64>, q::mode::int8_activations>("int4_group64_a8");
  register_format<q::int4_group<128>, q::mode::int8_activations>("int4_group128_a8");
  register_format<q::int4_group_asym<64>, q::mode::int8_activations>("int4_group64_asym_a8");
  register_format<q::bf16, q::mode::bf16_activations>("bf16_a16");
  register_format<q::fp8_block<128, 128>, q::mode::bf16_activations>("fp8_block_a16");
  register_format<q::int4_group<32>, q::mode::bf16_activations>("int4_group32_a16");
  register_format<q::int4_group<128>, q::mode::bf16_activations>("int4_group128_a16");
  register_format<q::int4_group_asym<64>, q::mode::bf16_activations>("int4_group64_asym_a16");
  return 0;
}();

}  // namespace
