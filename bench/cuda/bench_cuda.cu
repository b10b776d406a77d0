// moela-cuda-bench: GPU benchmarks of the CUDA backend, timed with CUDA events.
//   gemm  : FP8 block-scaled GEMM vs cuBLASLt FP8 (per-tensor scales, BF16 out), BF16 GEMM vs
//           cuBLAS BF16 (FP32 out), INT8/INT4 group GEMMs, at M = N = K = 4096 and decode shapes.
//   mla   : absorbed MLA decode over the paged BF16 / FP8 cache (batch 64, context 4096,
//           128 heads), bytes moved per second and its ratio to the measured device-to-device
//           copy bandwidth.
//   moe   : one routed-expert layer (route + dispatch + grouped SwiGLU + combine).
// Usage: moela-cuda-bench [gemm|mla|moe|all] [--iters N]. Prints one line per case with the
// GPU's name. Exits 77 when there is no CUDA device.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "moela/backend/cuda.cuh"

using namespace moela;
using gpu::device_view;
using tag = cuda<90>;

namespace {

int iters = 20;

#define BENCH_CUBLAS(call)                                                                      \
  do {                                                                                          \
    const auto st_ = (call);                                                                    \
    if (st_ != 0) {                                                                             \
      std::fprintf(stderr, "%s failed with status %d\n", #call, static_cast<int>(st_));          \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

// Mean milliseconds of fn() over `iters` runs after 3 warm-up runs.
double time_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  MOELA_CUDA_CHECK(cudaEventCreate(&a));
  MOELA_CUDA_CHECK(cudaEventCreate(&b));
  MOELA_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) fn();
  MOELA_CUDA_CHECK(cudaEventRecord(b));
  MOELA_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  MOELA_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

// Fills device bytes with a hash of the index (no host round trip for large weights).
template <class T>
__global__ void fill_kernel(T* p, index_t n, unsigned seed, int mode) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  const float u = (h & 0xffffff) / 16777216.0f - 0.5f;  // [-0.5, 0.5)
  if constexpr (std::is_same_v<T, float>) {
    p[i] = mode == 1 ? 0.001f + 0.01f * (u + 0.5f) : u;  // mode 1: positive scales
  } else if constexpr (std::is_same_v<T, fp8_e4m3>) {
    p[i].bits = gpu::tiles::encode_e4m3(u * 400.0f);
  } else if constexpr (std::is_same_v<T, moela::bf16>) {
    p[i].bits = gpu::tiles::encode_bf16(u * 0.1f);
  } else if constexpr (std::is_same_v<T, std::int8_t>) {
    p[i] = static_cast<std::int8_t>(static_cast<int>(u * 250.0f));
  } else if constexpr (std::is_same_v<T, std::uint8_t>) {
    p[i] = static_cast<std::uint8_t>(h >> 8);
  } else {
    p[i].bits = static_cast<std::uint8_t>(h >> 8);
  }
}
template <class T, std::size_t R>
void fill(gpu::device_tensor<T, R>& t, unsigned seed, int mode = 0) {
  if (t.size() == 0) return;
  fill_kernel<T><<<gpu::detail::grid_for(t.size(), 256), 256>>>(t.data(), t.size(), seed, mode);
  MOELA_CUDA_CHECK_LAUNCH("fill");
}

std::string gpu_name() {
  cudaDeviceProp p{};
  MOELA_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return p.name;
}

// Device-to-device copy bandwidth (read + write bytes per second) over 1 GiB.
double copy_bandwidth() {
  const index_t n = index_t{1} << 28;
  gpu::device_tensor<float, 1> a({n}), b({n});
  a.zero();
  const double ms = time_ms([&] { MOELA_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n * 4, cudaMemcpyDeviceToDevice)); });
  return 2.0 * n * 4 / (ms * 1e-3);
}

void bench_gemm(index_t M, index_t N, index_t K) {
  gpu::device_tensor<float, 2> x({M, K}), y({M, N});
  fill(x, 1);
  const auto xc = device_view<const float, 2>(x.view());
  const double flop = 2.0 * M * N * K;
  // moela FP8 block (activation quantization included, as in a model).
  gpu::weight_store<gpu::fp8_block> w8;
  w8.codes = gpu::device_tensor<fp8_e4m3, 3>({1, N, K});
  w8.scales = gpu::device_tensor<float, 3>({1, gpu::tiles::blocks_of(N), gpu::tiles::blocks_of(K)});
  fill(w8.codes, 2);
  fill(w8.scales, 3, 1);
  gpu::device_tensor<fp8_e4m3, 2> xq({M, K});
  gpu::device_tensor<float, 2> xs({M, gpu::tiles::blocks_of(K)});
  quantize_activations(tag{}, xq.view(), xs.view(), xc);
  const double t_fp8 = time_ms([&] {
    matmul(tag{}, y.view(), device_view<const fp8_e4m3, 2>(xq.view()), device_view<const float, 2>(xs.view()), w8.view());
  });
  const double t_fp8q = time_ms([&] { quantize_activations(tag{}, xq.view(), xs.view(), xc); });

  // cuBLASLt FP8 (E4M3 x E4M3, per-tensor scales, FP32 compute, BF16 out), TN layout:
  // column-major D[N, M] = W[K, N]ᵀ · X[K, M], which is row-major y = x · Wᵀ.
  cublasLtHandle_t lt;
  BENCH_CUBLAS(cublasLtCreate(&lt));
  gpu::device_tensor<moela::bf16, 2> yb({M, N});
  gpu::device_tensor<float, 1> one({1});
  {
    const float h1 = 1.0f;
    MOELA_CUDA_CHECK(cudaMemcpy(one.data(), &h1, 4, cudaMemcpyHostToDevice));
  }
  cublasLtMatmulDesc_t desc;
  BENCH_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
  const float* sp = one.data();
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sp, sizeof(sp)));
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sp, sizeof(sp)));
  cublasLtMatrixLayout_t la, lb, lc;
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, N, K));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, M, K));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));
  const std::size_t ws_bytes = 32 << 20;
  gpu::device_tensor<std::uint8_t, 1> ws({static_cast<index_t>(ws_bytes)});
  cublasLtMatmulPreference_t pref;
  BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  BENCH_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                    sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  BENCH_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found));
  double t_lt = -1;
  if (found) {
    const float alpha = 1.0f, beta = 0.0f;
    t_lt = time_ms([&] {
      BENCH_CUBLAS(cublasLtMatmul(lt, desc, &alpha, w8.codes.data(), la, xq.data(), lb, &beta, yb.data(), lc,
                                  yb.data(), lc, &heur.algo, ws.data(), ws_bytes, nullptr));
    });
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(lt);

  // BF16: moela (FP32 activations) vs cuBLAS (BF16 activations), FP32 out.
  gpu::weight_store<gpu::bf16_dense> wb;
  wb.codes = gpu::device_tensor<moela::bf16, 3>({1, N, K});
  fill(wb.codes, 4);
  const double t_bf16 = time_ms([&] { matmul(tag{}, y.view(), xc, wb.view()); });
  cublasHandle_t h;
  BENCH_CUBLAS(cublasCreate(&h));
  gpu::device_tensor<moela::bf16, 2> xb({M, K});
  fill(xb, 5);
  const float alpha = 1.0f, beta = 0.0f;
  const double t_cublas = time_ms([&] {
    BENCH_CUBLAS(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                              &alpha, wb.codes.data(), CUDA_R_16BF, static_cast<int>(K), xb.data(), CUDA_R_16BF,
                              static_cast<int>(K), &beta, y.data(), CUDA_R_32F, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  });
  cublasDestroy(h);

  // INT8 / INT4 groups of 128.
  gpu::weight_store<gpu::int8_group<128>> wi8;
  wi8.codes = gpu::device_tensor<std::int8_t, 3>({1, N, K});
  wi8.scales = gpu::device_tensor<float, 3>({1, N, K / 128});
  fill(wi8.codes, 6);
  fill(wi8.scales, 7, 1);
  const double t_i8 = time_ms([&] { matmul(tag{}, y.view(), xc, wi8.view()); });
  gpu::weight_store<gpu::int4_group<128>> wi4;
  wi4.codes = gpu::device_tensor<int4x2, 3>({1, N, K / 2});
  wi4.scales = gpu::device_tensor<float, 3>({1, N, K / 128});
  fill(wi4.codes, 8);
  fill(wi4.scales, 9, 1);
  const double t_i4 = time_ms([&] { matmul(tag{}, y.view(), xc, wi4.view()); });

  auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
  std::printf("gemm M=%ld N=%ld K=%ld\n", M, N, K);
  std::printf("  fp8 block (moela)          %9.3f ms  %7.2f TFLOP/s  (+ activation quant %.3f ms)\n", t_fp8, tf(t_fp8), t_fp8q);
  if (t_lt > 0)
    std::printf("  fp8 per-tensor (cuBLASLt)  %9.3f ms  %7.2f TFLOP/s  ratio moela/cuBLASLt %.3f\n", t_lt, tf(t_lt),
                t_lt / t_fp8);
  else
    std::printf("  fp8 per-tensor (cuBLASLt)  no algorithm for this shape\n");
  std::printf("  bf16 (moela)               %9.3f ms  %7.2f TFLOP/s\n", t_bf16, tf(t_bf16));
  std::printf("  bf16 (cuBLAS)              %9.3f ms  %7.2f TFLOP/s  ratio moela/cuBLAS %.3f\n", t_cublas,
              tf(t_cublas), t_cublas / t_bf16);
  std::printf("  int8 g128 (moela)          %9.3f ms  %7.2f TFLOP/s\n", t_i8, tf(t_i8));
  std::printf("  int4 g128 (moela)          %9.3f ms  %7.2f TFLOP/s\n", t_i4, tf(t_i4));
}

template <class Layout>
void bench_mla(int B, int ctx, int H, double copy_bw) {
  const int pages_per_seq = (ctx + 63) / 64;
  gpu::latent_cache_store<Layout> store(static_cast<index_t>(B) * pages_per_seq, 512, 64);
  fill(store.data, 11);
  if constexpr (std::is_same_v<Layout, gpu::tiles::mla_fp8_record>) {
    // Valid records need sane scales: write real tokens through the cache writer.
    gpu::device_tensor<float, 2> ckv({static_cast<index_t>(B) * ctx, 512}), kpe({static_cast<index_t>(B) * ctx, 64});
    fill(ckv, 12);
    fill(kpe, 13);
    std::vector<int> hb(static_cast<std::size_t>(B) * ctx), hp(hb.size());
    for (int b = 0; b < B; ++b)
      for (int p = 0; p < ctx; ++p) {
        hb[static_cast<std::size_t>(b) * ctx + p] = b;
        hp[static_cast<std::size_t>(b) * ctx + p] = p;
      }
    auto db = gpu::to_device(tensor_view<const int, 1>(hb.data(), {static_cast<index_t>(hb.size())}));
    auto dp = gpu::to_device(tensor_view<const int, 1>(hp.data(), {static_cast<index_t>(hp.size())}));
    std::vector<int> bt(static_cast<std::size_t>(B) * pages_per_seq);
    for (std::size_t i = 0; i < bt.size(); ++i) bt[i] = static_cast<int>(i);
    auto dbt = gpu::to_device(tensor_view<const int, 2>(bt.data(), {B, pages_per_seq}));
    mla_cache_write(tag{}, store.view(), device_view<const int, 2>(dbt.view()), device_view<const int, 1>(db.view()),
                    device_view<const int, 1>(dp.view()), device_view<const float, 2>(ckv.view()),
                    device_view<const float, 2>(kpe.view()));
  }
  std::vector<int> bt(static_cast<std::size_t>(B) * pages_per_seq), lens(B, ctx);
  for (std::size_t i = 0; i < bt.size(); ++i) bt[i] = static_cast<int>(i);
  auto dbt = gpu::to_device(tensor_view<const int, 2>(bt.data(), {B, pages_per_seq}));
  auto dl = gpu::to_device(tensor_view<const int, 1>(lens.data(), {B}));
  gpu::device_tensor<float, 3> q({B, H, 576}), out({B, H, 512});
  gpu::device_tensor<float, 2> lse({B, H});
  fill(q, 14);
  gpu::caching_allocator pool;
  const double ms = time_ms([&] {
    mla_decode(tag{}, out.view(), lse.view(), device_view<const float, 3>(q.view()), store.view(),
               device_view<const int, 2>(dbt.view()), device_view<const int, 1>(dl.view()), 0.1352f, 0,
               gpu::default_stream(), pool);
  });
  const double row = std::is_same_v<Layout, moela::bf16> ? 1152.0 : 656.0;
  const double bytes = double(B) * ctx * row + double(B) * H * (576 + 512 + 1) * 4;
  const double bw = bytes / (ms * 1e-3);
  std::printf("mla decode %s B=%d ctx=%d H=%d  %9.3f ms  %8.1f GB/s  = %.3f x copy bandwidth (%.1f GB/s)\n",
              std::is_same_v<Layout, moela::bf16> ? "bf16" : "fp8 ", B, ctx, H, ms, bw / 1e9, bw / copy_bw,
              copy_bw / 1e9);
}

void bench_moe(index_t T, index_t D, index_t I, int E, int k) {
  gpu::weight_store<gpu::fp8_block> w1, w3, w2;
  for (auto* w : {&w1, &w3}) {
    w->codes = gpu::device_tensor<fp8_e4m3, 3>({E, I, D});
    w->scales = gpu::device_tensor<float, 3>({E, gpu::tiles::blocks_of(I), gpu::tiles::blocks_of(D)});
  }
  w2.codes = gpu::device_tensor<fp8_e4m3, 3>({E, D, I});
  w2.scales = gpu::device_tensor<float, 3>({E, gpu::tiles::blocks_of(D), gpu::tiles::blocks_of(I)});
  unsigned seed = 20;
  for (auto* w : {&w1, &w3, &w2}) {
    fill(w->codes, seed++);
    fill(w->scales, seed++, 1);
  }
  gpu::device_tensor<float, 2> x({T, D}), y({T, D}), logits({T, E}), weights({T, k});
  gpu::device_tensor<float, 1> bias({E});
  gpu::device_tensor<int, 2> ids({T, k});
  fill(x, 30);
  fill(logits, 31);
  fill(bias, 32);
  gpu::tiles::router_params rp;
  rp.experts = E;
  rp.k = k;
  rp.groups = E % 8 == 0 ? 8 : 1;
  rp.top_groups = rp.groups == 8 ? 4 : 1;
  gpu::caching_allocator pool;
  gpu::moe_plan plan(E, k, T, pool);
  const double ms = time_ms([&] {
    route(tag{}, ids.view(), weights.view(), device_view<const float, 2>(logits.view()),
          device_view<const float, 1>(bias.view()), rp);
    moe_experts(tag{}, y.view(), device_view<const float, 2>(x.view()), device_view<const int, 2>(ids.view()),
                device_view<const float, 2>(weights.view()), w1.view(), w3.view(), w2.view(), plan,
                quant::mode::faithful{}, gpu::default_stream(), pool);
  });
  const double flop = 2.0 * T * k * 3 * D * I;
  std::printf("moe layer fp8 T=%ld D=%ld I=%ld E=%d k=%d  %9.3f ms  %7.2f TFLOP/s\n", T, D, I, E, k, ms,
              flop / (ms * 1e-3) / 1e12);
}

}  // namespace

int main(int argc, char** argv) {
  std::string what = "all";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::atoi(argv[++i]);
    else what = argv[i];
  }
  if (gpu::device_count() == 0) {
    std::puts("moela-cuda-bench: no CUDA device");
    return 77;
  }
  try {
    std::printf("moela-cuda-bench on %s (sm_%d)\n", gpu_name().c_str(), gpu::current_sm());
    if (what == "all" || what == "gemm") {
      bench_gemm(4096, 4096, 4096);
      bench_gemm(64, 7168, 2048);   // decode-sized: 64 tokens through a down projection
      bench_gemm(128, 2048, 7168);  // decode-sized: an expert's gate projection
    }
    if (what == "all" || what == "mla") {
      const double bw = copy_bandwidth();
      bench_mla<moela::bf16>(64, 4096, 128, bw);
      bench_mla<gpu::tiles::mla_fp8_record>(64, 4096, 128, bw);
    }
    if (what == "all" || what == "moe") {
      bench_moe(256, 2048, 1408, 64, 6);   // DeepSeek-V2-Lite layer shapes
      bench_moe(64, 7168, 2048, 256, 8);   // DeepSeek-V3 layer shapes, decode batch
    }
  } catch (const moela::error& e) {
    std::fprintf(stderr, "moela-cuda-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
