#pragma once
/// \file moela/moela.hpp
/// Umbrella header: the whole public API of moela (CPU backend). Each area also has its own
/// umbrella: moela/quant.hpp, moela/attention.hpp, moela/moe.hpp, moela/model.hpp, moela/io.hpp.

#include "moela/core/build_info.hpp"
#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"
#include "moela/core/workspace.hpp"
#include "moela/backend/tags.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/quant.hpp"
#include "moela/attention.hpp"
#include "moela/moe.hpp"
#include "moela/io.hpp"
#include "moela/model.hpp"
