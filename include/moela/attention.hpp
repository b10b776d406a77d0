#pragma once
/// \file moela/attention.hpp
/// Multi-head Latent Attention, RoPE/YaRN, latent KV caches, standard MHA/GQA.

#include "moela/quant.hpp"
