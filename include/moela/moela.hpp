#pragma once
/// \file moela/moela.hpp
/// Umbrella header: the whole public API of moela.

#include "moela/core/build_info.hpp"
#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"
#include "moela/backend/tags.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/quant/dense.hpp"
#include "moela/ops/matmul.hpp"
