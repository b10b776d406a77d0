// Reference figures of the machine, measured by the same binary as every kernel benchmark.
#include "support.hpp"

static void bm_triad(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(moela_bench::triad_bytes_per_s());
  st.counters["triad_GBps"] = moela_bench::triad_bytes_per_s() / 1e9;
  st.counters["threads"] = moela::num_threads();
}
BENCHMARK(bm_triad)->Name("ref/triad")->Iterations(1);

static void bm_fma_peak(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(moela_bench::fma_peak_flops());
  st.counters["peak_GFLOPs"] = moela_bench::fma_peak_flops() / 1e9;
  st.counters["simd_lanes"] = xsimd::batch<float>::size;
}
BENCHMARK(bm_fma_peak)->Name("ref/fma_peak")->Iterations(1);
