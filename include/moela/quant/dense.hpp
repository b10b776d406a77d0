#pragma once
/// \file moela/quant/dense.hpp
/// Dense (unquantized) weight formats `quant::f32`, `quant::bf16`, `quant::fp16` and their
/// `qmatrix`. Kept as a header of its own for code that only needs dense weights; the formats
/// and `qmatrix` itself live in formats.hpp and qmatrix.hpp.
/// \code
///   auto w = moela::qmatrix<moela::quant::bf16>::quantize(w_f32);   // RNE to bf16
///   auto v = moela::qmatrix<moela::quant::bf16>::borrow(view_bf16); // zero-copy
/// \endcode

#include "moela/quant/formats.hpp"
#include "moela/quant/qmatrix.hpp"
