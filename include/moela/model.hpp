#pragma once
/// \file moela/model.hpp
/// The decoder layer, the model, generation and sampling.

#include "moela/attention.hpp"
#include "moela/moe.hpp"
#include "moela/io.hpp"
#include "moela/model/sampling.hpp"
#include "moela/model/layer.hpp"
#include "moela/model/model.hpp"
#include "moela/model/parts.hpp"
#include "moela/model/generate.hpp"
#include "moela/model/deepseek.hpp"
