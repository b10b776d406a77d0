#pragma once
/// \file moela/backend/cuda/tiles/attention.hpp
/// Per-thread arithmetic of the CUDA attention kernels, as `MOELA_HOST_DEVICE` functions that
/// the host unit tests check against float64 references:
///  - the online-softmax state (running max `m`, running sum `l`) with its update when a new
///    block of scores arrives and the merge of two partial states (split-KV decode); merging
///    two empty states gives an empty state, never NaN;
///  - the FlashMLA FP8 latent-cache record (656 bytes per token: 512 e4m3, 4 fp32 tile scales,
///    64 bf16 RoPE values; spec §8.8): encode one token, decode one value.

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "moela/backend/cuda/tiles/quant.hpp"
#include "moela/core/config.hpp"

namespace moela::gpu::tiles {

/// Running state of a softmax computed one block of scores at a time. The (unnormalized)
/// output accumulator `o = Σ exp(s_j - m) v_j` lives beside it, in the caller's registers.
struct softmax_state {
  float m = -std::numeric_limits<float>::infinity();  ///< largest score seen
  float l = 0.0f;                                       ///< Σ exp(s_j - m)
};

/// Moves the state to a new block whose largest score is `block_max`; returns the factor by
/// which the caller must multiply its output accumulator (0 while the state was empty).
MOELA_HOST_DEVICE inline float softmax_advance(softmax_state& st, float block_max) {
  const float m_new = block_max > st.m ? block_max : st.m;
  if (m_new == -std::numeric_limits<float>::infinity()) return 1.0f;  // still empty
  const float f = st.m == -std::numeric_limits<float>::infinity() ? 0.0f : expf(st.m - m_new);
  st.l *= f;
  st.m = m_new;
  return f;
}

/// Adds one score (after `softmax_advance` saw a max >= it); returns its weight `exp(s - m)`
/// for the output accumulator. A score of -inf (a masked key) weighs 0.
MOELA_HOST_DEVICE inline float softmax_accept(softmax_state& st, float s) {
  const float p = s == -std::numeric_limits<float>::infinity() ? 0.0f : expf(s - st.m);
  st.l += p;
  return p;
}

/// Coefficients of a merge: `o = a * o_a + b * o_b` for the unnormalized accumulators.
struct softmax_merge_coeffs {
  float a, b;
};

/// Merges state `y` into `x` (both over disjoint key sets) and returns how to combine their
/// output accumulators. Two empty states merge into an empty one with coefficients 0.
MOELA_HOST_DEVICE inline softmax_merge_coeffs softmax_merge(softmax_state& x, const softmax_state& y) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  const float m = x.m > y.m ? x.m : y.m;
  if (m == ninf) return {0.0f, 0.0f};
  const float a = x.m == ninf ? 0.0f : expf(x.m - m);
  const float b = y.m == ninf ? 0.0f : expf(y.m - m);
  x.l = x.l * a + y.l * b;
  x.m = m;
  return {a, b};
}

/// Factor that turns the accumulator into the softmax-weighted output (0 for an empty state).
MOELA_HOST_DEVICE inline float softmax_normalizer(const softmax_state& st) { return st.l > 0.0f ? 1.0f / st.l : 0.0f; }

/// Natural-log sum of exponentials of all scores seen (-inf for an empty state).
MOELA_HOST_DEVICE inline float softmax_lse(const softmax_state& st) {
  return st.l > 0.0f ? st.m + logf(st.l) : -std::numeric_limits<float>::infinity();
}

// ---- FlashMLA FP8 latent-cache record --------------------------------------------------------

/// Layout constants of the 656-byte FP8 record (DeepSeek-V3 MLA: kv_rank 512, rope_dim 64).
struct mla_fp8_record {
  static constexpr int kv_rank = 512;
  static constexpr int rope_dim = 64;
  static constexpr int tiles = kv_rank / fp8_block;         // 4 scales
  static constexpr int scale_offset = kv_rank;              // bytes
  static constexpr int rope_offset = kv_rank + 4 * tiles;   // 528
  static constexpr int bytes = rope_offset + 2 * rope_dim;  // 656
};
static_assert(mla_fp8_record::bytes == 656);

namespace detail {
MOELA_HOST_DEVICE inline std::uint32_t load_u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
MOELA_HOST_DEVICE inline void store_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
}  // namespace detail

/// Value `d` (0..575) of a record: `e4m3 * tile scale` for the latent, the bf16 RoPE key after.
MOELA_HOST_DEVICE inline float mla_fp8_record_value(const std::uint8_t* rec, int d) {
  if (d < mla_fp8_record::kv_rank) {
    const float s =
        std::bit_cast<float>(detail::load_u32(rec + mla_fp8_record::scale_offset + 4 * (d / fp8_block)));
    return decode_e4m3(rec[d]) * s;
  }
  const std::uint8_t* r = rec + mla_fp8_record::rope_offset + 2 * (d - mla_fp8_record::kv_rank);
  return decode_bf16(static_cast<std::uint16_t>(r[0] | (r[1] << 8)));
}

/// Scale of one 128-wide latent tile of the record (tile 0..3).
MOELA_HOST_DEVICE inline float mla_fp8_record_scale(const std::uint8_t* rec, int tile) {
  return std::bit_cast<float>(detail::load_u32(rec + mla_fp8_record::scale_offset + 4 * tile));
}

/// Encodes one token: `ckv` (512 floats, the normalized latent) and `kpe` (64 floats, the
/// rotated RoPE key) into `rec` (656 bytes). Tile scale `2^ceil(log2(max(amax/448, 1e-4)))`,
/// codes `e4m3(ckv / s)` (RNE, saturating), RoPE part rounded to bf16 (RNE).
MOELA_HOST_DEVICE inline void mla_fp8_record_encode(const float* ckv, const float* kpe, std::uint8_t* rec) {
  for (int t = 0; t < mla_fp8_record::tiles; ++t) {
    float amax = 0.0f;
    for (int i = 0; i < fp8_block; ++i) {
      const float a = fabsf(ckv[t * fp8_block + i]);
      amax = a > amax ? a : amax;
    }
    const float s = kv_fp8_scale(amax);
    for (int i = 0; i < fp8_block; ++i) rec[t * fp8_block + i] = encode_e4m3(ckv[t * fp8_block + i] / s);
    detail::store_u32(rec + mla_fp8_record::scale_offset + 4 * t, std::bit_cast<std::uint32_t>(s));
  }
  for (int i = 0; i < mla_fp8_record::rope_dim; ++i) {
    const std::uint16_t b = encode_bf16(kpe[i]);
    rec[mla_fp8_record::rope_offset + 2 * i] = static_cast<std::uint8_t>(b & 0xFF);
    rec[mla_fp8_record::rope_offset + 2 * i + 1] = static_cast<std::uint8_t>(b >> 8);
  }
}

}  // namespace moela::gpu::tiles
