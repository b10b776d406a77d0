#pragma once
/// \file moela/core/config.hpp
/// Version and portability macros. Includes nothing heavy, so g++ and nvcc both accept it.

#define MOELA_VERSION_MAJOR 0
#define MOELA_VERSION_MINOR 1
#define MOELA_VERSION_PATCH 0

#if defined(__CUDACC__)
#define MOELA_HOST_DEVICE __host__ __device__
#else
#define MOELA_HOST_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MOELA_ALWAYS_INLINE inline __attribute__((always_inline))
/// For lambdas: `[&](int i) MOELA_ALWAYS_INLINE_LAMBDA { ... }`.
#define MOELA_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#define MOELA_RESTRICT __restrict__
#else
#define MOELA_ALWAYS_INLINE inline
#define MOELA_ALWAYS_INLINE_LAMBDA
#define MOELA_RESTRICT
#endif

/// Keeps a SIMD value in a register from here on: its later uses read the register rather than
/// reloading the value from memory into each instruction (which compilers do when they judge a
/// memory operand free; in a microkernel bound by loads it is not). No code is emitted.
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDA_ARCH__)
#define MOELA_IN_REGISTER(v) asm("" : "+v"(v))
#else
#define MOELA_IN_REGISTER(v) ((void)0)
#endif

namespace moela {
/// Signed index type used for every shape, stride and loop bound.
using index_t = long;
/// Alignment (bytes) of every buffer moela allocates: one cache line, one AVX-512 register.
inline constexpr index_t storage_alignment = 64;
}  // namespace moela
