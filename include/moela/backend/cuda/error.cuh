#pragma once
/// \file moela/backend/cuda/error.cuh
/// CUDA runtime errors as `moela::error`. `MOELA_CUDA_CHECK(call, context...)` evaluates a
/// CUDA runtime call and, when it does not return `cudaSuccess`, throws a moela::error naming
/// the call (its source text), the error's name and description, and the streamed context
/// (the operation and its shapes), e.g.
///   `cudaMalloc(&p, bytes) failed: cudaErrorMemoryAllocation (out of memory) [rmsnorm: x [4, 7168]]`.
/// `MOELA_CUDA_CHECK_LAUNCH(context...)` does the same for the last kernel launch.

#include <cuda_runtime.h>

#include <sstream>
#include <string>
#include <utility>

#include "moela/core/error.hpp"

namespace moela::gpu::detail {

template <class... Context>
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* call, Context&&... context) {
  std::ostringstream os;
  os << call << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e) << ")";
  if constexpr (sizeof...(Context) > 0) {
    os << " [";
    (os << ... << std::forward<Context>(context));
    os << "]";
  }
  throw moela::error(os.str());
}

template <class... Context>
inline void cuda_check(cudaError_t e, const char* call, Context&&... context) {
  if (e != cudaSuccess) [[unlikely]] {
    (void)cudaGetLastError();  // clear the sticky-free error state for the next call
    throw_cuda_error(e, call, std::forward<Context>(context)...);
  }
}

}  // namespace moela::gpu::detail

/// Throws moela::error when the CUDA runtime call does not succeed; extra arguments are
/// streamed into the message as context (operation name, shapes).
#define MOELA_CUDA_CHECK(call, ...) ::moela::gpu::detail::cuda_check((call), #call __VA_OPT__(, ) __VA_ARGS__)
/// Checks the last kernel launch (configuration errors, not asynchronous faults).
#define MOELA_CUDA_CHECK_LAUNCH(...) \
  ::moela::gpu::detail::cuda_check(cudaGetLastError(), "kernel launch" __VA_OPT__(, ) __VA_ARGS__)
