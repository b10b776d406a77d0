// The usage example of README.md, compiled and run in CI so that it cannot rot.
// ctest-args: examples/models/tiny-fortunes
#include <moela/moela.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? std::string(MOELA_SOURCE_DIR) + "/" + argv[1] : MOELA_DEFAULT_MODEL_DIR;
  auto model = moela::load_model(dir);                  // config.json + safetensors, BF16 weights in place
  auto cache = moela::make_cache(model, 1024);          // paged latent KV cache for 1024 tokens
  moela::sampler sample({.temperature = 0.8, .top_p = 0.95, .seed = 42});
  std::vector<int> prompt = {256};                      // BOS of this byte-level model, then bytes
  for (unsigned char c : std::string("Love is")) prompt.push_back(c);
  moela::generate_options opt;
  opt.max_new_tokens = 120;
  opt.stop_tokens = {257};                              // EOS
  opt.on_token = [](moela::index_t, int tok) { if (tok < 256) std::putchar(tok); return true; };
  auto r = moela::generate(model, cache, prompt, opt, sample);
  std::printf("\n%.0f tokens/s decode\n", r.stats.decode_tokens_per_s());
}
