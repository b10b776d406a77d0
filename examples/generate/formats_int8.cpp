// moela-generate's runner for the int8 weight formats (see run.hpp).
#include "run.hpp"

namespace moela_generate {
template int run_format<moela::quant::int8_rowwise<>>(const options&, const moela::io::model_config&, const char*);
template int run_format<moela::quant::int8_rowwise_a8<>>(const options&, const moela::io::model_config&, const char*);
}  // namespace moela_generate
