#pragma once
/// \file moela/backend/cuda/kernels/matmul.cuh
/// Quantized matrix multiplication on the GPU: `y[M, N] = x[M, K] · W[N, K]ᵀ` for FP8
/// block-scaled, INT8 / INT4 group-quantized and BF16 weights, plain and expert-grouped (MoE).
///
/// Weight formats (tags in moela::gpu) and their device layouts, one matrix per expert
/// (a plain weight is one expert), all row-major and K-contiguous:
///  - `fp8_block`: codes `fp8_e4m3 [E, N, K]`, scales `float [E, ceil(N/128), ceil(K/128)]`
///    (DeepSeek `weight_scale_inv`, a dequantization multiplier; partial edge blocks allowed).
///  - `int8_group<G>`: codes `int8 [E, N, K]`, scales `float [E, N, K/G]`, `w = q * s`.
///  - `int4_group<G>`: codes `int4x2 [E, N, K/2]` (even k in the low nibble), scales
///    `float [E, N, K/G]`, `w = q * s`.
///  - `bf16_dense`: codes `bf16 [E, N, K]`, no scales.
/// `device_weights<F>` views such data (already on the device); `weight_store<F>` owns it and
/// is built by `gpu::upload(const qmatrix<Format>&)` from the CPU backend's weights
/// (quant::fp8_block<128, 128>, quant::int8_group<G>, quant::int4_group<G> symmetric, all with
/// float scales, and quant::bf16), or from raw host tensors by `upload_*`.
///
/// Modes, as the CPU `matmul` (moela/ops/matmul.hpp):
///  - `quant::mode::fast` (default): weights decoded to fp32, fp32 activations, each group's
///    partial sum scaled by the weight scale (`acc + P · s`); BF16 accumulates directly.
///  - `quant::mode::faithful` (FP8 only, DeepSeek W8A8, spec §8.6): the activation is quantized
///    per 1x128 group (ACT_V3: `s = max(amax, 1e-4) / 448`, `q = e4m3(x / s)`), each 128-long
///    partial sum of products of the decoded codes is promoted into the fp32 accumulator as
///    `acc + (P · a_s) · b_s`.
/// Output is fp32.
///
/// Kernels:
///  - FP8 on sm_89+ (tag `cuda<SM>` with SM >= 89 and a device of compute capability >= 8.9):
///    FP8 tensor cores through `mma.sync.m16n8k32.e4m3` (64x64 outputs per 4-warp block, one
///    128-deep K group per shared-memory stage, the 128-long partial promoted to the fp32
///    accumulator with both scales after each group). Needs K and the activation row stride to
///    be multiples of 16 bytes; otherwise, or with `gpu::set_tensor_cores(false)`, the
///    CUDA-core kernel runs.
///  - Everything else: CUDA-core tiles (64x64 outputs per 256-thread block, 32-deep K slices,
///    4x4 outputs per thread, fp32 FMA), the same code for sm_80 and sm_90.
/// The per-element arithmetic is the tested `tiles/quant.hpp` and `tiles/mma.hpp`. Not written
/// yet: wgmma/TMA pipelines (sm_90a), bf16/int8 tensor-core paths (docs/cuda.md).

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moela/backend/cuda/kernels/common.cuh"
#include "moela/backend/cuda/tiles/mma.hpp"
#include "moela/backend/cuda/tiles/quant.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/quant/formats.hpp"
#include "moela/quant/qmatrix.hpp"

namespace moela::gpu {

/// FP8 E4M3 weights with one fp32 scale per 128x128 block.
struct fp8_block {
  using code = fp8_e4m3;
  static constexpr int group = tiles::fp8_block;
  static constexpr int codes_per_k = 1;
  static constexpr const char* name = "fp8_block";
};
/// INT8 weights with one fp32 scale per G consecutive inputs of a row.
template <int G>
struct int8_group {
  static_assert(G % 32 == 0, "group sizes are multiples of 32");
  using code = std::int8_t;
  static constexpr int group = G;
  static constexpr int codes_per_k = 1;
  static constexpr const char* name = "int8_group";
};
/// INT4 (two's complement, packed two per byte) weights with one fp32 scale per G inputs.
template <int G>
struct int4_group {
  static_assert(G % 32 == 0, "group sizes are multiples of 32");
  using code = int4x2;
  static constexpr int group = G;
  static constexpr int codes_per_k = 2;
  static constexpr const char* name = "int4_group";
};
/// BF16 weights, no scales.
struct bf16_dense {
  using code = moela::bf16;
  static constexpr int group = 0;
  static constexpr int codes_per_k = 1;
  static constexpr const char* name = "bf16";
};

/// Whether FP8 GEMMs may use tensor cores where the architecture has them (default true).
/// Turning it off selects the CUDA-core kernel (tests compare the two).
inline bool& tensor_cores_enabled() {
  static bool on = true;
  return on;
}
inline void set_tensor_cores(bool on) { tensor_cores_enabled() = on; }

template <class F>
concept weight_format = std::is_same_v<F, fp8_block> || std::is_same_v<F, bf16_dense> ||
                        std::is_same_v<F, int8_group<F::group>> || std::is_same_v<F, int4_group<F::group>>;

/// Device weights of format F for `experts` matrices of `[rows, cols]`; see the file comment.
template <weight_format F>
struct device_weights {
  const_device_view<typename F::code, 3> codes;
  const_device_view<float, 3> scales;  // empty for bf16_dense

  index_t experts() const { return codes.extent(0); }
  index_t rows() const { return codes.extent(1); }
  index_t cols() const { return codes.extent(2) * F::codes_per_k; }

  /// Throws moela::error unless codes and scales have the shapes of the format.
  void validate(const char* op) const {
    const index_t E = experts(), N = rows(), K = cols();
    check(codes.is_contiguous(), op, ": weight codes ", to_string(codes.shape()), " must be contiguous");
    if constexpr (std::is_same_v<F, fp8_block>) {
      check(scales.extent(0) == E && scales.extent(1) == tiles::blocks_of(N) && scales.extent(2) == tiles::blocks_of(K),
            op, ": fp8_block scales are ", to_string(scales.shape()), " but weights [", E, ", ", N, ", ", K,
            "] need [", E, ", ", tiles::blocks_of(N), ", ", tiles::blocks_of(K), "]");
    } else if constexpr (F::group > 0) {
      check(K % F::group == 0, op, ": ", F::name, " needs K (", K, ") to be a multiple of the group ", F::group);
      check(scales.extent(0) == E && scales.extent(1) == N && scales.extent(2) == K / F::group, op, ": ", F::name,
            " scales are ", to_string(scales.shape()), " but [", E, ", ", N, ", ", K / F::group, "] was expected");
    }
    if constexpr (F::group != 0) check(scales.is_contiguous(), op, ": weight scales must be contiguous");
  }
};

/// Owning device copy of weights of format F (see `upload_*`).
template <weight_format F>
struct weight_store {
  device_tensor<typename F::code, 3> codes;
  device_tensor<float, 3> scales;
  device_weights<F> view() const { return {codes.view(), scales.view()}; }
  operator device_weights<F>() const { return view(); }  // NOLINT
};

namespace detail {
template <class T, std::size_t R>
tensor_view<const T, 3> as_experts(const_view<T, R> v) {
  if constexpr (R == 3) {
    return v;
  } else {
    static_assert(R == 2);
    check(v.is_contiguous(), "upload: host weights ", to_string(v.shape()), " must be contiguous");
    return tensor_view<const T, 3>(v.data(), {1, v.extent(0), v.extent(1)});
  }
}
template <class F, class Codes, class Scales>
weight_store<F> upload_store(Codes codes, Scales scales, const stream& s) {
  weight_store<F> w;
  const auto c = as_experts(codes);
  w.codes = to_device(c, s);
  if constexpr (F::group != 0) w.scales = to_device(as_experts(scales), s);
  w.view().validate("upload");
  return w;
}
}  // namespace detail

/// Uploads FP8 block weights: codes `[N, K]` or `[E, N, K]`, scales `[ceil(N/128), ceil(K/128)]`
/// (or with a leading E).
template <std::size_t R>
weight_store<fp8_block> upload_fp8_block(const_view<fp8_e4m3, R> codes, const_view<float, R> scales,
                                         const stream& s = default_stream()) {
  return detail::upload_store<fp8_block>(codes, scales, s);
}
/// Uploads INT8 group weights: codes `[N, K]` / `[E, N, K]`, scales `[N, K/G]` / `[E, N, K/G]`.
template <int G, std::size_t R>
weight_store<int8_group<G>> upload_int8_group(const_view<std::int8_t, R> codes, const_view<float, R> scales,
                                              const stream& s = default_stream()) {
  return detail::upload_store<int8_group<G>>(codes, scales, s);
}
/// Uploads INT4 group weights: codes `[N, K/2]` / `[E, N, K/2]`, scales `[N, K/G]` / `[E, N, K/G]`.
template <int G, std::size_t R>
weight_store<int4_group<G>> upload_int4_group(const_view<int4x2, R> codes, const_view<float, R> scales,
                                              const stream& s = default_stream()) {
  return detail::upload_store<int4_group<G>>(codes, scales, s);
}
/// Uploads BF16 weights `[N, K]` / `[E, N, K]`.
template <std::size_t R>
weight_store<bf16_dense> upload_bf16(const_view<moela::bf16, R> codes, const stream& s = default_stream()) {
  return detail::upload_store<bf16_dense>(codes, const_view<float, R>{}, s);
}

namespace detail {
/// The device format a CPU weight format maps onto (void when there is none).
template <class Format>
struct device_format_of {
  using type = void;
};
template <>
struct device_format_of<quant::fp8_block<128, 128, fp8_e4m3>> {
  using type = fp8_block;
};
template <int G>
  requires(G % 32 == 0)
struct device_format_of<quant::int8_group<G, float>> {
  using type = int8_group<G>;
};
template <int G>
struct device_format_of<quant::int4_group<G, quant::int4_zero::symmetric, float>> {
  using type = int4_group<G>;
};
template <>
struct device_format_of<quant::dense<moela::bf16>> {
  using type = bf16_dense;
};

// Rows of a possibly row-strided host view, packed into a contiguous host tensor.
template <class T, class U>
tensor<T, 2> pack_rows(const_view<U, 2> v) {
  static_assert(sizeof(T) == sizeof(U) && std::is_trivially_copyable_v<U>);
  tensor<T, 2> t({v.extent(0), v.extent(1)});
  for (index_t r = 0; r < v.extent(0); ++r)
    std::memcpy(t.data() + r * v.extent(1), &v(r, 0), sizeof(T) * static_cast<std::size_t>(v.extent(1)));
  return t;
}
}  // namespace detail

/// Copies a CPU-backend weight matrix to the device (one expert). Supported: fp8_block<128, 128>
/// (E4M3), int8_group<G> (G a multiple of 32), int4_group<G> symmetric, all with float scales,
/// and bf16; other formats fail to compile with a message.
template <class Format>
auto upload(const qmatrix<Format>& w, const stream& s = default_stream()) {
  using D = typename detail::device_format_of<Format>::type;
  static_assert(!std::is_void_v<D>,
                "gpu::upload: this weight format has no CUDA kernel (supported: fp8_block<128,128> E4M3, "
                "int8_group<G % 32 == 0>, int4_group<G> symmetric, float scales, and bf16)");
  weight_store<D> out;
  auto codes = detail::pack_rows<typename D::code>(w.codes());
  out.codes = to_device(tensor_view<const typename D::code, 3>(codes.data(), {1, codes.extent(0), codes.extent(1)}), s);
  if constexpr (D::group != 0) {
    auto sc = w.scales();
    out.scales = to_device(tensor_view<const float, 3>(sc.data(), {1, sc.extent(0), sc.extent(1)}), s);
  }
  out.view().validate("gpu::upload");
  return out;
}

namespace detail {

inline constexpr int gemm_bm = 64, gemm_bn = 64, gemm_bk = 32, gemm_threads = 256;

/// Parameters of one (grouped) GEMM launch. Row tiles come either from a plain grid
/// (`tile_expert == nullptr`: expert 0, rows [0, M)) or from a tile list built on the device
/// for the expert-sorted rows of an MoE layer.
struct gemm_params {
  float* y;
  index_t ldy;
  const void* a;        // float [M, K] or fp8 codes [M, K]
  const float* a_scale; // [M, ceil(K/128)] (fp8 activations only)
  index_t lda, ldas;
  const void* w;        // codes [E, N, K / codes_per_k]
  const float* ws;      // scales
  index_t w_expert_stride, ws_expert_stride, ws_row_stride;
  int M, N, K;
  const int* row_offsets;  // [E + 1] (grouped) or null
  const int* tile_expert;  // [max_tiles]: expert of row tile t, -1 past the end
  const int* tile_row;     // [max_tiles]: first row of row tile t
};

template <class F>
__device__ inline float load_weight(const gemm_params& p, int e, int n, int k) {
  const auto* base = static_cast<const typename F::code*>(p.w) + e * p.w_expert_stride;
  if constexpr (std::is_same_v<F, fp8_block>) {
    return tiles::decode_e4m3(base[static_cast<index_t>(n) * p.K + k].bits);
  } else if constexpr (std::is_same_v<F, bf16_dense>) {
    return tiles::decode_bf16(base[static_cast<index_t>(n) * p.K + k].bits);
  } else if constexpr (F::codes_per_k == 1) {
    return static_cast<float>(base[static_cast<index_t>(n) * p.K + k]);
  } else {
    const std::uint8_t b = base[static_cast<index_t>(n) * (p.K / 2) + k / 2].bits;
    return tiles::dequant_int4(b, k & 1, 1.0f);
  }
}

template <class F>
__device__ inline float weight_scale(const gemm_params& p, int e, int n, int g) {
  const float* s = p.ws + e * p.ws_expert_stride;
  if constexpr (std::is_same_v<F, fp8_block>) return s[(n / tiles::fp8_block) * p.ws_row_stride + g];
  else return s[static_cast<index_t>(n) * p.ws_row_stride + g];
}

/// The tiled kernel; `FP8A`: the activation operand is e4m3 codes with 1x128 scales.
template <int SM, class F, bool FP8A>
__global__ void __launch_bounds__(gemm_threads) gemm_kernel(gemm_params p) {
  constexpr int BM = gemm_bm, BN = gemm_bn, BK = gemm_bk;
  __shared__ float as[BK][BM + 4];
  __shared__ float bs[BK][BN + 4];
  int e = 0, m0 = 0, m_end = p.M;
  if (p.tile_expert) {
    e = p.tile_expert[blockIdx.y];
    if (e < 0) return;
    m0 = p.tile_row[blockIdx.y];
    m_end = p.row_offsets[e + 1];
  } else {
    m0 = blockIdx.y * BM;
  }
  const int n0 = blockIdx.x * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {}, part[4][4] = {};
  constexpr int G = F::group;
  for (int k0 = 0; k0 < p.K; k0 += BK) {
    for (int i = tid; i < BM * BK; i += gemm_threads) {
      const int r = i / BK, c = i % BK, m = m0 + r, k = k0 + c;
      float v = 0.0f;
      if (m < m_end && k < p.K) {
        if constexpr (FP8A) v = tiles::decode_e4m3(static_cast<const std::uint8_t*>(p.a)[m * p.lda + k]);
        else v = static_cast<const float*>(p.a)[m * p.lda + k];
      }
      as[c][r] = v;
    }
    for (int i = tid; i < BN * BK; i += gemm_threads) {
      const int r = i / BK, c = i % BK, n = n0 + r, k = k0 + c;
      bs[c][r] = (n < p.N && k < p.K) ? load_weight<F>(p, e, n, k) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = as[kk][ty + 16 * i];
        b[i] = bs[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if constexpr (G == 0) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
          else part[i][j] = fmaf(a[i], b[j], part[i][j]);
        }
    }
    __syncthreads();
    if constexpr (G != 0) {
      const int kn = k0 + BK;
      if (kn % G == 0 || kn >= p.K) {  // end of a scale group: promote
        const int g = k0 / G;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = m0 + ty + 16 * i;
          float sa = 1.0f;
          if constexpr (FP8A) sa = m < m_end ? p.a_scale[m * p.ldas + g] : 0.0f;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            const float sb = n < p.N ? weight_scale<F>(p, e, n, g) : 0.0f;
            acc[i][j] = tiles::promote(acc[i][j], part[i][j], sa, sb);
            part[i][j] = 0.0f;
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n < p.N) p.y[m * p.ldy + n] = acc[i][j];
    }
  }
}

/// ACT_V3 activation quantization: one warp per (row, 128-group).
template <int SM>
__global__ void act_quant_kernel(std::uint8_t* q, float* qs, const float* x, index_t ldq, index_t ldqs,
                                 index_t ldx, int M, int K) {
  const int groups = tiles::blocks_of(K);
  const index_t w = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= static_cast<index_t>(M) * groups) return;
  const int m = static_cast<int>(w / groups), g = static_cast<int>(w % groups);
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int k = g * tiles::fp8_block + lane + 32 * i;
    v[i] = k < K ? x[m * ldx + k] : 0.0f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(full_mask, amax, o));
  const float s = tiles::act_scale(amax);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int k = g * tiles::fp8_block + lane + 32 * i;
    if (k < K) q[m * ldq + k] = tiles::act_quantize(v[i], s);
  }
  if (lane == 0) qs[m * ldqs + g] = s;
}


inline constexpr int mma_bm = 64, mma_bn = 64, mma_threads = 128, mma_row_bytes = tiles::fp8_block + 16;

/// D += A · B for one m16n8k32 FP8 tile (sm_89+).
__device__ inline void mma_e4m3(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d;
  (void)a;
  (void)b;
  __trap();  // never launched below sm_89: the launcher checks the device
#endif
}

/// FP8 block-scaled GEMM on FP8 tensor cores; 4 warps, each 32x32 outputs (2 x 4 MMA tiles).
template <int SM>
__global__ void __launch_bounds__(mma_threads) gemm_fp8_mma_kernel(gemm_params p) {
  __shared__ __align__(16) std::uint8_t as[mma_bm][mma_row_bytes];
  __shared__ __align__(16) std::uint8_t bs[mma_bn][mma_row_bytes];
  int e = 0, m0 = 0, m_end = p.M;
  if (p.tile_expert) {
    e = p.tile_expert[blockIdx.y];
    if (e < 0) return;
    m0 = p.tile_row[blockIdx.y];
    m_end = p.row_offsets[e + 1];
  } else {
    m0 = blockIdx.y * mma_bm;
  }
  const int n0 = blockIdx.x * mma_bn;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const auto* A = static_cast<const std::uint8_t*>(p.a);
  const auto* W = static_cast<const std::uint8_t*>(p.w) + e * p.w_expert_stride;
  const float* ws = p.ws + e * p.ws_expert_stride + (n0 / tiles::fp8_block) * p.ws_row_stride;
  float acc[2][4][4] = {};
  const int groups = tiles::blocks_of(p.K);
  for (int g = 0; g < groups; ++g) {
    const int k0 = g * tiles::fp8_block;
    __syncthreads();
    for (int i = tid; i < mma_bm * (tiles::fp8_block / 16); i += mma_threads) {
      const int r = i / (tiles::fp8_block / 16), c = (i % (tiles::fp8_block / 16)) * 16, k = k0 + c;
      uint4 va = make_uint4(0, 0, 0, 0), vb = make_uint4(0, 0, 0, 0);
      if (m0 + r < m_end && k < p.K) va = *reinterpret_cast<const uint4*>(A + (m0 + r) * p.lda + k);
      if (n0 + r < p.N && k < p.K) vb = *reinterpret_cast<const uint4*>(W + static_cast<index_t>(n0 + r) * p.K + k);
      *reinterpret_cast<uint4*>(&as[r][c]) = va;
      *reinterpret_cast<uint4*>(&bs[r][c]) = vb;
    }
    __syncthreads();
    float part[2][4][4] = {};
#pragma unroll
    for (int ks = 0; ks < tiles::fp8_block; ks += 32) {
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const auto c = tiles::mma_a_coord(lane, r, 0);
          af[mi][r] = *reinterpret_cast<const unsigned*>(&as[wm + mi * 16 + c.row][ks + c.col]);
        }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const auto c = tiles::mma_b_coord(lane, r, 0);
          bf[ni][r] = *reinterpret_cast<const unsigned*>(&bs[wn + ni * 8 + c.col][ks + c.row]);
        }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_e4m3(part[mi][ni], af[mi], bf[ni]);
    }
    const float sb = ws[g];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int m = m0 + wm + mi * 16 + tiles::mma_c_coord(lane, v).row;
        const float sa = m < m_end ? p.a_scale[m * p.ldas + g] : 0.0f;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) acc[mi][ni][v] = tiles::promote(acc[mi][ni][v], part[mi][ni][v], sa, sb);
      }
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const auto c = tiles::mma_c_coord(lane, v);
        const int m = m0 + wm + mi * 16 + c.row, n = n0 + wn + ni * 8 + c.col;
        if (m < m_end && n < p.N) p.y[m * p.ldy + n] = acc[mi][ni][v];
      }
}

/// Whether the FP8 tensor-core kernel can run these operands on the current device.
template <int SM>
bool use_fp8_mma(const gemm_params& p) {
  if constexpr (SM < 89) {
    return false;
  } else {
    if (!tensor_cores_enabled()) return false;
    int dev = 0, major = 0, minor = 0;
    MOELA_CUDA_CHECK(cudaGetDevice(&dev), "matmul");
    MOELA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "matmul");
    MOELA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "matmul");
    auto aligned = [](const void* q) { return reinterpret_cast<std::uintptr_t>(q) % 16 == 0; };
    return major * 10 + minor >= 89 && p.K % 16 == 0 && p.lda % 16 == 0 && p.w_expert_stride % 16 == 0 &&
           aligned(p.a) && aligned(p.w);
  }
}

template <int SM, class F, bool FP8A>
void launch_gemm(const gemm_params& p, unsigned row_tiles, const stream& s) {
  static_assert(gemm_bm == mma_bm && gemm_bn == mma_bn, "the two FP8 kernels share the row-tile list");
  const dim3 grid(static_cast<unsigned>((p.N + gemm_bn - 1) / gemm_bn), row_tiles);
  if (grid.x == 0 || grid.y == 0) return;
  if constexpr (FP8A) {
    if (use_fp8_mma<SM>(p)) {
      gemm_fp8_mma_kernel<SM><<<grid, mma_threads, 0, s.get()>>>(p);
      return;
    }
  }
  gemm_kernel<SM, F, FP8A><<<grid, gemm_threads, 0, s.get()>>>(p);
}

template <class F>
void fill_weight_params(gemm_params& p, const device_weights<F>& w) {
  p.w = w.codes.data();
  p.w_expert_stride = w.codes.stride(0);
  if constexpr (F::group != 0) {
    p.ws = w.scales.data();
    p.ws_expert_stride = w.scales.stride(0);
    p.ws_row_stride = w.scales.stride(1);
  }
  p.N = static_cast<int>(w.rows());
  p.K = static_cast<int>(w.cols());
}

}  // namespace detail
}  // namespace moela::gpu

namespace moela {

/// Quantizes `x[M, K]` per 1x128 group (ACT_V3 contract): `q[M, K]` e4m3 codes and
/// `scales[M, ceil(K/128)]`. The last group of a row may be partial.
template <int SM>
void quantize_activations(cuda<SM>, gpu::device_view<fp8_e4m3, 2> q, gpu::device_view<float, 2> scales,
                          gpu::device_view<const float, 2> x, const gpu::stream& s = gpu::default_stream()) {
  const index_t M = x.extent(0), K = x.extent(1);
  check(q.shape() == x.shape() && scales.extent(0) == M && scales.extent(1) == gpu::tiles::blocks_of(K),
        "quantize_activations: x ", to_string(x.shape()), ", q ", to_string(q.shape()), ", scales ",
        to_string(scales.shape()), " (want q like x and scales [M, ceil(K/128)])");
  gpu::detail::check_rows("quantize_activations", "x", x);
  gpu::detail::check_rows("quantize_activations", "q", q);
  gpu::detail::check_rows("quantize_activations", "scales", scales);
  const index_t warps = M * gpu::tiles::blocks_of(K);
  if (warps == 0) return;
  gpu::detail::act_quant_kernel<SM><<<gpu::detail::grid_for(warps * 32, 256), 256, 0, s.get()>>>(
      reinterpret_cast<std::uint8_t*>(q.data()), scales.data(), x.data(), q.stride(0), scales.stride(0),
      x.stride(0), static_cast<int>(M), static_cast<int>(K));
  MOELA_CUDA_CHECK_LAUNCH("quantize_activations: x ", to_string(x.shape()));
}

/// FP8 block-scaled GEMM on pre-quantized activations: `y[M, N] = dequant(xq, xs) · dequant(W)ᵀ`
/// with per-128 promotion (spec §8.6). `w` must hold one expert.
template <int SM>
void matmul(cuda<SM>, gpu::device_view<float, 2> y, gpu::device_view<const fp8_e4m3, 2> xq,
            gpu::device_view<const float, 2> xs, const gpu::device_weights<gpu::fp8_block>& w,
            const gpu::stream& s = gpu::default_stream()) {
  w.validate("matmul");
  const index_t M = xq.extent(0), K = xq.extent(1);
  check(w.experts() == 1 && K == w.cols(), "matmul: x is ", to_string(xq.shape()), " but W is [", w.rows(), ", ",
        w.cols(), "] (K must match, one expert)");
  check(y.extent(0) == M && y.extent(1) == w.rows(), "matmul: y is ", to_string(y.shape()), " but [", M, ", ",
        w.rows(), "] was expected");
  check(xs.extent(0) == M && xs.extent(1) == gpu::tiles::blocks_of(K), "matmul: activation scales are ",
        to_string(xs.shape()), " but [", M, ", ", gpu::tiles::blocks_of(K), "] was expected");
  gpu::detail::check_rows("matmul", "y", y);
  gpu::detail::check_rows("matmul", "x", xq);
  gpu::detail::check_rows("matmul", "activation scales", xs);
  gpu::detail::gemm_params p{};
  gpu::detail::fill_weight_params(p, w);
  p.y = y.data();
  p.ldy = y.stride(0);
  p.a = xq.data();
  p.lda = xq.stride(0);
  p.a_scale = xs.data();
  p.ldas = xs.stride(0);
  p.M = static_cast<int>(M);
  gpu::detail::launch_gemm<SM, gpu::fp8_block, true>(p, gpu::detail::grid_for(M, gpu::detail::gemm_bm), s);
  MOELA_CUDA_CHECK_LAUNCH("matmul fp8: x ", to_string(xq.shape()), ", W [", w.rows(), ", ", w.cols(), "]");
}

/// `y[M, N] = x[M, K] · Wᵀ` for any weight format (one expert), fast mode: weights decoded to
/// fp32, fp32 activations (see the file comment).
template <int SM, class F>
void matmul(cuda<SM>, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x,
            const gpu::device_weights<F>& w, const gpu::stream& s = gpu::default_stream()) {
  w.validate("matmul");
  const index_t M = x.extent(0), K = x.extent(1);
  check(w.experts() == 1 && K == w.cols(), "matmul: x is ", to_string(x.shape()), " but W is [", w.rows(), ", ",
        w.cols(), "] (K must match, one expert)");
  check(y.extent(0) == M && y.extent(1) == w.rows(), "matmul: y is ", to_string(y.shape()), " but [", M, ", ",
        w.rows(), "] was expected");
  gpu::detail::check_rows("matmul", "y", y);
  gpu::detail::check_rows("matmul", "x", x);
  gpu::detail::gemm_params p{};
  gpu::detail::fill_weight_params(p, w);
  p.y = y.data();
  p.ldy = y.stride(0);
  p.a = x.data();
  p.lda = x.stride(0);
  p.M = static_cast<int>(M);
  gpu::detail::launch_gemm<SM, F, false>(p, gpu::detail::grid_for(M, gpu::detail::gemm_bm), s);
  MOELA_CUDA_CHECK_LAUNCH("matmul ", F::name, ": x ", to_string(x.shape()), ", W [", w.rows(), ", ", w.cols(), "]");
}

/// Fast mode, named.
template <int SM, class F>
void matmul(cuda<SM> tag, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x,
            const gpu::device_weights<F>& w, quant::mode::fast, const gpu::stream& s = gpu::default_stream()) {
  matmul(tag, y, x, w, s);
}

/// FP8 faithful mode (DeepSeek W8A8): `x` is quantized per 1x128 group into temporaries from
/// `alloc`, then the block-scaled GEMM runs (tensor cores on sm_89+). Synchronizes `s` before
/// returning the temporaries.
template <int SM>
void matmul(cuda<SM> tag, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x,
            const gpu::device_weights<gpu::fp8_block>& w, quant::mode::faithful,
            const gpu::stream& s = gpu::default_stream(), gpu::device_allocator& alloc = gpu::default_allocator()) {
  const index_t M = x.extent(0), K = x.extent(1);
  check(K == w.cols(), "matmul: x is ", to_string(x.shape()), " but W is [", w.rows(), ", ", w.cols(),
        "] (K must match)");
  gpu::detail::check_rows("matmul", "x", x);
  gpu::device_tensor<fp8_e4m3, 2> xq({M, K}, alloc);
  gpu::device_tensor<float, 2> xs({M, gpu::tiles::blocks_of(K)}, alloc);
  quantize_activations(tag, xq.view(), xs.view(), x, s);
  matmul(tag, y, gpu::device_view<const fp8_e4m3, 2>(xq.view()), gpu::device_view<const float, 2>(xs.view()), w, s);
  s.synchronize();  // the temporaries go back to the allocator when this returns
}

}  // namespace moela
