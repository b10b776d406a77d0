#pragma once
/// \file moela/moe.hpp
/// DeepSeekMoE: routers, experts, dispatch/combine, load balancing (namespace `moela::moe`).
///
/// - moe/config.hpp   `moe_config` (HF config fields, validation, `from_hf_json`)
/// - moe/router.hpp   scoring and group-limit policies, `router<...>`, `routing`
/// - moe/ffn.hpp      `swiglu_weights`, `swiglu_ffn`, `dense_ffn` (the dense MLP layers)
/// - moe/dispatch.hpp `dispatch_plan` (counting sort by expert, gather, combine)
/// - moe/experts.hpp  `expert_runner` (grouped expert GEMMs as (expert, row chunk) tasks)
/// - moe/layer.hpp    `moe_weights`, `moe_layer<Backend, Format, Router>`
/// - moe/balance.hpp  `balance_bias` (aux-loss-free bias update)
/// - moe/load.hpp     filling the weight structs from checkpoint tensors
/// - ops/swiglu.hpp   `swiglu` (silu(gate) * up, vectorised)
/// See docs/moe.md.

#include "moela/quant.hpp"
#include "moela/ops/swiglu.hpp"
#include "moela/moe/config.hpp"
#include "moela/moe/router.hpp"
#include "moela/moe/ffn.hpp"
#include "moela/moe/dispatch.hpp"
#include "moela/moe/experts.hpp"
#include "moela/moe/layer.hpp"
#include "moela/moe/balance.hpp"
#include "moela/moe/load.hpp"
