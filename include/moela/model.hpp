#pragma once
/// \file moela/model.hpp
/// The decoder layer, the model, generation and sampling.

#include "moela/attention.hpp"
#include "moela/moe.hpp"
#include "moela/io.hpp"
