#pragma once
/// \file moela/core/workspace.hpp
/// Scratch memory of the parts, shared by every instance of a part type on one thread.
///
/// A layer's temporaries grow with the rows of a step: a prefill of T tokens through an MLA
/// layer of V2-Lite's shape needs ~90 KiB per token (queries, absorbed queries, latent
/// outputs), an MoE layer ~200 KiB per token (gathered rows, expert outputs, hidden
/// activations). Kept per layer instance they added up: a 2048-token prompt left ~560 MiB per
/// layer allocated after the step, 15 GiB for V2-Lite's 27 layers. The layers of a model run
/// one after the other on the calling thread, so they now share one set per part type and
/// thread: what stays allocated is the largest step's scratch of one layer of each type.
///
/// - `detail::thread_workspace<W>()`: the calling thread's instance of scratch struct `W`
///   (default-constructed on first use; `W` provides `std::size_t bytes() const`, usually
///   `detail::capacity_bytes(its vectors...)`). Views into it are valid until the next call of
///   a part of the same type on this thread: parts take them at the start of a call
///   (`detail::scratch_view`) and do not keep them across calls.
/// - `thread_workspace_bytes()`: bytes of scratch the calling thread holds, all part types.
/// - `release_thread_workspaces()`: frees them (the next call allocates again). For a thread
///   that is done with a large model but lives on; a thread's scratch is freed at its exit.
///   Not while a part's call is running on this thread.

#include <cstddef>
#include <vector>

#include "moela/core/tensor.hpp"

namespace moela {

namespace detail {

struct workspace_entry {
  std::size_t (*bytes)();
  void (*release)();
};

/// The calling thread's registered scratch structs.
inline std::vector<workspace_entry>& thread_workspaces() {
  thread_local std::vector<workspace_entry> entries;
  return entries;
}

template <class W>
W& thread_workspace() {
  thread_local W w;
  thread_local const bool registered = [] {
    thread_workspaces().push_back({[] { return thread_workspace<W>().bytes(); }, [] { thread_workspace<W>() = W{}; }});
    return true;
  }();
  (void)registered;
  return w;
}

/// Capacity in bytes of scratch vectors, summed.
template <class... T>
std::size_t capacity_bytes(const std::vector<T>&... v) {
  return (std::size_t{0} + ... + (v.capacity() * sizeof(T)));
}

/// `v` grown to at least r x c floats (never shrunk), as an [r, c] view of its start.
inline tensor_view<float, 2> scratch_view(std::vector<float>& v, index_t r, index_t c) {
  return tensor_view<float, 2>(grown(v, r * c), {r, c});
}

}  // namespace detail

/// Bytes of scratch memory moela's parts hold on the calling thread.
inline std::size_t thread_workspace_bytes() {
  std::size_t b = 0;
  for (const auto& e : detail::thread_workspaces()) b += e.bytes();
  return b;
}

/// Frees the scratch memory moela's parts hold on the calling thread.
inline void release_thread_workspaces() {
  for (const auto& e : detail::thread_workspaces()) e.release();
}

}  // namespace moela
