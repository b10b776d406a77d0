#pragma once
// Shared helpers of moela-bench: the machine's reference figures, measured once per process in
// the same run as the kernels, so every kernel figure can be reported as a ratio.
//
//  - triad_bytes_per_s(): STREAM triad a[i] = b[i] + s*c[i] over 3 x 128 MiB arrays on all
//    moela threads; bytes counted as STREAM does (3 x 4 bytes per element); best of 5.
//  - fma_peak_flops(): FP32 FMA throughput of the build's SIMD arch on all moela threads
//    (12 independent accumulator chains in registers, 2 FLOP per lane per FMA); best of 7.
//  - triad_bytes_per_s_now(): the same triad, measured at the call (the e2e decode benchmark
//    measures it before and after its timed loop and divides by their mean).
//  - Registered as benchmarks too (`ref/triad`, `ref/fma_peak`), so their values appear in output.

#include <benchmark/benchmark.h>

#include <moela/backend/cpu/parallel_for.hpp>
#include <moela/core/tensor.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

namespace moela_bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// One triad pass a = b + 3c on all moela threads: bytes counted as STREAM does (3 x 4 per element) over seconds.
inline double triad_pass(moela::tensor<float, 1>& a, const moela::tensor<float, 1>& b, const moela::tensor<float, 1>& c) {
  const moela::index_t n = a.size();
  const double t0 = now_s();
  moela::parallel_for(n, [&](moela::index_t i0, moela::index_t i1) {
    float* MOELA_RESTRICT pa = a.data();
    const float* MOELA_RESTRICT pb = b.data();
    const float* MOELA_RESTRICT pc = c.data();
    for (moela::index_t i = i0; i < i1; ++i) pa[i] = pb[i] + 3.0f * pc[i];
  });
  const double bps = 3.0 * 4.0 * double(n) / (now_s() - t0);
  benchmark::DoNotOptimize(a.data());
  return bps;
}

/// Best of `reps` triad passes over 3 x 128 MiB arrays allocated and filled on the first call and
/// kept (no page faults in later measurements); the first pass of the first call is a warm-up.
inline double measure_triad(int reps) {
  const moela::index_t n = moela::index_t{32} << 20;  // 32 Mi floats = 128 MiB per array
  static moela::tensor<float, 1> a({n}), b({n}), c({n});
  static const bool warm = [] {
    moela::parallel_for(n, [](moela::index_t i0, moela::index_t i1) {
      for (moela::index_t i = i0; i < i1; ++i) b.data()[i] = 1.0f, c.data()[i] = 2.0f;
    });
    triad_pass(a, b, c);
    return true;
  }();
  (void)warm;
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) best = std::max(best, triad_pass(a, b, c));
  return best;
}

inline double measure_fma_peak() {
  // 12 independent accumulator chains in named registers (an array indexed in a loop was kept
  // on the stack by GCC, so every FMA waited on a store-to-load round trip: ~8x below peak).
  // 12 chains cover FMA latency (4-5 cycles) x 2 FMA pipes of current x86 cores.
  using batch = xsimd::batch<float>;
  const long iters = 4'000'000;
  double best = 0;
  for (int rep = 0; rep < 7; ++rep) {
    const int nt = moela::num_threads();
    std::vector<float> sink(static_cast<std::size_t>(nt) * 16);
    const double t0 = now_s();
    moela::parallel_for(nt, [&](moela::index_t t0_, moela::index_t t1_) {
      for (moela::index_t t = t0_; t < t1_; ++t) {
        batch a0(1.00f), a1(1.01f), a2(1.02f), a3(1.03f), a4(1.04f), a5(1.05f), a6(1.06f), a7(1.07f),
            a8(1.08f), a9(1.09f), a10(1.10f), a11(1.11f);
        const batch m(0.999999f), c(1e-7f);
        for (long i = 0; i < iters; ++i) {
          a0 = xsimd::fma(a0, m, c), a1 = xsimd::fma(a1, m, c), a2 = xsimd::fma(a2, m, c);
          a3 = xsimd::fma(a3, m, c), a4 = xsimd::fma(a4, m, c), a5 = xsimd::fma(a5, m, c);
          a6 = xsimd::fma(a6, m, c), a7 = xsimd::fma(a7, m, c), a8 = xsimd::fma(a8, m, c);
          a9 = xsimd::fma(a9, m, c), a10 = xsimd::fma(a10, m, c), a11 = xsimd::fma(a11, m, c);
        }
        const batch s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
        sink[static_cast<std::size_t>(t) * 16] = s.get(0);
      }
    }, 1);
    const double dt = now_s() - t0;
    benchmark::DoNotOptimize(sink.data());
    best = std::max(best, double(nt) * double(iters) * 12.0 * batch::size * 2.0 / dt);
  }
  return best;
}

/// STREAM-triad bandwidth in bytes/s of this machine, with the current thread count: measured
/// once per process (best of 5).
inline double triad_bytes_per_s() {
  static const double v = measure_triad(5);
  return v;
}

/// The triad measured now (best of 3, ~0.1 s): for benchmarks that take their roofline from the
/// bandwidth of the minutes they ran in, measured before and after the timed loop. On a shared
/// host the bandwidth moves by tens of percent between runs (docs/performance.md).
inline double triad_bytes_per_s_now() { return measure_triad(3); }

/// FP32 FMA peak in FLOP/s of this build's SIMD arch, with the current thread count.
inline double fma_peak_flops() {
  static const double v = measure_fma_peak();
  return v;
}

}  // namespace moela_bench
