#include <doctest/doctest.h>

#include <moela/core/tensor.hpp>

#include <span>
#include <string>
#include <type_traits>

using moela::index_t;

TEST_CASE("tensor: owning storage is 64-byte aligned, zeroed, and hands out views") {
  moela::tensor<float, 3> t({2, 3, 5});
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  CHECK(t.size() == 30);
  for (float v : t.flat()) CHECK(v == 0.f);
  auto v = t.view();
  v(1, 2, 4) = 7.f;
  CHECK(t.data()[1 * 15 + 2 * 5 + 4] == 7.f);
  moela::const_view<float, 3> c = v;
  CHECK(c.is_contiguous());
  CHECK(c[1][2](4) == 7.f);
}

TEST_CASE("tensor_view: slicing keeps strides, bad slices throw moela::error naming the shapes") {
  float buf[24];
  for (int i = 0; i < 24; ++i) buf[i] = float(i);
  moela::tensor_view<float, 2> v(buf, {4, 6});
  auto s = v.slice(1, 2, 5);
  CHECK(s.extent(0) == 4);
  CHECK(s.extent(1) == 3);
  CHECK(!s.is_contiguous());
  CHECK(s.rows_contiguous());
  CHECK(s(3, 0) == 20.f);
  try {
    (void)v.slice(1, 2, 9);
    FAIL("no throw");
  } catch (const moela::error& e) {
    CHECK(std::string(e.what()).find("[4, 6]") != std::string::npos);
  }
  CHECK_THROWS_AS((void)v.at(4, 0), moela::error);
  CHECK_THROWS_AS((void)v[7], moela::error);
  CHECK_THROWS_AS(((void)v.reshape<2>({5, 5})), moela::error);
  CHECK_THROWS_AS(((void)s.reshape<1>({12})), moela::error);
  CHECK(v.reshape<3>({2, 2, 6})(1, 1, 5) == 23.f);
}

TEST_CASE("check_shape and check_nonempty report the operation and both shapes") {
  moela::tensor<float, 2> t({3, 0});
  try {
    moela::check_shape("matmul", "x", t.cview(), {3, 4});
    FAIL("no throw");
  } catch (const moela::error& e) {
    const std::string m = e.what();
    CHECK(m.find("matmul") != std::string::npos);
    CHECK(m.find("[3, 0]") != std::string::npos);
    CHECK(m.find("[3, 4]") != std::string::npos);
  }
  CHECK_THROWS_AS(moela::check_nonempty("rmsnorm", "x", t.cview()), moela::error);
  CHECK_NOTHROW(moela::check_shape("op", "x", t.cview(), {3, -1}));
}

namespace {
/// Runs `f`, expects a moela::error, and returns its message ("" if none was thrown).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("bad input: mismatched shapes name the operation and both shapes") {
  moela::tensor<float, 2> a({3, 4}), b({4, 3});
  const std::string m = error_of([&] { moela::check_same_shape("add", "a", a.cview(), "b", b.cview()); });
  CHECK(has(m, "add: a has shape [3, 4] but b has shape [4, 3]"));
  CHECK_NOTHROW(moela::check_same_shape("add", "a", a.cview(), "a", a.cview()));
  // The K of x[M, K] and W[N, K]: run-time check for dynamic views.
  moela::tensor<float, 2> x({2, 5}), w({7, 4});
  const std::string k = error_of([&] { moela::check_extent_match<1, 1>("matmul", "x", x.cview(), "W", w.cview()); });
  CHECK(has(k, "matmul: x is [2, 5] but W is [7, 4]"));
  CHECK(has(k, "dimension 1 of x must equal dimension 1 of W"));
  const std::string r = error_of([&] { (void)x.view().reshape<2>({3, 3}); });
  CHECK(has(r, "reshape: cannot view [2, 5] as [3, 3]"));
}

TEST_CASE("bad input: views out of bounds") {
  float buf[20] = {};
  std::span<float> s(buf);
  CHECK(moela::view_of(s, {4, 5}).extent(1) == 5);
  CHECK(moela::view_of(s, {2, 2}, {10, 1})(1, 1) == 0.f);  // strided view inside the buffer
  const std::string m = error_of([&] { (void)moela::view_of(s, {4, 6}); });
  CHECK(has(m, "view_of: a view of shape [4, 6]"));
  CHECK(has(m, "reaches element 23 but the buffer holds 20 elements"));
  CHECK(!error_of([&] { (void)moela::view_of(s, {3, 2}, {10, 1}); }).empty());  // row 2 starts at 20
  CHECK(!error_of([&] { (void)moela::view_of(s, {-1, 2}); }).empty());
  CHECK_NOTHROW((void)moela::view_of(s, {0, 100}));  // empty views touch nothing
  moela::tensor_view<float, 2> v(buf, {4, 5});
  CHECK(has(error_of([&] { (void)v.slice(0, 3, 5); }), "range [3, 5) is out of bounds for dimension 0 of shape [4, 5]"));
  CHECK(has(error_of([&] { (void)v.slice(2, 0, 1); }), "dimension 2 of a rank-2 view"));
  CHECK(has(error_of([&] { (void)v.slice(1, 3, 2); }), "out of bounds"));  // begin > end
  CHECK(has(error_of([&] { (void)v.at(0, 5); }), "index [0, 5] is out of bounds for shape [4, 5]"));
  CHECK(has(error_of([&] { (void)v.at(-1, 0); }), "out of bounds"));
  CHECK(has(error_of([&] { (void)v[4]; }), "index 4 is out of bounds for shape [4, 5]"));
  CHECK(v.slice(1, 0, 2)[0].span().size() == 2);  // a row of a column slice has unit stride
  CHECK(has(error_of([&] { (void)moela::tensor_view<float, 1>(buf, {5}, {2}).span(); }), "span: view is strided"));
  CHECK(has(error_of([&] { moela::tensor<float, 2> t({2, -3}); }), "negative extent in shape [2, -3]"));
  CHECK(has(error_of([&] { moela::tensor_view<float, 2> t(buf, {-2, 3}); }), "negative extent"));
}

TEST_CASE("bad input: zero-size dimensions where none is allowed") {
  moela::tensor<float, 3> t({2, 0, 3});
  CHECK(t.empty());
  const std::string m = error_of([&] { moela::check_nonempty("rmsnorm", "x", t.cview()); });
  CHECK(has(m, "rmsnorm: x has a zero-size dimension (shape [2, 0, 3])"));
  moela::tensor<float, 3> ok({1, 1, 1});
  CHECK_NOTHROW(moela::check_nonempty("rmsnorm", "x", ok.cview()));
  // Zero-size tensors are otherwise legal: copies, views and slices of them work.
  moela::tensor<float, 3> copy = t;
  CHECK(copy.size() == 0);
  CHECK(t.view().slice(0, 1, 2).size() == 0);
}

// ---- static extents ----------------------------------------------------------------------
using moela::dynamic_extent;
using moela::fixed_view;
using moela::static_extents;

static_assert(static_extents<3, 4>::all_static && static_extents<3, 4>::rank == 2);
static_assert(static_extents<3, dynamic_extent>::rank_dynamic == 1);
static_assert(moela::extents_compatible<static_extents<3, dynamic_extent>, static_extents<3, 4>>);
static_assert(!moela::extents_compatible<static_extents<3, 5>, static_extents<3, 4>>);
static_assert(!moela::extents_compatible<static_extents<3>, static_extents<3, 4>>);
// Static against static is decided by the compiler: no conversion between different extents...
static_assert(std::is_constructible_v<fixed_view<float, 3, dynamic_extent>, fixed_view<float, 3, 4>>);
static_assert(!std::is_constructible_v<fixed_view<float, 3, 5>, fixed_view<float, 3, 4>>);
static_assert(!std::is_constructible_v<fixed_view<float, 3, 4, 1>, fixed_view<float, 3, 4>>);
static_assert(std::is_convertible_v<fixed_view<float, 3, 4>, fixed_view<const float, 3, 4>>);
static_assert(!std::is_constructible_v<fixed_view<float, 3, 4>, fixed_view<const float, 3, 4>>);
// ...and a fixed_view is a tensor_view, so every function taking views accepts it.
static_assert(std::is_convertible_v<fixed_view<float, 3, 4>, moela::tensor_view<float, 2>>);
static_assert(std::is_convertible_v<fixed_view<float, 3, 4>, moela::const_view<float, 2>>);
static_assert(moela::extent_may_match<1, fixed_view<float, 2, 8>, 1, fixed_view<float, 4, 8>>);
static_assert(!moela::extent_may_match<1, fixed_view<float, 2, 8>, 1, fixed_view<float, 4, 9>>);
static_assert(moela::extent_may_match<1, fixed_view<float, 2, 8>, 1, moela::tensor_view<float, 2>>);

TEST_CASE("static extents: known extents are constants, dynamic ones are checked at run time") {
  float buf[12] = {};
  fixed_view<float, 3, 4> a(buf);
  static_assert(decltype(a)::extents_type::shape() == moela::shape_t<2>{3, 4});
  CHECK(a.extent<0>() == 3);
  CHECK(a.extent(1) == 4);
  CHECK(a.is_contiguous());
  a(2, 3) = 5.f;
  CHECK(buf[11] == 5.f);
  // Partly static: the dynamic extent comes from the run-time shape.
  fixed_view<float, dynamic_extent, 4> rows(buf, {3, 4});
  CHECK(rows.extent<0>() == 3);
  const fixed_view<float, 3, 4> back(rows);  // dynamic -> static: checked at run time
  CHECK(back(2, 3) == 5.f);
  fixed_view<float, dynamic_extent, 4> widened = a;  // static -> dynamic: always fine
  CHECK(widened.extent(0) == 3);
  moela::const_view<float, 2> plain = a;
  CHECK(plain(2, 3) == 5.f);
  // Run-time mismatches throw moela::error naming the shape and the static extents.
  const std::string m = error_of([&] { fixed_view<float, dynamic_extent, 6> bad(buf, {2, 4}); });
  CHECK(has(m, "fixed_view: shape [2, 4] does not match the static extents [*, 6]"));
  moela::tensor_view<float, 2> v(buf, {4, 3});
  CHECK(has(error_of([&] { fixed_view<float, 3, 4> bad(v); }), "shape [4, 3] does not match the static extents [3, 4]"));
  fixed_view<float, dynamic_extent, dynamic_extent> dyn(v);
  CHECK(has(error_of([&] { fixed_view<float, 3, 4> bad(dyn); }), "static extents [3, 4]"));
  // check_extent_match between a fixed and a dynamic view checks at run time.
  fixed_view<float, 1, 4> x(buf);
  CHECK_NOTHROW(moela::check_extent_match<1, 1>("matmul", "x", x, "W", a));  // both static: compile time
  CHECK_NOTHROW(moela::check_extent_match<1, 0>("matmul", "x", x, "v", v));
  CHECK(has(error_of([&] { moela::check_extent_match<1, 1>("matmul", "x", x, "v", v); }),
            "matmul: x is [1, 4] but v is [4, 3]"));
  // A default fixed view has null data and its static extents.
  fixed_view<float, 2, dynamic_extent> d;
  CHECK(d.data() == nullptr);
  CHECK(d.extent(0) == 2);
  CHECK(d.extent(1) == 0);
}

TEST_CASE("check_extent_match accepts owning tensors too") {
  moela::tensor<float, 2> x({2, 5}), w({7, 5}), bad({7, 4});
  static_assert(std::is_same_v<moela::view_extents_t<decltype(x)>, static_extents<dynamic_extent, dynamic_extent>>);
  CHECK_NOTHROW(moela::check_extent_match<1, 1>("matmul", "x", x, "W", w));
  CHECK(has(error_of([&] { moela::check_extent_match<1, 1>("matmul", "x", x, "W", bad); }),
            "matmul: x is [2, 5] but W is [7, 4]"));
}

TEST_CASE("tensor: a shape whose element count overflows is an error") {
  const index_t big = index_t{1} << 32;
  CHECK_THROWS_WITH_AS((moela::tensor<float, 2>({big, big})),
                       "tensor: shape [4294967296, 4294967296] is too large (the product of its non-zero extents "
                       "does not fit in index_t)",
                       moela::error);
  // Also with a zero extent: its size is 0, but its strides would overflow.
  CHECK_THROWS_AS((moela::tensor<float, 3>({0, big, big})), moela::error);
  CHECK(moela::tensor<float, 3>({big, 4, 0}).size() == 0);  // an empty extent: nothing to allocate
}

TEST_CASE("memory_overlaps: spans through the strides, empty views overlap nothing") {
  moela::tensor<float, 2> a({4, 8}), b({4, 8});
  CHECK(moela::memory_overlaps(a.view(), a.view()));
  CHECK_FALSE(moela::memory_overlaps(a.view(), b.view()));
  const moela::tensor_view<float, 2> top(a.data(), {2, 8}, {8, 1}), bottom(a.data() + 16, {2, 8}, {8, 1});
  CHECK_FALSE(moela::memory_overlaps(top, bottom));
  const moela::tensor_view<float, 2> mid(a.data() + 15, {1, 2}, {8, 1});
  CHECK(moela::memory_overlaps(top, mid));
  CHECK(moela::memory_overlaps(mid, bottom));
  const moela::tensor_view<float, 2> none(a.data(), {0, 8}, {8, 1});
  CHECK_FALSE(moela::memory_overlaps(none, a.view()));
}
