// moela-generate's runner for int4 weights with bf16 activations (W4A16, see run.hpp).
#include "run.hpp"

namespace moela_generate {
template int run_format<moela::quant::int4_group_a16<32>>(const options&, const moela::io::model_config&, const char*);
}  // namespace moela_generate
