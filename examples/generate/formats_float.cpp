// moela-generate's runner for the float weight formats (see run.hpp).
#include "run.hpp"

namespace moela_generate {
template int run_format<moela::quant::f32>(const options&, const moela::io::model_config&, const char*);
template int run_format<moela::quant::bf16>(const options&, const moela::io::model_config&, const char*);
}  // namespace moela_generate
