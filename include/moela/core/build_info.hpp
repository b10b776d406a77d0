#pragma once
/// \file moela/core/build_info.hpp
/// What instruction set this binary's kernels were compiled for, and a guard that stops a
/// binary whose kernels need an instruction the running CPU lacks, before any is executed.
///
/// A header-only library inherits the user's compiler flags: `-march=native` on an AVX-512
/// machine gives AVX-512 kernels, no flags give SSE2. `build_info()` says which (examples and
/// benches print it). An ISA guard runs automatically before `main` (an ELF constructor
/// compiled for baseline x86-64) in every binary that includes this header on x86 with
/// GCC/Clang (`missing_cpu_feature()` gives its answer at run time): a missing feature prints
///   `moela: this binary was compiled for AVX512F, which this CPU does not support. ...`
/// and exits with status MOELA_ISA_GUARD_EXIT_CODE (1 unless defined before the first include),
/// instead of dying later with SIGILL.

#include <string>

#include <xsimd/xsimd.hpp>

#include "moela/core/config.hpp"

/// Exit status of a binary stopped by the ISA guard. Define it (the same in every translation
/// unit) before including moela to pick another, e.g. 77 so that CTest reports a skip.
#ifndef MOELA_ISA_GUARD_EXIT_CODE
#define MOELA_ISA_GUARD_EXIT_CODE 1
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MOELA_X86_GUARD 1
#include <unistd.h>
#endif

namespace moela {

/// Facts about how this translation unit was compiled.
struct build_info_t {
  const char* simd_arch;  ///< xsimd's default architecture name ("avx512bw", "fma3+avx2", "sse2", ...)
  bool avx2, fma, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16, f16c;
  bool avx512vbmi;  ///< the FP8 decoders' byte-table lookups (`vpermt2b`)
  bool generic_kernels;   ///< MOELA_FORCE_GENERIC: ISA-specific kernels disabled
  const char* compiler;
  /// One line, e.g. "moela 0.1.0, simd avx512bw (+vnni +bf16 +vbmi), gcc 12.2.0".
  std::string summary() const {
    std::string s = "moela " + std::to_string(MOELA_VERSION_MAJOR) + "." + std::to_string(MOELA_VERSION_MINOR) +
                    "." + std::to_string(MOELA_VERSION_PATCH) + ", simd " + simd_arch;
    std::string ext;
    if (avx512vnni) ext += " +vnni";
    if (avx512bf16) ext += " +bf16";
    if (avx512vbmi) ext += " +vbmi";
    if (!ext.empty()) s += " (" + ext.substr(1) + ")";
    if (generic_kernels) s += ", generic kernels";
    return s + ", " + compiler;
  }
};

inline build_info_t build_info() {
  build_info_t b{};
  b.simd_arch = xsimd::default_arch::name();
#ifdef __AVX2__
  b.avx2 = true;
#endif
#ifdef __FMA__
  b.fma = true;
#endif
#ifdef __AVX512F__
  b.avx512f = true;
#endif
#ifdef __AVX512BW__
  b.avx512bw = true;
#endif
#ifdef __AVX512VL__
  b.avx512vl = true;
#endif
#ifdef __AVX512VNNI__
  b.avx512vnni = true;
#endif
#ifdef __AVX512BF16__
  b.avx512bf16 = true;
#endif
#ifdef __AVX512VBMI__
  b.avx512vbmi = true;
#endif
#ifdef __F16C__
  b.f16c = true;
#endif
#ifdef MOELA_FORCE_GENERIC
  b.generic_kernels = true;
#endif
#if defined(__clang__)
  b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "gcc " __VERSION__;
#else
  b.compiler = "unknown compiler";
#endif
  return b;
}

#ifdef MOELA_X86_GUARD
namespace detail {
// Compiled for baseline x86-64 whatever -march says, and calls nothing but builtins and
// write/_exit, so it cannot itself execute an instruction the CPU lacks.
__attribute__((target("arch=x86-64"))) inline void isa_fail(const char* feature) {
  const char a[] = "moela: this binary was compiled for ";
  const char b[] = ", which this CPU does not support. Rebuild for this machine (e.g. "
                   "-DMOELA_ARCH=native or moela_target_arch(<target> native)).\n";
  auto put = [](const char* s, unsigned long n) { (void)!::write(2, s, n); };
  put(a, sizeof a - 1);
  unsigned long n = 0;
  while (feature[n]) ++n;
  put(feature, n);
  put(b, sizeof b - 1);
  ::_exit(MOELA_ISA_GUARD_EXIT_CODE);
}

/// Returns the first compiled-in feature the CPU lacks, or nullptr.
__attribute__((target("arch=x86-64"))) inline const char* missing_isa() {
  __builtin_cpu_init();
#ifdef __AVX__
  if (!__builtin_cpu_supports("avx")) return "AVX";
#endif
#ifdef __AVX2__
  if (!__builtin_cpu_supports("avx2")) return "AVX2";
#endif
#ifdef __FMA__
  if (!__builtin_cpu_supports("fma")) return "FMA";
#endif
#ifdef __AVX512F__
  if (!__builtin_cpu_supports("avx512f")) return "AVX512F";
#endif
#ifdef __AVX512BW__
  if (!__builtin_cpu_supports("avx512bw")) return "AVX512BW";
#endif
#ifdef __AVX512VL__
  if (!__builtin_cpu_supports("avx512vl")) return "AVX512VL";
#endif
#ifdef __AVX512VNNI__
  if (!__builtin_cpu_supports("avx512vnni")) return "AVX512VNNI";
#endif
#ifdef __AVX512BF16__
  if (!__builtin_cpu_supports("avx512bf16")) return "AVX512BF16";
#endif
#ifdef __AVX512VBMI__
  if (!__builtin_cpu_supports("avx512vbmi")) return "AVX512VBMI";
#endif
  return nullptr;
}

__attribute__((constructor(101), target("arch=x86-64"), used)) inline void isa_guard() {
  if (const char* f = missing_isa()) isa_fail(f);
}
}  // namespace detail

/// The first instruction-set feature this binary was compiled for that the CPU lacks
/// ("AVX512F", ...), or nullptr when all are present. Also checked automatically before main.
inline const char* missing_cpu_feature() { return detail::missing_isa(); }
#else
inline const char* missing_cpu_feature() { return nullptr; }
#endif

}  // namespace moela
