#pragma once
/// \file moela/io.hpp
/// Checkpoint and config I/O: safetensors, Hugging Face config.json.

#include "moela/io/config.hpp"
#include "moela/io/json_value.hpp"
#include "moela/io/safetensors.hpp"
#include "moela/io/checkpoint.hpp"
#include "moela/io/weights.hpp"
