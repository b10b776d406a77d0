#pragma once
/// \file moela/core/tensor.hpp
/// `tensor_view<T, Rank>`: a non-owning, strided, row-major view of rank 1..4 over any memory
/// (moela buffers, user arrays, memory-mapped checkpoint files). `tensor<T, Rank>`: an owning,
/// 64-byte aligned, contiguous buffer that hands out views.
///
/// Conventions: shapes and strides are in elements (not bytes), `index_t` (signed); the last
/// dimension is the contiguous one for tensors moela allocates. `T` may be const-qualified for
/// read-only views; a `tensor_view<T>` converts implicitly to `tensor_view<const T>`.
///
/// Errors: constructing or slicing a view with a negative extent, slicing out of bounds, or
/// `at()` with an out-of-range index throws `moela::error` naming the operation and shapes.
/// `operator()` is unchecked (a debug assert), for inner loops. `view_of(span, shape)` makes a
/// view over a buffer of known size and throws when the shape does not fit in it;
/// `check_shape`, `check_same_shape`, `check_nonempty` and `check_extent_match` are the checks
/// ops run on their arguments.
///
/// Storage of a `tensor` of `huge_page_bytes` (2 MiB) or more is its own anonymous mapping, 2 MiB
/// aligned and advised for transparent huge pages (Linux `madvise(MADV_HUGEPAGE)`; the kernel
/// setting `/sys/kernel/mm/transparent_hugepage/enabled` = never turns that off): a GEMV that
/// streams weights then takes one TLB miss per 2 MiB instead of per 4 KiB (an MoE decode step
/// ran 3-12% faster with FP8 experts, 0-5% with W4A8, `moela-bench` `moe_pages/`). Smaller
/// tensors, and other systems, use `operator new`.
///
/// Static extents: `fixed_view<T, 4, dynamic_extent>` is a `tensor_view<T, 2>` whose first
/// extent is known to be 4 at compile time (std::mdspan's vocabulary: `static_extents`,
/// `dynamic_extent`). Static against static is checked by the compiler, anything else at run
/// time.

#include <algorithm>
#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moela {

template <std::size_t Rank>
using shape_t = std::array<index_t, Rank>;

/// A shape as it appears in error messages, "[3, 128]": what `to_string(shape)` returns. It holds
/// the extents and formats them only when streamed or converted to std::string, so a check that
/// passes (`check(ok, "x is ", to_string(x.shape()))`) costs a copy of the extents, not a string.
template <std::size_t Rank>
struct shape_text {
  shape_t<Rank> extents;
  friend std::ostream& operator<<(std::ostream& os, const shape_text& t) {
    os << '[';
    for (std::size_t i = 0; i < Rank; ++i) os << (i ? ", " : "") << t.extents[i];
    return os << ']';
  }
  operator std::string() const {
    std::ostringstream os;
    os << *this;
    return os.str();
  }
};

/// The shape `s` for an error message (see shape_text).
template <std::size_t Rank>
shape_text<Rank> to_string(const shape_t<Rank>& s) {
  return {s};
}

/// Row-major (C-order) strides of a contiguous tensor of the given shape.
template <std::size_t Rank>
constexpr shape_t<Rank> contiguous_strides(const shape_t<Rank>& shape) {
  shape_t<Rank> st{};
  index_t s = 1;
  for (std::size_t i = Rank; i-- > 0;) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

template <class T, std::size_t Rank>
class tensor_view {
  static_assert(Rank >= 1 && Rank <= 4, "moela tensors have rank 1..4");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  static constexpr std::size_t rank = Rank;

  constexpr tensor_view() = default;

  /// A contiguous row-major view of `shape` starting at `data`.
  tensor_view(T* data, const shape_t<Rank>& shape) : tensor_view(data, shape, contiguous_strides(shape)) {}

  /// A view with explicit strides (in elements).
  tensor_view(T* data, const shape_t<Rank>& shape, const shape_t<Rank>& strides)
      : data_(data), shape_(shape), strides_(strides) {
    for (std::size_t d = 0; d < Rank; ++d)
      check(shape[d] >= 0, "tensor_view: negative extent in shape ", to_string(shape));
  }

  /// Non-const to const conversion.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  tensor_view(const tensor_view<U, Rank>& o)  // NOLINT(google-explicit-constructor)
      : data_(o.data()), shape_(o.shape()), strides_(o.strides()) {}

  T* data() const { return data_; }
  const shape_t<Rank>& shape() const { return shape_; }
  const shape_t<Rank>& strides() const { return strides_; }
  index_t extent(std::size_t d) const { return shape_[d]; }
  index_t stride(std::size_t d) const { return strides_[d]; }
  /// Number of elements.
  index_t size() const {
    index_t n = 1;
    for (auto e : shape_) n *= e;
    return n;
  }
  bool empty() const { return size() == 0; }
  /// True when the elements are packed in row-major order without gaps.
  bool is_contiguous() const {
    index_t s = 1;
    for (std::size_t i = Rank; i-- > 0;) {
      if (shape_[i] != 1 && strides_[i] != s) return false;
      s *= shape_[i];
    }
    return true;
  }
  /// True when the last dimension has unit stride (rows can be streamed).
  bool rows_contiguous() const { return shape_[Rank - 1] <= 1 || strides_[Rank - 1] == 1; }

  template <class... I>
    requires(sizeof...(I) == Rank)
  T& operator()(I... idx) const {
    const index_t ii[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      assert(ii[d] >= 0 && ii[d] < shape_[d]);
      off += ii[d] * strides_[d];
    }
    return data_[off];
  }

  /// Bounds-checked element access.
  template <class... I>
    requires(sizeof...(I) == Rank)
  T& at(I... idx) const {
    const index_t ii[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      if (ii[d] < 0 || ii[d] >= shape_[d]) {
        shape_t<Rank> at_idx{};
        for (std::size_t k = 0; k < Rank; ++k) at_idx[k] = ii[k];
        fail("tensor_view::at: index ", to_string(at_idx), " is out of bounds for shape ", to_string(shape_));
      }
      off += ii[d] * strides_[d];
    }
    return data_[off];
  }

  /// The sub-view `[begin, end)` along dimension `dim` (same rank).
  tensor_view slice(std::size_t dim, index_t begin, index_t end) const {
    check(dim < Rank, "tensor_view::slice: dimension ", dim, " of a rank-", Rank, " view");
    check(0 <= begin && begin <= end && end <= shape_[dim], "tensor_view::slice: range [", begin, ", ", end,
          ") is out of bounds for dimension ", dim, " of shape ", to_string(shape_));
    tensor_view v = *this;
    v.data_ = data_ + begin * strides_[dim];
    v.shape_[dim] = end - begin;
    return v;
  }

  /// Index `i` of the first dimension, dropping it (rank - 1). Checked.
  auto operator[](index_t i) const
    requires(Rank > 1)
  {
    check(i >= 0 && i < shape_[0], "tensor_view[]: index ", i, " is out of bounds for shape ", to_string(shape_));
    shape_t<Rank - 1> s{}, st{};
    for (std::size_t d = 1; d < Rank; ++d) {
      s[d - 1] = shape_[d];
      st[d - 1] = strides_[d];
    }
    return tensor_view<T, Rank - 1>(data_ + i * strides_[0], s, st);
  }

  /// A rank-1 view as a std::span (requires unit stride).
  std::span<T> span() const
    requires(Rank == 1)
  {
    check(shape_[0] <= 1 || strides_[0] == 1, "tensor_view::span: view is strided (stride ", strides_[0], ")");
    return std::span<T>(data_, static_cast<std::size_t>(shape_[0]));
  }

  /// The same memory with a new shape; the view must be contiguous and sizes must agree.
  template <std::size_t R2>
  tensor_view<T, R2> reshape(const shape_t<R2>& s) const {
    index_t n = 1;
    for (auto e : s) n *= e;
    check(is_contiguous(), "tensor_view::reshape: view of shape ", to_string(shape_), " is not contiguous");
    check(n == size(), "tensor_view::reshape: cannot view ", to_string(shape_), " as ", to_string(s));
    return tensor_view<T, R2>(data_, s);
  }

 private:
  T* data_ = nullptr;
  shape_t<Rank> shape_{};
  shape_t<Rank> strides_{};
};

template <class T, std::size_t Rank>
using const_view = tensor_view<const T, Rank>;

/// A rank-1 view over a span (contiguous).
template <class T>
tensor_view<T, 1> view_of(std::span<T> s) {
  return tensor_view<T, 1>(s.data(), {static_cast<index_t>(s.size())});
}

/// Tensors of at least this many bytes get storage of their own, advised for huge pages (see the
/// file comment).
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

namespace detail {
/// Frees tensor storage: `mapped` bytes of an anonymous mapping, or (0) an aligned `operator new`.
struct aligned_delete {
  std::size_t mapped = 0;
  void operator()(void* p) const {
#if defined(__linux__)
    if (mapped != 0) {
      ::munmap(p, mapped);
      return;
    }
#endif
    ::operator delete(p, std::align_val_t(storage_alignment));
  }
};

/// Zeroed storage of `bytes` (a multiple of storage_alignment, > 0) and its deleter: a mapping
/// aligned to huge_page_bytes and advised for huge pages when `bytes >= huge_page_bytes` (Linux),
/// else `operator new` + memset.
inline std::unique_ptr<void, aligned_delete> allocate_storage(std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= huge_page_bytes) {
    const std::size_t page = 4096, len = (bytes + page - 1) / page * page, span = len + huge_page_bytes;
    void* m = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      // Keep the huge_page_bytes-aligned `len` bytes inside the mapping; give back the rest.
      auto* base = static_cast<char*>(m);
      const auto a = reinterpret_cast<std::uintptr_t>(base);
      char* p = base + ((huge_page_bytes - a % huge_page_bytes) % huge_page_bytes);
      if (p > base) ::munmap(base, static_cast<std::size_t>(p - base));
      if (p + len < base + span) ::munmap(p + len, static_cast<std::size_t>(base + span - (p + len)));
      ::madvise(p, len, MADV_HUGEPAGE);  // advice only: failure leaves 4 KiB pages
      return {p, aligned_delete{len}};  // anonymous pages read as zero
    }
  }
#endif
  void* p = ::operator new(bytes, std::align_val_t(storage_alignment));
  std::memset(p, 0, bytes);
  return {p, aligned_delete{}};
}

/// The data of `v` after growing it to at least `n` elements; it never shrinks. The one mechanism
/// of the library's reusable buffers (the kernels' thread-local scratch, quantized activations):
/// sized on first use, then reused, so no call in a decode loop allocates.
template <class T>
T* grown(std::vector<T>& v, index_t n) {
  if (v.size() < static_cast<std::size_t>(n)) v.resize(static_cast<std::size_t>(n));
  return v.data();
}
}  // namespace detail

/// An owning, contiguous, row-major, 64-byte aligned tensor. Elements are zero-initialised.
/// Copying copies the elements; moving is cheap. `T` must be trivially copyable.
template <class T, std::size_t Rank>
class tensor {
  static_assert(std::is_trivially_copyable_v<T>, "moela::tensor holds trivially copyable elements");
  static_assert(!std::is_const_v<T>);

 public:
  using element_type = T;
  static constexpr std::size_t rank = Rank;

  tensor() = default;
  explicit tensor(const shape_t<Rank>& shape) : shape_(shape) {
    for (auto e : shape) check(e >= 0, "tensor: negative extent in shape ", to_string(shape));
    allocate();
  }
  tensor(const tensor& o) : shape_(o.shape_) {
    allocate();
    if (size()) std::memcpy(data_.get(), o.data_.get(), sizeof(T) * static_cast<std::size_t>(size()));
  }
  tensor& operator=(const tensor& o) {
    if (this != &o) *this = tensor(o);
    return *this;
  }
  tensor(tensor&&) noexcept = default;
  tensor& operator=(tensor&&) noexcept = default;

  T* data() { return static_cast<T*>(data_.get()); }
  const T* data() const { return static_cast<const T*>(data_.get()); }
  const shape_t<Rank>& shape() const { return shape_; }
  index_t extent(std::size_t d) const { return shape_[d]; }
  index_t size() const {
    index_t n = 1;
    for (auto e : shape_) n *= e;
    return data_ ? n : 0;
  }
  bool empty() const { return size() == 0; }
  /// Bytes of element storage.
  std::size_t bytes() const { return sizeof(T) * static_cast<std::size_t>(size()); }

  tensor_view<T, Rank> view() { return tensor_view<T, Rank>(data(), shape_); }
  tensor_view<const T, Rank> view() const { return tensor_view<const T, Rank>(data(), shape_); }
  tensor_view<const T, Rank> cview() const { return view(); }
  operator tensor_view<T, Rank>() { return view(); }                    // NOLINT
  operator tensor_view<const T, Rank>() const { return view(); }        // NOLINT

  template <class... I>
    requires(sizeof...(I) == Rank)
  T& operator()(I... idx) { return data()[offset(idx...)]; }
  template <class... I>
    requires(sizeof...(I) == Rank)
  const T& operator()(I... idx) const { return data()[offset(idx...)]; }

  std::span<T> flat() { return {data(), static_cast<std::size_t>(size())}; }
  std::span<const T> flat() const { return {data(), static_cast<std::size_t>(size())}; }

 private:
  /// Row-major offset of an index (unchecked but for a debug assert). Element access must not
  /// build a view: the view constructor's shape checks cost ~100 ns per element in a loop.
  template <class... I>
  index_t offset(I... idx) const {
    const index_t ii[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      assert(ii[d] >= 0 && ii[d] < shape_[d]);
      off = off * shape_[d] + ii[d];
    }
    return off;
  }

  void allocate() {
    // The product of the non-zero extents must fit (so that size() and the strides, which
    // multiply extents in some order, never overflow, even for a shape with a zero extent).
    index_t n = 1;
    for (auto e : shape_) {
      if (e == 0) continue;
      check(n <= std::numeric_limits<index_t>::max() / e, "tensor: shape ", to_string(shape_),
            " is too large (the product of its non-zero extents does not fit in index_t)");
      n *= e;
    }
    if (std::find(shape_.begin(), shape_.end(), index_t{0}) != shape_.end()) n = 0;
    const std::size_t bytes = checked_product<std::size_t>("tensor", sizeof(T), n);
    const std::size_t padded = std::max<std::size_t>(
        storage_alignment, (bytes + storage_alignment - 1) / storage_alignment * storage_alignment);
    data_ = detail::allocate_storage(padded);
  }

  std::unique_ptr<void, detail::aligned_delete> data_;
  shape_t<Rank> shape_{};
};

/// Throws a moela::error naming `op` and both shapes unless `v` has exactly `expected` shape.
/// An `expected` entry of -1 matches any extent.
template <class T, std::size_t Rank>
void check_shape(const char* op, const char* name, const tensor_view<T, Rank>& v, const shape_t<Rank>& expected) {
  for (std::size_t d = 0; d < Rank; ++d) {
    if (expected[d] >= 0 && v.extent(d) != expected[d]) {
      shape_t<Rank> e = expected;
      std::string es = "[";
      for (std::size_t k = 0; k < Rank; ++k) {
        if (k) es += ", ";
        es += e[k] < 0 ? std::string("*") : std::to_string(e[k]);
      }
      fail(op, ": ", name, " has shape ", to_string(v.shape()), " but ", es + "]", " was expected");
    }
  }
}

/// Throws unless every extent of `v` is positive.
template <class T, std::size_t Rank>
void check_nonempty(const char* op, const char* name, const tensor_view<T, Rank>& v) {
  for (std::size_t d = 0; d < Rank; ++d)
    check(v.extent(d) > 0, op, ": ", name, " has a zero-size dimension (shape ", to_string(v.shape()), ")");
}

/// Throws a moela::error naming `op` and both shapes unless `a` and `b` have the same shape.
template <class T, class U, std::size_t Rank>
void check_same_shape(const char* op, const char* a_name, const tensor_view<T, Rank>& a, const char* b_name,
                      const tensor_view<U, Rank>& b) {
  check(a.shape() == b.shape(), op, ": ", a_name, " has shape ", to_string(a.shape()), " but ", b_name,
        " has shape ", to_string(b.shape()), " (they must match)");
}

/// True when the memory spans of `a` and `b` (from the first to the last element each can
/// reach through its strides) share a byte. Empty views overlap nothing.
template <class T, class U, std::size_t Rank>
bool memory_overlaps(const tensor_view<T, Rank>& a, const tensor_view<U, Rank>& b) {
  auto span_of = [](const auto& v, std::uintptr_t& lo, std::uintptr_t& hi) {
    index_t last = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      if (v.extent(d) == 0) return false;
      last += (v.extent(d) - 1) * std::max<index_t>(v.stride(d), 0);
    }
    using E = std::remove_cv_t<std::remove_reference_t<decltype(*v.data())>>;
    lo = reinterpret_cast<std::uintptr_t>(v.data());
    hi = lo + static_cast<std::uintptr_t>(last + 1) * sizeof(E);
    return true;
  };
  std::uintptr_t alo = 0, ahi = 0, blo = 0, bhi = 0;
  if (!span_of(a, alo, ahi) || !span_of(b, blo, bhi)) return false;
  return alo < bhi && blo < ahi;
}

/// A view of `shape` (row-major, or with explicit `strides`) over a buffer of known size,
/// e.g. user memory or a memory-mapped file region. Throws moela::error when an element of
/// the view would fall outside `buffer`, or an extent or stride is negative.
template <class T, std::size_t Rank>
tensor_view<T, Rank> view_of(std::span<T> buffer, const shape_t<Rank>& shape,
                             const shape_t<Rank>& strides) {
  index_t last = 0;  // offset of the last element
  bool empty = false;
  for (std::size_t d = 0; d < Rank; ++d) {
    check(shape[d] >= 0 && strides[d] >= 0, "view_of: negative extent or stride (shape ", to_string(shape),
          ", strides ", to_string(strides), ")");
    if (shape[d] == 0) empty = true;
    else last += (shape[d] - 1) * strides[d];
  }
  check(empty || last < static_cast<index_t>(buffer.size()), "view_of: a view of shape ", to_string(shape),
        " and strides ", to_string(strides), " reaches element ", last, " but the buffer holds ", buffer.size(),
        " elements");
  return tensor_view<T, Rank>(buffer.data(), shape, strides);
}
template <class T, std::size_t Rank>
tensor_view<T, Rank> view_of(std::span<T> buffer, const shape_t<Rank>& shape) {
  return view_of(buffer, shape, contiguous_strides(shape));
}
/// Same, with the shape as a braced list: `view_of(std::span(buf), {4, 6})`.
template <class T, std::size_t Rank>
tensor_view<T, Rank> view_of(std::span<T> buffer, const index_t (&shape)[Rank]) {
  shape_t<Rank> s{};
  for (std::size_t d = 0; d < Rank; ++d) s[d] = shape[d];
  return view_of(buffer, s, contiguous_strides(s));
}
template <class T, std::size_t Rank>
tensor_view<T, Rank> view_of(std::span<T> buffer, const index_t (&shape)[Rank], const index_t (&strides)[Rank]) {
  shape_t<Rank> s{}, st{};
  for (std::size_t d = 0; d < Rank; ++d) {
    s[d] = shape[d];
    st[d] = strides[d];
  }
  return view_of(buffer, s, st);
}

// ---- static extents ---------------------------------------------------------------------
// The vocabulary of std::mdspan (which GCC 12 lacks): an extent is either a number known at
// compile time or `dynamic_extent`. A `fixed_view<T, E...>` is a `tensor_view<T, sizeof...(E)>`
// that also carries the extents known at compile time; it converts to the plain view (so every
// function taking a tensor_view accepts it). Two extents that are both static are compared by
// the compiler (a mismatch does not compile); when either is dynamic the comparison happens at
// run time and throws moela::error.

/// Marks an extent known only at run time.
inline constexpr index_t dynamic_extent = -1;

/// A shape whose entries are compile-time extents or `dynamic_extent`.
template <index_t... E>
struct static_extents {
  static_assert(sizeof...(E) >= 1 && sizeof...(E) <= 4, "moela tensors have rank 1..4");
  static_assert(((E >= 0 || E == dynamic_extent) && ...), "static_extents: an extent is >= 0 or dynamic_extent");
  static constexpr std::size_t rank = sizeof...(E);
  static constexpr shape_t<rank> values{E...};
  /// The compile-time extent of dimension `d`, or dynamic_extent.
  static constexpr index_t static_extent(std::size_t d) { return values[d]; }
  static constexpr bool is_static(std::size_t d) { return values[d] != dynamic_extent; }
  static constexpr std::size_t rank_dynamic = ((E == dynamic_extent ? 1u : 0u) + ...);
  static constexpr bool all_static = rank_dynamic == 0;
  /// The full shape when every extent is static.
  static constexpr shape_t<rank> shape()
    requires all_static
  {
    return values;
  }
  /// "[4, *]": dynamic extents are written as `*`.
  static std::string to_string() {
    std::string r = "[";
    for (std::size_t i = 0; i < rank; ++i) {
      if (i) r += ", ";
      r += values[i] == dynamic_extent ? std::string("*") : std::to_string(values[i]);
    }
    return r + "]";
  }
  /// True when `s` agrees with every static extent.
  static constexpr bool matches(const shape_t<rank>& s) {
    for (std::size_t d = 0; d < rank; ++d)
      if (values[d] != dynamic_extent && values[d] != s[d]) return false;
    return true;
  }
};

namespace detail {
template <class A, class B, std::size_t... D>
constexpr bool extents_compatible_impl(std::index_sequence<D...>) {
  return ((A::values[D] == dynamic_extent || B::values[D] == dynamic_extent || A::values[D] == B::values[D]) &&
          ...);
}
}  // namespace detail

/// True when two extents of the same rank can describe the same shape (every pair of static
/// extents is equal).
template <class A, class B>
concept extents_compatible =
    A::rank == B::rank && detail::extents_compatible_impl<A, B>(std::make_index_sequence<A::rank>{});

/// A strided view with extents partly or fully known at compile time. Constructing it from a
/// run-time shape checks that shape against the static extents (moela::error on mismatch).
template <class T, index_t... E>
class fixed_view : public tensor_view<T, sizeof...(E)> {
  using base = tensor_view<T, sizeof...(E)>;

 public:
  using extents_type = static_extents<E...>;
  static constexpr std::size_t rank = extents_type::rank;

  /// A view of null data whose static extents are set and dynamic extents are 0.
  fixed_view() : base(nullptr, default_shape()) {}

  /// A contiguous view of the static shape at `data` (every extent static).
  explicit fixed_view(T* data)
    requires extents_type::all_static
      : base(data, extents_type::values) {}

  /// From a plain view (or a non-const one when T is const): checks `v`'s shape against the
  /// static extents, throwing moela::error naming both. Not for fixed views (see below).
  template <class V>
    requires(std::is_same_v<V, tensor_view<typename V::element_type, rank>> &&
             std::is_convertible_v<typename V::element_type (*)[], T (*)[]>)
  explicit fixed_view(const V& v) : base(v) {
    check_matches("fixed_view", v.shape());
  }

  /// A contiguous view with the dynamic extents taken from `shape` (checked like above).
  fixed_view(T* data, const shape_t<rank>& shape) : base(data, shape) { check_matches("fixed_view", shape); }

  /// From another fixed view: compiles only when the static extents agree; the extents static
  /// here but dynamic there are checked at run time. Adds const like tensor_view does.
  template <class U, index_t... F>
    requires(sizeof...(F) == sizeof...(E) && extents_compatible<static_extents<E...>, static_extents<F...>> &&
             std::is_convertible_v<U (*)[], T (*)[]>)
  fixed_view(const fixed_view<U, F...>& o)  // NOLINT(google-explicit-constructor)
      : base(o.data(), o.shape(), o.strides()) {
    if constexpr (!std::is_same_v<static_extents<E...>, static_extents<F...>>) check_matches("fixed_view", o.shape());
  }

  /// The extent of dimension D: a constant when static (usable in constant expressions).
  template <std::size_t D>
  constexpr index_t extent() const {
    static_assert(D < rank, "fixed_view::extent<D>: D is out of range");
    if constexpr (extents_type::is_static(D)) return extents_type::values[D];
    else return base::extent(D);
  }
  using base::extent;

 private:
  static shape_t<rank> default_shape() {
    shape_t<rank> s = extents_type::values;
    for (auto& e : s)
      if (e == dynamic_extent) e = 0;
    return s;
  }
  static void check_matches(const char* op, const shape_t<rank>& s) {
    check(extents_type::matches(s), op, ": shape ", moela::to_string(s), " does not match the static extents ",
          extents_type::to_string());
  }
};

template <class T, index_t... E>
using const_fixed_view = fixed_view<const T, E...>;

namespace detail {
template <std::size_t Rank, class Seq = std::make_index_sequence<Rank>>
struct all_dynamic;
template <std::size_t Rank, std::size_t... I>
struct all_dynamic<Rank, std::index_sequence<I...>> {
  using type = static_extents<((void)I, dynamic_extent)...>;
};
}  // namespace detail

/// The static extents of a view or tensor type: `static_extents<E...>` for a fixed_view, all
/// dynamic for tensor_view and tensor.
template <class V>
struct view_extents {
  using type = typename detail::all_dynamic<V::rank>::type;
};
template <class T, index_t... E>
struct view_extents<fixed_view<T, E...>> {
  using type = static_extents<E...>;
};
template <class V>
using view_extents_t = typename view_extents<std::remove_cvref_t<V>>::type;

/// True unless dimension `I` of view type `A` and dimension `J` of view type `B` are both
/// static and differ.
template <std::size_t I, class A, std::size_t J, class B>
inline constexpr bool extent_may_match = !view_extents_t<A>::is_static(I) || !view_extents_t<B>::is_static(J) ||
                                         view_extents_t<A>::values[I] == view_extents_t<B>::values[J];

/// Checks that dimension `I` of `a` equals dimension `J` of `b` (e.g. the K of x[M, K] and
/// W[N, K] in a matmul). Both static: checked by the compiler (a mismatch does not compile).
/// Otherwise: at run time, throwing moela::error naming `op` and both shapes.
template <std::size_t I, std::size_t J, class A, class B>
void check_extent_match(const char* op, const char* a_name, const A& a, const char* b_name, const B& b) {
  static_assert(extent_may_match<I, A, J, B>, "check_extent_match: the static extents differ");
  if constexpr (!view_extents_t<A>::is_static(I) || !view_extents_t<B>::is_static(J))
    check(a.extent(I) == b.extent(J), op, ": ", a_name, " is ", to_string(a.shape()), " but ", b_name, " is ",
          to_string(b.shape()), " (dimension ", I, " of ", a_name, " must equal dimension ", J, " of ", b_name, ")");
}

}  // namespace moela
