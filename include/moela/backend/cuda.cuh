#pragma once
/// \file moela/backend/cuda.cuh
/// The CUDA backend (nvcc only, with MOELA_ENABLE_CUDA): device memory, streams and copies
/// (moela::gpu), and the ops on the `moela::cuda<SM>` tag: rmsnorm, rope, softmax, swiglu,
/// quantize_activations, matmul (FP8 block / INT8 / INT4 group / BF16), route, plan_dispatch,
/// dispatch, grouped_matmul, combine, moe_experts, mla_decode, mla_cache_write.
/// See docs/cuda.md.

#if !defined(__CUDACC__)
#error "moela/backend/cuda.cuh is CUDA code: compile this translation unit with nvcc"
#endif

#include "moela/backend/cuda/error.cuh"
#include "moela/backend/cuda/memory.cuh"
#include "moela/backend/cuda/kernels/elementwise.cuh"
#include "moela/backend/cuda/kernels/matmul.cuh"
#include "moela/backend/cuda/kernels/moe.cuh"
#include "moela/backend/cuda/kernels/mla.cuh"
