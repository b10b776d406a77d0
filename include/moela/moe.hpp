#pragma once
/// \file moela/moe.hpp
/// DeepSeekMoE: routers, experts, dispatch/combine, load balancing.

#include "moela/quant.hpp"
