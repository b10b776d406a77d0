#pragma once
/// \file moela/backend/cuda/memory.cuh
/// Memory spaces in the type, device allocation, streams and host/device copies.
///
/// - `space_view<T, Rank, Space>`: a non-owning strided view like `tensor_view`, whose memory
///   space (`memory_space::host` or `memory_space::device`) is a template parameter.
///   `device_view<T, Rank>` is the device one. No conversion exists between spaces, and the
///   CUDA ops take only device views, so handing a host `tensor_view` (or a `host_view`) to a
///   device kernel is a compile error (tests/cuda has a must-not-compile test for it).
///   Element access is `MOELA_HOST_DEVICE`, for use inside kernels.
/// - `device_allocator`: the pluggable allocation interface; `cuda_malloc_allocator` (plain
///   `cudaMalloc`/`cudaFree`, the default) and `caching_allocator` (keeps freed blocks in
///   size classes and reuses them: no `cudaMalloc` in a steady decode loop).
///   `set_default_allocator()` swaps the process-wide default.
/// - `device_tensor<T, Rank>`: an owning, contiguous device buffer from an allocator.
/// - `stream`: an owning `cudaStream_t` (or a non-owning wrapper of the legacy default stream).
/// - `copy(dst, src, stream)`: host -> device and device -> host copies of contiguous views,
///   shapes checked; `to_device(host view)`, `to_host(device view)` for convenience.
///
/// Errors: every failing CUDA call throws moela::error with the call, the CUDA error name and
/// the shapes involved; shape mismatches throw moela::error naming the operation.

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <map>
#include <mutex>
#include <span>
#include <type_traits>
#include <utility>

#include "moela/backend/cuda/error.cuh"
#include "moela/core/config.hpp"
#include "moela/core/tensor.hpp"

namespace moela::gpu {

/// Where a view's memory lives.
enum class memory_space { host, device };

/// A strided non-owning view of rank 1..4 in memory space `Space`. Same conventions as
/// `tensor_view` (elements, row-major, signed index_t). Constructing one from a raw pointer
/// is explicit: the caller asserts which space the pointer belongs to.
template <class T, std::size_t Rank, memory_space Space>
class space_view {
  static_assert(Rank >= 1 && Rank <= 4, "moela views have rank 1..4");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  static constexpr std::size_t rank = Rank;
  static constexpr memory_space space = Space;

  space_view() = default;
  /// A contiguous view of `shape` at `data`, which must point into `Space` memory.
  explicit space_view(T* data, const shape_t<Rank>& shape) : space_view(data, shape, contiguous_strides(shape)) {}
  explicit space_view(T* data, const shape_t<Rank>& shape, const shape_t<Rank>& strides)
      : data_(data), shape_(shape), strides_(strides) {
    for (std::size_t d = 0; d < Rank; ++d)
      check(shape[d] >= 0, "device view: negative extent in shape ", to_string(shape));
  }
  /// Non-const to const, within the same space only.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  space_view(const space_view<U, Rank, Space>& o)  // NOLINT(google-explicit-constructor)
      : data_(o.data()), shape_(o.shape()), strides_(o.strides()) {}
  /// A host tensor_view is a host space_view (never a device one).
  template <class U>
    requires(Space == memory_space::host && std::is_convertible_v<U*, T*>)
  space_view(const tensor_view<U, Rank>& v)  // NOLINT(google-explicit-constructor)
      : data_(v.data()), shape_(v.shape()), strides_(v.strides()) {}

  MOELA_HOST_DEVICE T* data() const { return data_; }
  const shape_t<Rank>& shape() const { return shape_; }
  const shape_t<Rank>& strides() const { return strides_; }
  MOELA_HOST_DEVICE index_t extent(std::size_t d) const { return shape_[d]; }
  MOELA_HOST_DEVICE index_t stride(std::size_t d) const { return strides_[d]; }
  MOELA_HOST_DEVICE index_t size() const {
    index_t n = 1;
    for (std::size_t d = 0; d < Rank; ++d) n *= shape_[d];
    return n;
  }
  bool is_contiguous() const {
    index_t s = 1;
    for (std::size_t i = Rank; i-- > 0;) {
      if (shape_[i] != 1 && strides_[i] != s) return false;
      s *= shape_[i];
    }
    return true;
  }
  /// Unchecked element access (device code uses this).
  template <class... I>
    requires(sizeof...(I) == Rank)
  MOELA_HOST_DEVICE T& operator()(I... idx) const {
    const index_t ii[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) off += ii[d] * strides_[d];
    return data_[off];
  }
  /// The sub-view `[begin, end)` along `dim` (checked).
  space_view slice(std::size_t dim, index_t begin, index_t end) const {
    check(dim < Rank && 0 <= begin && begin <= end && end <= shape_[dim], "device view slice: range [", begin, ", ",
          end, ") of dimension ", dim, " is out of bounds for shape ", to_string(shape_));
    space_view v = *this;
    v.data_ = data_ + begin * strides_[dim];
    v.shape_[dim] = end - begin;
    return v;
  }
  /// The same memory with a new shape (contiguous views only).
  template <std::size_t R2>
  space_view<T, R2, Space> reshape(const shape_t<R2>& s) const {
    index_t n = 1;
    for (auto e : s) n *= e;
    check(is_contiguous() && n == size(), "device view reshape: cannot view ", to_string(shape_), " as ",
          to_string(s));
    return space_view<T, R2, Space>(data_, s);
  }

 private:
  T* data_ = nullptr;
  shape_t<Rank> shape_{};
  shape_t<Rank> strides_{};
};

template <class T, std::size_t Rank>
using device_view = space_view<T, Rank, memory_space::device>;
template <class T, std::size_t Rank>
using host_view = space_view<T, Rank, memory_space::host>;
template <class T, std::size_t Rank>
using const_device_view = device_view<const T, Rank>;

// ---- streams ---------------------------------------------------------------------------------

/// An owning CUDA stream (non-blocking with respect to the legacy default stream), or, from
/// `stream::legacy()`, a non-owning handle of the default stream. Move-only.
class stream {
 public:
  stream() { MOELA_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "stream"); }
  static stream legacy() { return stream(nullptr, false); }
  stream(stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)), owned_(std::exchange(o.owned_, false)) {}
  stream& operator=(stream&& o) noexcept {
    if (this != &o) {
      reset();
      s_ = std::exchange(o.s_, nullptr);
      owned_ = std::exchange(o.owned_, false);
    }
    return *this;
  }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() { reset(); }

  cudaStream_t get() const { return s_; }
  /// Blocks until all work queued on the stream has finished; reports asynchronous faults.
  void synchronize() const { MOELA_CUDA_CHECK(cudaStreamSynchronize(s_), "stream::synchronize"); }

 private:
  stream(cudaStream_t s, bool owned) : s_(s), owned_(owned) {}
  void reset() noexcept {
    if (owned_ && s_) cudaStreamDestroy(s_);
    s_ = nullptr;
    owned_ = false;
  }
  cudaStream_t s_ = nullptr;
  bool owned_ = true;
};

/// The legacy default stream, for ops called without one.
inline const stream& default_stream() {
  static const stream s = stream::legacy();
  return s;
}

// ---- allocators ------------------------------------------------------------------------------

/// Pluggable device memory source. Implementations must be thread-safe.
class device_allocator {
 public:
  virtual ~device_allocator() = default;
  /// At least `bytes` of device memory, 256-byte aligned; throws moela::error on failure.
  virtual void* allocate(std::size_t bytes) = 0;
  /// Returns memory from allocate(ptr's size). `ptr` may be null.
  virtual void deallocate(void* ptr, std::size_t bytes) noexcept = 0;
};

/// `cudaMalloc` / `cudaFree` for every call (the default).
class cuda_malloc_allocator final : public device_allocator {
 public:
  void* allocate(std::size_t bytes) override {
    void* p = nullptr;
    if (bytes) MOELA_CUDA_CHECK(cudaMalloc(&p, bytes), "allocating ", bytes, " bytes");
    return p;
  }
  void deallocate(void* ptr, std::size_t) noexcept override {
    if (ptr) cudaFree(ptr);
  }
};

/// A caching pool: sizes are rounded up to a size class (512 B granularity below 1 MiB,
/// 2 MiB above), freed blocks are kept per class and handed out again; `release()` returns
/// every cached block to the device. Memory is served from `upstream` (cudaMalloc by default).
/// Blocks are reused without stream ordering: callers synchronize (or use one stream) before
/// freeing memory that a kernel may still read, as with cudaFree.
class caching_allocator final : public device_allocator {
 public:
  explicit caching_allocator(device_allocator* upstream = nullptr) : upstream_(upstream ? upstream : &plain_) {}
  ~caching_allocator() override { release(); }
  caching_allocator(const caching_allocator&) = delete;
  caching_allocator& operator=(const caching_allocator&) = delete;

  /// The size class `bytes` is rounded to.
  static std::size_t size_class(std::size_t bytes) {
    const std::size_t g = bytes < (std::size_t{1} << 20) ? 512 : (std::size_t{2} << 20);
    return (bytes + g - 1) / g * g;
  }
  void* allocate(std::size_t bytes) override {
    if (!bytes) return nullptr;
    const std::size_t c = size_class(bytes);
    {
      std::lock_guard lock(mu_);
      auto it = free_.find(c);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_bytes_ -= c;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    return upstream_->allocate(c);
  }
  void deallocate(void* ptr, std::size_t bytes) noexcept override {
    if (!ptr) return;
    const std::size_t c = size_class(bytes);
    std::lock_guard lock(mu_);
    free_.emplace(c, ptr);
    cached_bytes_ += c;
  }
  /// Frees every cached block.
  void release() noexcept {
    std::lock_guard lock(mu_);
    for (auto& [c, p] : free_) upstream_->deallocate(p, c);
    free_.clear();
    cached_bytes_ = 0;
  }
  std::size_t cached_bytes() const {
    std::lock_guard lock(mu_);
    return cached_bytes_;
  }
  /// Allocations served from the cache / from upstream.
  std::size_t hits() const {
    std::lock_guard lock(mu_);
    return hits_;
  }
  std::size_t misses() const {
    std::lock_guard lock(mu_);
    return misses_;
  }

 private:
  cuda_malloc_allocator plain_;
  device_allocator* upstream_;
  mutable std::mutex mu_;
  std::multimap<std::size_t, void*> free_;
  std::size_t cached_bytes_ = 0, hits_ = 0, misses_ = 0;
};

namespace detail {
inline device_allocator*& default_allocator_slot() {
  static cuda_malloc_allocator plain;
  static device_allocator* current = &plain;
  return current;
}
}  // namespace detail

/// The allocator device tensors use when none is given.
inline device_allocator& default_allocator() { return *detail::default_allocator_slot(); }
/// Makes `a` the default (it must outlive every tensor allocated from it); returns the old one.
inline device_allocator& set_default_allocator(device_allocator& a) {
  device_allocator* old = detail::default_allocator_slot();
  detail::default_allocator_slot() = &a;
  return *old;
}

// ---- owning device tensor --------------------------------------------------------------------

/// An owning, contiguous, row-major device buffer. Contents are uninitialized unless
/// `zero()` is called. Move-only (copies are explicit: `copy`).
template <class T, std::size_t Rank>
class device_tensor {
  static_assert(std::is_trivially_copyable_v<T> && !std::is_const_v<T>);

 public:
  device_tensor() = default;
  explicit device_tensor(const shape_t<Rank>& shape, device_allocator& alloc = default_allocator())
      : shape_(shape), alloc_(&alloc) {
    for (auto e : shape) check(e >= 0, "device_tensor: negative extent in shape ", to_string(shape));
    data_ = static_cast<T*>(alloc_->allocate(bytes()));
  }
  device_tensor(device_tensor&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), shape_(o.shape_), alloc_(o.alloc_) {}
  device_tensor& operator=(device_tensor&& o) noexcept {
    if (this != &o) {
      free();
      data_ = std::exchange(o.data_, nullptr);
      shape_ = o.shape_;
      alloc_ = o.alloc_;
    }
    return *this;
  }
  ~device_tensor() { free(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  const shape_t<Rank>& shape() const { return shape_; }
  index_t extent(std::size_t d) const { return shape_[d]; }
  index_t size() const {
    index_t n = 1;
    for (auto e : shape_) n *= e;
    return n;
  }
  std::size_t bytes() const { return sizeof(T) * static_cast<std::size_t>(size()); }

  device_view<T, Rank> view() { return device_view<T, Rank>(data_, shape_); }
  device_view<const T, Rank> view() const { return device_view<const T, Rank>(data_, shape_); }
  operator device_view<T, Rank>() { return view(); }              // NOLINT
  operator device_view<const T, Rank>() const { return view(); }  // NOLINT

  /// Sets every byte to zero (asynchronously on `s`).
  void zero(const stream& s = default_stream()) {
    if (bytes()) MOELA_CUDA_CHECK(cudaMemsetAsync(data_, 0, bytes(), s.get()), "device_tensor::zero ", to_string(shape_));
  }

 private:
  void free() noexcept {
    if (data_) alloc_->deallocate(data_, bytes());
    data_ = nullptr;
  }
  T* data_ = nullptr;
  shape_t<Rank> shape_{};
  device_allocator* alloc_ = nullptr;
};

// ---- copies ----------------------------------------------------------------------------------

namespace detail {
template <class D, class S>
void check_copy(const D& dst, const S& src, const char* what) {
  check(dst.shape() == src.shape(), what, ": destination is ", to_string(dst.shape()), " but source is ",
        to_string(src.shape()));
  check(dst.is_contiguous() && src.is_contiguous(), what, ": views must be contiguous (shapes ",
        to_string(dst.shape()), ")");
}
}  // namespace detail

/// Host -> device copy, asynchronous on `s` (pageable host memory makes it synchronous).
template <class T, class U, std::size_t Rank>
  requires std::is_same_v<std::remove_const_t<U>, T>
void copy(device_view<T, Rank> dst, host_view<U, Rank> src, const stream& s = default_stream()) {
  detail::check_copy(dst, src, "copy host->device");
  MOELA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * dst.size(), cudaMemcpyHostToDevice, s.get()),
                   "copy host->device ", to_string(dst.shape()));
}
/// Device -> host copy on `s`; call `s.synchronize()` before reading `dst`.
template <class T, class U, std::size_t Rank>
  requires std::is_same_v<std::remove_const_t<U>, T>
void copy(host_view<T, Rank> dst, device_view<U, Rank> src, const stream& s = default_stream()) {
  detail::check_copy(dst, src, "copy device->host");
  MOELA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * dst.size(), cudaMemcpyDeviceToHost, s.get()),
                   "copy device->host ", to_string(dst.shape()));
}
/// Device -> device copy on `s`.
template <class T, class U, std::size_t Rank>
  requires std::is_same_v<std::remove_const_t<U>, T>
void copy(device_view<T, Rank> dst, device_view<U, Rank> src, const stream& s = default_stream()) {
  detail::check_copy(dst, src, "copy device->device");
  MOELA_CUDA_CHECK(
      cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * dst.size(), cudaMemcpyDeviceToDevice, s.get()),
      "copy device->device ", to_string(dst.shape()));
}

/// Host -> device copy from a plain `tensor_view` (a host view).
template <class T, class U, std::size_t Rank>
  requires std::is_same_v<std::remove_const_t<U>, T>
void copy(device_view<T, Rank> dst, tensor_view<U, Rank> src, const stream& s = default_stream()) {
  copy(dst, host_view<U, Rank>(src), s);
}
/// Device -> host copy into a plain `tensor_view`.
template <class T, class U, std::size_t Rank>
  requires std::is_same_v<std::remove_const_t<U>, T>
void copy(tensor_view<T, Rank> dst, device_view<U, Rank> src, const stream& s = default_stream()) {
  copy(host_view<T, Rank>(dst), src, s);
}

/// A new device tensor holding a copy of a host view (waits for the copy).
template <class T, std::size_t Rank>
device_tensor<std::remove_const_t<T>, Rank> to_device(const tensor_view<T, Rank>& src,
                                                      const stream& s = default_stream(),
                                                      device_allocator& alloc = default_allocator()) {
  device_tensor<std::remove_const_t<T>, Rank> d(src.shape(), alloc);
  copy(d.view(), host_view<T, Rank>(src), s);
  s.synchronize();
  return d;
}
template <class T, std::size_t Rank>
device_tensor<T, Rank> to_device(const tensor<T, Rank>& src, const stream& s = default_stream(),
                                 device_allocator& alloc = default_allocator()) {
  return to_device(src.view(), s, alloc);
}

/// A new host tensor holding a copy of a device view (waits for the copy).
template <class T, std::size_t Rank>
tensor<std::remove_const_t<T>, Rank> to_host(device_view<T, Rank> src, const stream& s = default_stream()) {
  tensor<std::remove_const_t<T>, Rank> h(src.shape());
  copy(host_view<std::remove_const_t<T>, Rank>(h.view()), src, s);
  s.synchronize();
  return h;
}

// ---- devices ---------------------------------------------------------------------------------

/// Number of CUDA devices usable by this process (0 when there is no driver or no GPU).
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// Compute capability of the current device as 10 * major + minor (e.g. 90).
inline int current_sm() {
  int dev = 0;
  MOELA_CUDA_CHECK(cudaGetDevice(&dev), "current_sm");
  cudaDeviceProp p{};
  MOELA_CUDA_CHECK(cudaGetDeviceProperties(&p, dev), "current_sm");
  return p.major * 10 + p.minor;
}

}  // namespace moela::gpu
