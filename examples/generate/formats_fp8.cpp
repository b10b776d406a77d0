// moela-generate's runner for the fp8 weight formats (see run.hpp).
#include "run.hpp"

namespace moela_generate {
template int run_format<moela::quant::fp8_block<128, 128>>(const options&, const moela::io::model_config&, const char*);
template int run_format<moela::quant::fp8_block_w8a8>(const options&, const moela::io::model_config&, const char*);
}  // namespace moela_generate
