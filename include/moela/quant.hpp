#pragma once
/// \file moela/quant.hpp
/// Quantized weights and matmul: weight formats (quant::f32, bf16, fp16, fp8_block<128,128>,
/// fp8_block_e5m2, int8_rowwise, int8_group<G>, int4_group<G> sym/asym), `qmatrix<Format>`,
/// activation quantization, bulk conversions and `matmul(y, x, W)`. See docs/quant.md.

#include "moela/backend/cpu/convert.hpp"
#include "moela/ops/matmul.hpp"
#include "moela/quant/activation.hpp"
#include "moela/quant/dense.hpp"
#include "moela/quant/formats.hpp"
#include "moela/quant/qmatrix.hpp"
