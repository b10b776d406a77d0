#pragma once
// The weight formats every typed quantization test runs over, with readable doctest names.
#include <doctest/doctest.h>

#include <moela/quant.hpp>

TYPE_TO_STRING(moela::quant::f32);
TYPE_TO_STRING(moela::quant::bf16);
TYPE_TO_STRING(moela::quant::fp16);
TYPE_TO_STRING(moela::quant::fp8_block<128, 128>);
TYPE_TO_STRING(moela::quant::fp8_block_e5m2<128, 128>);
TYPE_TO_STRING(moela::quant::int8_rowwise<>);
TYPE_TO_STRING(moela::quant::int8_rowwise<moela::bf16>);
TYPE_TO_STRING(moela::quant::int8_group<32>);
TYPE_TO_STRING(moela::quant::int8_group<64, moela::bf16>);
TYPE_TO_STRING(moela::quant::int4_group<32>);
TYPE_TO_STRING(moela::quant::int4_group<64>);
TYPE_TO_STRING(moela::quant::int4_group<128>);
TYPE_TO_STRING(moela::quant::int4_group_asym<32>);
TYPE_TO_STRING(moela::quant::int4_group_asym<64>);
TYPE_TO_STRING(moela::quant::int4_group_asym<128, moela::bf16>);
TYPE_TO_STRING(moela::quant::int8_group<48>);
TYPE_TO_STRING(moela::quant::int8_group<256>);

/// The integer formats (the ones quant::mode::int8_activations applies to), including group
/// sizes that are not multiples of 32 (48) or larger than the activation group (256).
#define MOELA_INTEGER_FORMATS                                                                              \
  moela::quant::int8_rowwise<>, moela::quant::int8_rowwise<moela::bf16>, moela::quant::int8_group<32>,    \
      moela::quant::int8_group<48>, moela::quant::int8_group<64, moela::bf16>, moela::quant::int8_group<256>, \
      moela::quant::int4_group<32>, moela::quant::int4_group<64>, moela::quant::int4_group<128>,          \
      moela::quant::int4_group_asym<32>, moela::quant::int4_group_asym<64>,                                \
      moela::quant::int4_group_asym<128, moela::bf16>

#define MOELA_ALL_FORMATS                                                                                 \
  moela::quant::f32, moela::quant::bf16, moela::quant::fp16, moela::quant::fp8_block<128, 128>,           \
      moela::quant::fp8_block_e5m2<128, 128>, moela::quant::int8_rowwise<>,                               \
      moela::quant::int8_rowwise<moela::bf16>, moela::quant::int8_group<32>,                              \
      moela::quant::int8_group<64, moela::bf16>, moela::quant::int4_group<32>, moela::quant::int4_group<64>, \
      moela::quant::int4_group<128>, moela::quant::int4_group_asym<32>, moela::quant::int4_group_asym<64>, \
      moela::quant::int4_group_asym<128, moela::bf16>
