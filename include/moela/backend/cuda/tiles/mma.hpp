#pragma once
/// \file moela/backend/cuda/tiles/mma.hpp
/// Register-fragment coordinates of the warp-level FP8 tensor-core instruction
/// `mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32` (sm_89 and newer), as
/// `MOELA_HOST_DEVICE` functions. The FP8 GEMM kernel loads its fragments and stores its
/// accumulators through these functions, and the host tests check that they cover each tile
/// exactly once (PTX ISA, "Matrix fragments for mma.m16n8k32" with 8-bit A/B types).
///
/// With `g = lane / 4` (group) and `t = lane % 4` (thread in group):
///  - A (16 x 32, row-major, m x k): 4 registers of 4 bytes; register r, byte i holds
///    row `g + 8 * (r % 2)`, column `4 t + i + 16 * (r / 2)`.
///  - B (32 x 8, "col": stored n-major, k contiguous): 2 registers; register r, byte i holds
///    row (k) `4 t + i + 16 r`, column (n) `g`.
///  - C/D (16 x 8 fp32): 4 values; value v holds row `g + 8 * (v / 2)`, column `2 t + v % 2`.

#include "moela/core/config.hpp"

namespace moela::gpu::tiles {

/// A (row, column) position inside an MMA operand tile.
struct mma_coord {
  int row, col;
};

/// Position of byte `i` of A register `r` held by `lane` (m16 x k32 tile).
MOELA_HOST_DEVICE constexpr mma_coord mma_a_coord(int lane, int r, int i) {
  return {lane / 4 + 8 * (r % 2), 4 * (lane % 4) + i + 16 * (r / 2)};
}

/// Position (k, n) of byte `i` of B register `r` held by `lane` (k32 x n8 tile).
MOELA_HOST_DEVICE constexpr mma_coord mma_b_coord(int lane, int r, int i) {
  return {4 * (lane % 4) + i + 16 * r, lane / 4};
}

/// Position (m, n) of accumulator value `v` held by `lane` (m16 x n8 tile).
MOELA_HOST_DEVICE constexpr mma_coord mma_c_coord(int lane, int v) {
  return {lane / 4 + 8 * (v / 2), 2 * (lane % 4) + v % 2};
}

}  // namespace moela::gpu::tiles
