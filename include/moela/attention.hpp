#pragma once
/// \file moela/attention.hpp
/// Multi-head Latent Attention, RoPE/YaRN, latent KV caches (contiguous and paged), the shared
/// flash-style attention kernel, and standard MHA/GQA. Guide: docs/attention.md.

#include "moela/quant.hpp"
#include "moela/ops/rmsnorm.hpp"
#include "moela/ops/softmax.hpp"
#include "moela/attention/rope.hpp"
#include "moela/attention/config.hpp"
#include "moela/attention/cache_format.hpp"
#include "moela/attention/kv_cache.hpp"
#include "moela/attention/flash.hpp"
#include "moela/attention/mla.hpp"
#include "moela/attention/mla_loader.hpp"
#include "moela/attention/gqa.hpp"
