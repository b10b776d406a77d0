#pragma once
/// \file moela/backend/cuda/kernels/common.cuh
/// Small device helpers shared by the CUDA kernels: warp and block reductions, grid sizing,
/// and the shape checks every launcher does before touching the GPU.

#include <cuda_runtime.h>

#include <limits>

#include "moela/backend/cuda/memory.cuh"
#include "moela/backend/tags.hpp"

namespace moela::gpu::detail {

inline constexpr unsigned full_mask = 0xffffffffu;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(full_mask, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(full_mask, v, o));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ inline float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < nw ? part[lane] : 0.0f;
  return warp_sum(v);
}
/// Max over the block; every thread gets the result.
__device__ inline float block_max(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < nw ? part[lane] : -std::numeric_limits<float>::infinity();
  return warp_max(v);
}

inline unsigned grid_for(index_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

/// Throws unless the last dimension of `v` has unit stride.
template <class V>
void check_rows(const char* op, const char* name, const V& v) {
  constexpr std::size_t r = V::rank;
  check(v.extent(r - 1) <= 1 || v.stride(r - 1) == 1, op, ": ", name, " ", to_string(v.shape()),
        " must have a contiguous last dimension (stride ", v.stride(r - 1), ")");
}
template <class V>
void check_contiguous(const char* op, const char* name, const V& v) {
  check(v.is_contiguous(), op, ": ", name, " ", to_string(v.shape()), " must be contiguous");
}

}  // namespace moela::gpu::detail
