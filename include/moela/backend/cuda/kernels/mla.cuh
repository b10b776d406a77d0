#pragma once
/// \file moela/backend/cuda/kernels/mla.cuh
/// Absorbed MLA decode over a paged latent cache (the FlashMLA problem, spec §5.5 / §5.9):
/// one query token per sequence, every head attends the sequence's cached
/// `[c_kv ; k_pe]` rows (MQA with one shared key/value head).
///
/// Cache layouts (pages of `mla_page = 64` tokens; a sequence's pages are listed in its row
/// of `block_table`):
///  - `paged_latent_cache<moela::bf16>`: `pages [P, 64, kv_rank + rope_dim]` bf16 (1152 B per
///    token for DeepSeek-V3); any `kv_rank <= 512`, `rope_dim <= 64`.
///  - `paged_latent_cache<tiles::mla_fp8_record>`: `pages [P, 64, 656]` bytes, the FlashMLA
///    FP8 record (512 e4m3 + 4 fp32 scales + 64 bf16); kv_rank 512, rope_dim 64.
///
/// `mla_decode(cuda, out[B, H, kv_rank], lse[B, H], q[B, H, kv_rank + rope_dim], cache,
///  block_table[B, max_pages], seq_lens[B], softmax_scale)`:
///   `score_j = softmax_scale · ⟨q, [c_kv_j ; k_pe_j]⟩` over positions `j < seq_lens[b]`,
///   `out = Σ softmax(score)_j · c_kv_j` (the latent output `o_lat`; apply W_UV and W_O after),
///   `lse` = natural-log sum of exp of the scores (-inf and out = 0 for an empty sequence).
/// Pass `softmax_scale` explicitly (`192^-1/2 · mscale²` for DeepSeek, not `576^-1/2`).
/// The cache is decoded to fp32 (bf16 exactly; FP8 as `e4m3 · scale`), scores and the output
/// accumulate in fp32 with the online softmax of tiles/attention.hpp. `splits > 1` divides
/// each sequence's pages among that many blocks and merges their states (split-KV).
///
/// `mla_cache_write(cuda, cache, block_table, batch[T], positions[T], ckv[T, kv_rank],
///  kpe[T, rope_dim])` stores new tokens (bf16 RNE, or the FP8 record encoding).

#include <cstdint>
#include <type_traits>

#include "moela/backend/cuda/kernels/common.cuh"
#include "moela/backend/cuda/tiles/attention.hpp"
#include "moela/backend/cuda/tiles/quant.hpp"
#include "moela/core/minifloat.hpp"

namespace moela::gpu {

/// Tokens per cache page (FlashMLA's required page block size).
inline constexpr int mla_page = 64;

/// A paged latent cache on the device; `Layout` is `moela::bf16` or `tiles::mla_fp8_record`.
template <class Layout>
struct paged_latent_cache {
  static constexpr bool fp8 = std::is_same_v<Layout, tiles::mla_fp8_record>;
  static_assert(fp8 || std::is_same_v<Layout, moela::bf16>, "latent cache layouts: moela::bf16 or mla_fp8_record");
  using element = std::conditional_t<fp8, std::uint8_t, moela::bf16>;
  device_view<element, 3> pages;  // [P, 64, width]
  int kv_rank = 512;
  int rope_dim = 64;

  index_t num_pages() const { return pages.extent(0); }
  void validate(const char* op) const {
    check(pages.extent(1) == mla_page && pages.is_contiguous(), op, ": cache pages are ", to_string(pages.shape()),
          " but [P, ", mla_page, ", width] contiguous was expected");
    if constexpr (fp8) {
      check(kv_rank == tiles::mla_fp8_record::kv_rank && rope_dim == tiles::mla_fp8_record::rope_dim &&
                pages.extent(2) == tiles::mla_fp8_record::bytes,
            op, ": the FP8 latent record needs kv_rank 512, rope_dim 64 and 656-byte rows (got ", kv_rank, ", ",
            rope_dim, ", ", pages.extent(2), ")");
    } else {
      check(kv_rank > 0 && kv_rank <= 512 && rope_dim >= 0 && rope_dim <= 64 && pages.extent(2) == kv_rank + rope_dim,
            op, ": bf16 cache rows are ", pages.extent(2), " wide for kv_rank ", kv_rank, " and rope_dim ", rope_dim,
            " (kv_rank <= 512, rope_dim <= 64)");
    }
  }
};

/// Owning storage for a paged latent cache of `pages` pages.
template <class Layout>
struct latent_cache_store {
  device_tensor<typename paged_latent_cache<Layout>::element, 3> data;
  int kv_rank, rope_dim;
  latent_cache_store(index_t pages, int kv_rank_, int rope_dim_, device_allocator& alloc = default_allocator())
      : data({pages, mla_page, paged_latent_cache<Layout>::fp8 ? tiles::mla_fp8_record::bytes : kv_rank_ + rope_dim_},
             alloc),
        kv_rank(kv_rank_), rope_dim(rope_dim_) {}
  paged_latent_cache<Layout> view() { return {data.view(), kv_rank, rope_dim}; }
};

namespace detail {

inline constexpr int mla_heads_per_block = 8;  // one warp per head
inline constexpr int mla_chunk = 16;           // tokens decoded to shared memory at a time
inline constexpr int mla_max_width = 576;

struct mla_params {
  const float* q;
  index_t q_sb, q_sh;
  const void* pages;
  index_t page_stride, row_stride;  // elements (bf16) or bytes (fp8)
  const int* block_table;
  index_t bt_stride;
  const int* seq_lens;
  float* out;
  index_t o_sb, o_sh;
  float* lse;
  index_t l_sb;
  float* part_o;      // [B, H, splits, kv_rank] (splits > 1)
  float* part_ml;     // [B, H, splits, 2]
  int heads, kv_rank, width, splits;
  float scale;
};

template <class Layout>
__device__ inline float mla_load(const mla_params& p, int page, int row, int d) {
  if constexpr (std::is_same_v<Layout, tiles::mla_fp8_record>) {
    const auto* rec = static_cast<const std::uint8_t*>(p.pages) + page * p.page_stride + row * p.row_stride;
    return tiles::mla_fp8_record_value(rec, d);
  } else {
    const auto* r = static_cast<const moela::bf16*>(p.pages) + page * p.page_stride + row * p.row_stride;
    return tiles::decode_bf16(r[d].bits);
  }
}

template <int SM, class Layout>
__global__ void __launch_bounds__(32 * mla_heads_per_block) mla_decode_kernel(mla_params p) {
  constexpr int QR = mla_max_width / 32, OR = 512 / 32;
  __shared__ float kv[mla_chunk][mla_max_width];
  const int b = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.x * mla_heads_per_block + warp;
  const bool active = h < p.heads;
  const int len = p.seq_lens[b];
  const int pages = (len + mla_page - 1) / mla_page;
  const int per = (pages + p.splits - 1) / p.splits;
  const int t_begin = split * per * mla_page;
  const int t_end = min(len, (split + 1) * per * mla_page);

  float q[QR], o[OR];
#pragma unroll
  for (int i = 0; i < QR; ++i) {
    const int d = lane + 32 * i;
    q[i] = (active && d < p.width) ? p.q[b * p.q_sb + h * p.q_sh + d] : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < OR; ++i) o[i] = 0.0f;
  tiles::softmax_state st;

  for (int t0 = t_begin; t0 < t_end; t0 += mla_chunk) {
    const int n = min(mla_chunk, t_end - t0);
    __syncthreads();
    for (int i = threadIdx.x; i < n * p.width; i += blockDim.x) {
      const int j = i / p.width, d = i % p.width, t = t0 + j;
      const int page = p.block_table[b * p.bt_stride + t / mla_page];
      kv[j][d] = mla_load<Layout>(p, page, t % mla_page, d);
    }
    __syncthreads();
    if (!active) continue;
    float s[mla_chunk];
    float bmax = -std::numeric_limits<float>::infinity();
#pragma unroll
    for (int j = 0; j < mla_chunk; ++j) {
      float acc = 0.0f;
      if (j < n) {
#pragma unroll
        for (int i = 0; i < QR; ++i) {
          const int d = lane + 32 * i;
          if (d < p.width) acc = fmaf(q[i], kv[j][d], acc);
        }
      }
      acc = warp_sum(acc);
      s[j] = j < n ? acc * p.scale : -std::numeric_limits<float>::infinity();
      bmax = fmaxf(bmax, s[j]);
    }
    const float f = tiles::softmax_advance(st, bmax);
#pragma unroll
    for (int i = 0; i < OR; ++i) o[i] *= f;
#pragma unroll
    for (int j = 0; j < mla_chunk; ++j) {
      const float w = tiles::softmax_accept(st, s[j]);
      if (w != 0.0f) {
#pragma unroll
        for (int i = 0; i < OR; ++i) {
          const int d = lane + 32 * i;
          if (d < p.kv_rank) o[i] = fmaf(w, kv[j][d], o[i]);
        }
      }
    }
  }
  if (!active) return;
  if (p.splits == 1) {
    const float norm = tiles::softmax_normalizer(st);
#pragma unroll
    for (int i = 0; i < OR; ++i) {
      const int d = lane + 32 * i;
      if (d < p.kv_rank) p.out[b * p.o_sb + h * p.o_sh + d] = o[i] * norm;
    }
    if (lane == 0) p.lse[b * p.l_sb + h] = tiles::softmax_lse(st);
  } else {
    const index_t base = (static_cast<index_t>(b) * p.heads + h) * p.splits + split;
#pragma unroll
    for (int i = 0; i < OR; ++i) {
      const int d = lane + 32 * i;
      if (d < p.kv_rank) p.part_o[base * p.kv_rank + d] = o[i];
    }
    if (lane == 0) {
      p.part_ml[base * 2] = st.m;
      p.part_ml[base * 2 + 1] = st.l;
    }
  }
}

// One warp per (b, h): merges the split states.
template <int SM>
__global__ void mla_merge_kernel(mla_params p, int batch) {
  const index_t w = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= static_cast<index_t>(batch) * p.heads) return;
  const int b = static_cast<int>(w / p.heads), h = static_cast<int>(w % p.heads);
  constexpr int OR = 512 / 32;
  float o[OR] = {};
  tiles::softmax_state st;
  for (int sp = 0; sp < p.splits; ++sp) {
    const index_t base = w * p.splits + sp;
    tiles::softmax_state y;
    y.m = p.part_ml[base * 2];
    y.l = p.part_ml[base * 2 + 1];
    const auto c = tiles::softmax_merge(st, y);
#pragma unroll
    for (int i = 0; i < OR; ++i) {
      const int d = lane + 32 * i;
      if (d < p.kv_rank) o[i] = c.a * o[i] + c.b * p.part_o[base * p.kv_rank + d];
    }
  }
  const float norm = tiles::softmax_normalizer(st);
#pragma unroll
  for (int i = 0; i < OR; ++i) {
    const int d = lane + 32 * i;
    if (d < p.kv_rank) p.out[b * p.o_sb + h * p.o_sh + d] = o[i] * norm;
  }
  if (lane == 0) p.lse[b * p.l_sb + h] = tiles::softmax_lse(st);
}

template <int SM, class Layout>
__global__ void mla_write_kernel(void* pages, index_t page_stride, index_t row_stride, const int* block_table,
                                 index_t bt_stride, const int* batch, const int* pos, const float* ckv, index_t ld_ckv,
                                 const float* kpe, index_t ld_kpe, int kv_rank, int rope_dim, index_t tokens) {
  const index_t t = blockIdx.x;
  if (t >= tokens) return;
  const int b = batch[t], ps = pos[t];
  const int page = block_table[b * bt_stride + ps / mla_page];
  if constexpr (std::is_same_v<Layout, tiles::mla_fp8_record>) {
    if (threadIdx.x == 0) {
      auto* rec = static_cast<std::uint8_t*>(pages) + page * page_stride + (ps % mla_page) * row_stride;
      tiles::mla_fp8_record_encode(ckv + t * ld_ckv, kpe + t * ld_kpe, rec);
    }
  } else {
    auto* row = static_cast<moela::bf16*>(pages) + page * page_stride + (ps % mla_page) * row_stride;
    for (int d = threadIdx.x; d < kv_rank + rope_dim; d += blockDim.x) {
      const float v = d < kv_rank ? ckv[t * ld_ckv + d] : kpe[t * ld_kpe + d - kv_rank];
      row[d] = moela::bf16::from_bits(tiles::encode_bf16(v));
    }
  }
}

}  // namespace detail
}  // namespace moela::gpu

namespace moela {

/// Absorbed MLA decode; see the file comment. `splits = 0` picks a split count that gives
/// the GPU at least ~2 blocks per multiprocessor.
template <int SM, class Layout>
void mla_decode(cuda<SM>, gpu::device_view<float, 3> out, gpu::device_view<float, 2> lse,
                gpu::device_view<const float, 3> q, const gpu::paged_latent_cache<Layout>& cache,
                gpu::device_view<const int, 2> block_table, gpu::device_view<const int, 1> seq_lens,
                float softmax_scale, int splits = 0, const gpu::stream& s = gpu::default_stream(),
                gpu::device_allocator& alloc = gpu::default_allocator()) {
  cache.validate("mla_decode");
  const index_t B = q.extent(0), H = q.extent(1);
  const int width = cache.kv_rank + cache.rope_dim;
  check(q.extent(2) == width && out.extent(0) == B && out.extent(1) == H && out.extent(2) == cache.kv_rank &&
            lse.extent(0) == B && lse.extent(1) == H && seq_lens.extent(0) == B && block_table.extent(0) == B,
        "mla_decode: q ", to_string(q.shape()), ", out ", to_string(out.shape()), ", lse ", to_string(lse.shape()),
        ", block_table ", to_string(block_table.shape()), ", seq_lens ", to_string(seq_lens.shape()), " for kv_rank ",
        cache.kv_rank, " + rope_dim ", cache.rope_dim, " (want q [B, H, ", width, "], out [B, H, ", cache.kv_rank,
        "], lse [B, H])");
  gpu::detail::check_rows("mla_decode", "q", q);
  gpu::detail::check_rows("mla_decode", "out", out);
  gpu::detail::check_rows("mla_decode", "block_table", block_table);
  check(seq_lens.extent(0) <= 1 || seq_lens.stride(0) == 1, "mla_decode: seq_lens must be contiguous");
  check(lse.extent(1) <= 1 || lse.stride(1) == 1, "mla_decode: lse rows must be contiguous");
  if (B == 0 || H == 0) return;
  const int max_pages = static_cast<int>(block_table.extent(1));
  if (splits <= 0) {
    int dev = 0, sms = 132;
    MOELA_CUDA_CHECK(cudaGetDevice(&dev), "mla_decode");
    MOELA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "mla_decode");
    const index_t blocks = B * ((H + gpu::detail::mla_heads_per_block - 1) / gpu::detail::mla_heads_per_block);
    splits = static_cast<int>(std::min<index_t>(std::max<index_t>(1, 2 * sms / std::max<index_t>(blocks, 1)),
                                                std::max(1, max_pages)));
  }
  gpu::detail::mla_params p{};
  p.q = q.data();
  p.q_sb = q.stride(0);
  p.q_sh = q.stride(1);
  p.pages = cache.pages.data();
  p.page_stride = cache.pages.stride(0);
  p.row_stride = cache.pages.stride(1);
  p.block_table = block_table.data();
  p.bt_stride = block_table.stride(0);
  p.seq_lens = seq_lens.data();
  p.out = out.data();
  p.o_sb = out.stride(0);
  p.o_sh = out.stride(1);
  p.lse = lse.data();
  p.l_sb = lse.stride(0);
  p.heads = static_cast<int>(H);
  p.kv_rank = cache.kv_rank;
  p.width = width;
  p.splits = splits;
  p.scale = softmax_scale;
  gpu::device_tensor<float, 1> part_o, part_ml;
  if (splits > 1) {
    part_o = gpu::device_tensor<float, 1>({B * H * splits * cache.kv_rank}, alloc);
    part_ml = gpu::device_tensor<float, 1>({B * H * splits * 2}, alloc);
    p.part_o = part_o.data();
    p.part_ml = part_ml.data();
  }
  const dim3 grid(static_cast<unsigned>((H + gpu::detail::mla_heads_per_block - 1) / gpu::detail::mla_heads_per_block),
                  static_cast<unsigned>(B), static_cast<unsigned>(splits));
  gpu::detail::mla_decode_kernel<SM, Layout><<<grid, 32 * gpu::detail::mla_heads_per_block, 0, s.get()>>>(p);
  MOELA_CUDA_CHECK_LAUNCH("mla_decode: q ", to_string(q.shape()), ", splits ", splits);
  if (splits > 1) {
    gpu::detail::mla_merge_kernel<SM><<<gpu::detail::grid_for(B * H * 32, 256), 256, 0, s.get()>>>(p, static_cast<int>(B));
    MOELA_CUDA_CHECK_LAUNCH("mla_decode merge: q ", to_string(q.shape()));
    s.synchronize();  // the partials return to the allocator
  }
}

/// Writes new tokens into the paged cache; see the file comment. `batch[T]` and `positions[T]`
/// say which sequence and position each token belongs to; their pages must be in `block_table`.
template <int SM, class Layout>
void mla_cache_write(cuda<SM>, const gpu::paged_latent_cache<Layout>& cache, gpu::device_view<const int, 2> block_table,
                     gpu::device_view<const int, 1> batch, gpu::device_view<const int, 1> positions,
                     gpu::device_view<const float, 2> ckv, gpu::device_view<const float, 2> kpe,
                     const gpu::stream& s = gpu::default_stream()) {
  cache.validate("mla_cache_write");
  const index_t T = ckv.extent(0);
  check(ckv.extent(1) == cache.kv_rank && kpe.extent(0) == T && kpe.extent(1) == cache.rope_dim &&
            batch.extent(0) == T && positions.extent(0) == T,
        "mla_cache_write: ckv ", to_string(ckv.shape()), ", kpe ", to_string(kpe.shape()), ", batch ",
        to_string(batch.shape()), ", positions ", to_string(positions.shape()), " for kv_rank ", cache.kv_rank,
        ", rope_dim ", cache.rope_dim);
  gpu::detail::check_rows("mla_cache_write", "ckv", ckv);
  gpu::detail::check_rows("mla_cache_write", "kpe", kpe);
  gpu::detail::check_contiguous("mla_cache_write", "batch", batch);
  gpu::detail::check_contiguous("mla_cache_write", "positions", positions);
  if (T == 0) return;
  gpu::detail::mla_write_kernel<SM, Layout><<<static_cast<unsigned>(T), 128, 0, s.get()>>>(
      cache.pages.data(), cache.pages.stride(0), cache.pages.stride(1), block_table.data(), block_table.stride(0),
      batch.data(), positions.data(), ckv.data(), ckv.stride(0), kpe.data(), kpe.stride(0), cache.kv_rank,
      cache.rope_dim, T);
  MOELA_CUDA_CHECK_LAUNCH("mla_cache_write: ckv ", to_string(ckv.shape()));
}

}  // namespace moela
