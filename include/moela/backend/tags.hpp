#pragma once
/// \file moela/backend/tags.hpp
/// Backend tags. An op picks its kernel by overloading on the tag type, at compile time:
/// `matmul(cpu<>{}, y, x, w)` and `matmul(cuda<90>{}, y, x, w)` are different functions.
/// Model and layer templates take the tag as their `Backend` parameter, so switching
/// `moela::cpu<>` for `moela::cuda<90>` in a model's type is the whole change to run on a GPU.

#include <concepts>
#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace moela {

/// The CPU backend. `Arch` is the xsimd architecture the SIMD kernels are instantiated for;
/// it defaults to the best one the translation unit is compiled for (`-march`).
template <class Arch = xsimd::default_arch>
struct cpu {
  using arch = Arch;
  static constexpr const char* name() { return "cpu"; }
};

/// The CUDA backend for compute capability `SM` (80 = Ampere, 90 = Hopper). Its kernels exist
/// only in translation units compiled by nvcc with MOELA_ENABLE_CUDA.
template <int SM = 90>
struct cuda {
  static constexpr int sm = SM;
  static constexpr const char* name() { return "cuda"; }
};

template <class T>
inline constexpr bool is_cpu_backend_v = false;
template <class A>
inline constexpr bool is_cpu_backend_v<cpu<A>> = true;
template <class T>
inline constexpr bool is_cuda_backend_v = false;
template <int SM>
inline constexpr bool is_cuda_backend_v<cuda<SM>> = true;

template <class T>
concept cpu_backend = is_cpu_backend_v<std::remove_cvref_t<T>>;
template <class T>
concept cuda_backend = is_cuda_backend_v<std::remove_cvref_t<T>>;
template <class T>
concept backend = cpu_backend<T> || cuda_backend<T>;

/// The default backend of this translation unit.
using default_backend = cpu<>;

}  // namespace moela
