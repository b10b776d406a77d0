// Host-side tests of the CUDA backend's memory layer (compiled by the C++ compiler, no GPU
// needed): memory-space views, the caching allocator's bookkeeping (with a fake upstream),
// CUDA error messages.
#include <doctest/doctest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "moela/backend/cuda/memory.cuh"

using namespace moela;

namespace {
// Hands out host memory and counts calls: exercises the pool without a GPU.
class counting_allocator final : public gpu::device_allocator {
 public:
  void* allocate(std::size_t bytes) override {
    ++allocs;
    last = bytes;
    return ::operator new(bytes);
  }
  void deallocate(void* p, std::size_t) noexcept override {
    ++frees;
    ::operator delete(p);
  }
  int allocs = 0, frees = 0;
  std::size_t last = 0;
};
}  // namespace

TEST_CASE("cuda host: the memory space is part of the view type") {
  static_assert(!std::is_convertible_v<tensor_view<float, 2>, gpu::device_view<float, 2>>);
  static_assert(!std::is_convertible_v<gpu::host_view<float, 2>, gpu::device_view<float, 2>>);
  static_assert(!std::is_convertible_v<gpu::device_view<float, 2>, gpu::host_view<float, 2>>);
  static_assert(!std::is_convertible_v<gpu::device_view<const float, 2>, gpu::device_view<float, 2>>);
  static_assert(std::is_convertible_v<gpu::device_view<float, 2>, gpu::device_view<const float, 2>>);
  static_assert(std::is_convertible_v<tensor_view<float, 2>, gpu::host_view<const float, 2>>);
  static_assert(!std::is_convertible_v<float*, gpu::device_view<float, 1>>);  // explicit only
  float buf[24] = {};
  gpu::device_view<float, 3> v(buf, {2, 3, 4});
  CHECK(v.size() == 24);
  CHECK(v.is_contiguous());
  CHECK(&v(1, 2, 3) == buf + 23);
  auto s = v.slice(1, 1, 3);
  CHECK(s.extent(1) == 2);
  CHECK_FALSE(s.is_contiguous());
  CHECK(&s(0, 0, 0) == buf + 4);
  CHECK_THROWS_AS(v.slice(2, 3, 5), moela::error);
  CHECK_THROWS_AS((v.reshape<2>({5, 5})), moela::error);
  CHECK(v.reshape<2>({6, 4}).extent(0) == 6);
}

TEST_CASE("cuda host: caching allocator reuses size classes and releases everything") {
  counting_allocator up;
  {
    gpu::caching_allocator pool(&up);
    CHECK(gpu::caching_allocator::size_class(1) == 512);
    CHECK(gpu::caching_allocator::size_class(513) == 1024);
    CHECK(gpu::caching_allocator::size_class((1 << 20) + 1) == (std::size_t{2} << 20));
    void* a = pool.allocate(1000);
    CHECK(up.last == 1024);
    pool.deallocate(a, 1000);
    CHECK(pool.cached_bytes() == 1024);
    void* b = pool.allocate(900);  // same class
    CHECK(b == a);
    CHECK(pool.hits() == 1);
    CHECK(up.allocs == 1);
    void* c = pool.allocate(100);  // another class
    CHECK(up.allocs == 2);
    pool.deallocate(b, 900);
    pool.deallocate(c, 100);
    CHECK(pool.cached_bytes() == 1024 + 512);
    CHECK(pool.allocate(0) == nullptr);
  }
  CHECK(up.frees == 2);  // the destructor released the cache

  counting_allocator up2;
  gpu::device_allocator& old = gpu::set_default_allocator(up2);
  {
    gpu::device_tensor<float, 2> t({3, 5});
    CHECK(up2.allocs == 1);
    CHECK(up2.last == 60);
    CHECK(t.view().extent(1) == 5);
    gpu::device_tensor<float, 2> u = std::move(t);
    CHECK(u.size() == 15);
  }
  CHECK(up2.frees == 1);
  gpu::set_default_allocator(old);
}

TEST_CASE("cuda host: CUDA errors become moela::error with the call, the error name and the context") {
  try {
    MOELA_CUDA_CHECK(cudaErrorMemoryAllocation, "rmsnorm: x ", to_string(shape_t<2>{4, 7168}));
    FAIL("no throw");
  } catch (const moela::error& e) {
    const std::string m = e.what();
    CHECK(m.find("cudaErrorMemoryAllocation") != std::string::npos);
    CHECK(m.find("failed") != std::string::npos);
    CHECK(m.find("[rmsnorm: x [4, 7168]]") != std::string::npos);
  }
  CHECK_NOTHROW(MOELA_CUDA_CHECK(cudaSuccess));
  CHECK(gpu::device_count() >= 0);  // 0 on a machine without a GPU or driver, never a throw
}
