#include <doctest/doctest.h>

#include <moela/core/tensor.hpp>

#include <string>

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
