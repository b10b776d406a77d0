// moela-generate's runner for the int4 weight formats (see run.hpp).
#include "run.hpp"

namespace moela_generate {
template int run_format<moela::quant::int4_group<32>>(const options&, const moela::io::model_config&, const char*);
template int run_format<moela::quant::int4_group_a8<32>>(const options&, const moela::io::model_config&, const char*);
}  // namespace moela_generate
