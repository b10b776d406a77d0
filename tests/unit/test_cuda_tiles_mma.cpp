// Host tests of the FP8 tensor-core fragment coordinates (moela/backend/cuda/tiles/mma.hpp):
// every element of each operand tile is held by exactly one (lane, register, byte), each lane's
// 4 bytes of a register are 4 consecutive k (one 32-bit shared-memory load), and a warp-wide
// emulation of the instruction built on these coordinates computes the 16x8 product.
#include <doctest/doctest.h>

#include <array>
#include <random>

#include "moela/backend/cuda/tiles/mma.hpp"

using namespace moela::gpu::tiles;

TEST_CASE("cuda tiles: m16n8k32 fragments cover A, B and C exactly once") {
  std::array<int, 16 * 32> a{};
  std::array<int, 32 * 8> b{};
  std::array<int, 16 * 8> c{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 4; ++i) {
        const auto p = mma_a_coord(lane, r, i);
        REQUIRE((p.row >= 0 && p.row < 16 && p.col >= 0 && p.col < 32));
        ++a[p.row * 32 + p.col];
        CHECK(p.col == mma_a_coord(lane, r, 0).col + i);  // contiguous in k
        CHECK(p.row == mma_a_coord(lane, r, 0).row);
      }
    for (int r = 0; r < 2; ++r)
      for (int i = 0; i < 4; ++i) {
        const auto p = mma_b_coord(lane, r, i);
        REQUIRE((p.row >= 0 && p.row < 32 && p.col >= 0 && p.col < 8));
        ++b[p.row * 8 + p.col];
        CHECK(p.row == mma_b_coord(lane, r, 0).row + i);
      }
    for (int v = 0; v < 4; ++v) {
      const auto p = mma_c_coord(lane, v);
      REQUIRE((p.row >= 0 && p.row < 16 && p.col >= 0 && p.col < 8));
      ++c[p.row * 8 + p.col];
    }
  }
  for (int x : a) CHECK(x == 1);
  for (int x : b) CHECK(x == 1);
  for (int x : c) CHECK(x == 1);
  // Spot values from the PTX ISA tables: lane 5 is group 1, thread 1.
  CHECK(mma_a_coord(5, 0, 0).row == 1);
  CHECK(mma_a_coord(5, 0, 0).col == 4);
  CHECK(mma_a_coord(5, 3, 2).row == 9);
  CHECK(mma_a_coord(5, 3, 2).col == 22);
  CHECK(mma_b_coord(5, 1, 3).row == 23);
  CHECK(mma_b_coord(5, 1, 3).col == 1);
  CHECK(mma_c_coord(5, 3).row == 9);
  CHECK(mma_c_coord(5, 3).col == 3);
}

TEST_CASE("cuda tiles: a warp emulation over the fragments computes the tile product") {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> u(-8, 8);
  int A[16][32], B[32][8];
  for (auto& r : A)
    for (auto& v : r) v = u(rng);
  for (auto& r : B)
    for (auto& v : r) v = u(rng);
  // What each lane holds, gathered through the coordinates...
  int fa[32][4][4], fb[32][2][4];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 4; ++i) fa[lane][r][i] = A[mma_a_coord(lane, r, i).row][mma_a_coord(lane, r, i).col];
    for (int r = 0; r < 2; ++r)
      for (int i = 0; i < 4; ++i) fb[lane][r][i] = B[mma_b_coord(lane, r, i).row][mma_b_coord(lane, r, i).col];
  }
  // ...is enough to rebuild every output from the fragments alone (the instruction's contract).
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 4; ++v) {
      const auto pc = mma_c_coord(lane, v);
      int got = 0;
      for (int la = 0; la < 32; ++la)
        for (int r = 0; r < 4; ++r)
          for (int i = 0; i < 4; ++i) {
            const auto pa = mma_a_coord(la, r, i);
            if (pa.row != pc.row) continue;
            for (int lb = 0; lb < 32; ++lb)
              for (int rb = 0; rb < 2; ++rb)
                for (int ib = 0; ib < 4; ++ib) {
                  const auto pb = mma_b_coord(lb, rb, ib);
                  if (pb.col == pc.col && pb.row == pa.col) got += fa[la][r][i] * fb[lb][rb][ib];
                }
          }
      int want = 0;
      for (int k = 0; k < 32; ++k) want += A[pc.row][k] * B[k][pc.col];
      CHECK(got == want);
    }
}
