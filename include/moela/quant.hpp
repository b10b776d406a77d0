#pragma once
/// \file moela/quant.hpp
/// Quantized weight formats, qmatrix and matmul.

#include "moela/quant/dense.hpp"
#include "moela/ops/matmul.hpp"
