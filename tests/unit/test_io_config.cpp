#include <doctest/doctest.h>

#include <moela/io/config.hpp>
#include <moela/io/json_value.hpp>

#include <cmath>
#include <string>

using moela::io::parse_config;

namespace {
// Field-by-field V2-Lite config as published (spec §1.1 column "V2-Lite").
const char* v2_lite = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
  "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": null,
  "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
  "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1,
  "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false, "routed_scaling_factor": 1.0,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_act": "silu", "rms_norm_eps": 1e-06,
  "rope_theta": 10000, "max_position_embeddings": 163840, "attention_bias": false, "tie_word_embeddings": false,
  "bos_token_id": 100000, "eos_token_id": 100001, "aux_loss_alpha": 0.001, "seq_aux": true,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                   "original_max_position_embeddings": 4096, "type": "yarn"}
})";

std::string with(std::string text, const std::string& from, const std::string& to) {
  const auto p = text.find(from);
  REQUIRE(p != std::string::npos);
  text.replace(p, from.size(), to);
  return text;
}

std::string error_of(const std::string& text) {
  try {
    (void)parse_config(text, "cfg.json");
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("config: V2-Lite fields, derived values and the layer rule") {
  const auto c = parse_config(v2_lite, "v2lite.json");
  CHECK(c.model_type == "deepseek_v2");
  CHECK(c.q_lora_rank == 0);
  CHECK(c.kv_lora_rank == 512);
  CHECK(c.qk_head_dim() == 192);
  CHECK(c.latent_width() == 576);
  CHECK(c.shared_intermediate_size() == 2816);
  CHECK(c.n_routed_experts == 64);
  CHECK(c.num_experts_per_tok == 6);
  CHECK(c.scoring_func == "softmax");
  CHECK_FALSE(c.norm_topk_prob);
  CHECK(c.rope_scaling.type == "yarn");
  CHECK(c.rope_scaling.factor == 40.0);
  CHECK(c.rope_scaling.mscale_all_dim == doctest::Approx(0.707));
  CHECK(c.bos_token_id == 100000);
  REQUIRE(c.eos_token_ids.size() == 1);
  CHECK(c.eos_token_ids[0] == 100001);
  CHECK_FALSE(c.is_moe_layer(0));
  CHECK(c.is_moe_layer(1));
  CHECK(c.is_moe_layer(26));
  CHECK_FALSE(c.is_fp8());
  // softmax scale = 192^-0.5 * (0.1 * 0.707 * ln 40 + 1)^2, computed here in double.
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  CHECK(c.softmax_scale() == doctest::Approx(m * m / std::sqrt(192.0)).epsilon(1e-15));
}

TEST_CASE("config: shipped tiny-v3 (fp8) and tiny-fortunes configs") {
  const auto g = moela::io::load_config(MOELA_TEST_DATA_DIR "/golden/tiny-v3/fp8");
  CHECK(g.model_type == "deepseek_v3");
  CHECK(g.is_fp8());
  CHECK(g.quantization.block_rows == 128);
  CHECK(g.quantization.block_cols == 128);
  CHECK(g.q_lora_rank == 192);
  CHECK(g.kv_lora_rank == 160);
  CHECK(g.topk_method == "noaux_tc");
  CHECK(g.n_group == 4);
  CHECK(g.topk_group == 2);
  const auto t = moela::io::load_config(MOELA_SOURCE_DIR "/examples/models/tiny-fortunes/config.json");
  CHECK(t.vocab_size == 258);
  CHECK(t.bos_token_id == 256);
  CHECK(t.eos_token_ids == std::vector<std::int64_t>{257});
  // The README's softmax scale: (32+16)^-0.5 x mscale(4, 1)^2 = 0.187130.
  CHECK(t.softmax_scale() == doctest::Approx(0.187130).epsilon(1e-5));
}

TEST_CASE("config: Hugging Face defaults for absent fields") {
  const auto c3 = parse_config(R"({"model_type": "deepseek_v3"})");
  CHECK(c3.vocab_size == 129280);
  CHECK(c3.hidden_size == 7168);
  CHECK(c3.num_hidden_layers == 61);
  CHECK(c3.n_routed_experts == 256);
  CHECK(c3.num_experts_per_tok == 8);
  CHECK(c3.n_group == 8);
  CHECK(c3.topk_group == 4);
  CHECK(c3.first_k_dense_replace == 3);
  CHECK(c3.scoring_func == "sigmoid");
  CHECK(c3.topk_method == "noaux_tc");
  CHECK(c3.norm_topk_prob);
  CHECK(c3.routed_scaling_factor == 2.5);
  CHECK(c3.q_lora_rank == 1536);
  CHECK(c3.rope_scaling.type == "none");
  CHECK(c3.softmax_scale() == doctest::Approx(1.0 / std::sqrt(192.0)));
  CHECK(c3.eos_token_ids == std::vector<std::int64_t>{1});
  // V2 without MoE fields: HF leaves num_experts_per_tok unset, which moela reports.
  const auto msg = error_of(R"({"model_type": "deepseek_v2"})");
  CHECK(msg.find("num_experts_per_tok") != std::string::npos);
  const auto c2 = parse_config(R"({"model_type": "deepseek_v2", "n_routed_experts": null})");
  CHECK_FALSE(c2.has_moe());
  CHECK_FALSE(c2.is_moe_layer(5));
  // mscale_all_dim absent (0): no softmax correction (HF remote code). mscale defaults to 1, so
  // the cos/sin magnitude mscale_fn(40, 1) / mscale_fn(40, 0) = 0.1 ln 40 + 1 = 1.368887945.
  const auto y = parse_config(
      R"({"model_type": "deepseek_v3", "rope_scaling": {"rope_type": "yarn", "factor": 40}})");
  CHECK(y.rope_scaling.mscale == 1.0);
  CHECK(y.rope_scaling.mscale_all_dim == 0.0);
  CHECK(y.softmax_scale() == doctest::Approx(1.0 / std::sqrt(192.0)));
  CHECK(moela::io::yarn_mscale(y.rope_scaling.factor, y.rope_scaling.mscale) /
            moela::io::yarn_mscale(y.rope_scaling.factor, y.rope_scaling.mscale_all_dim) ==
        doctest::Approx(1.368887945).epsilon(1e-9));
  // null is absent: the same defaults.
  const auto yn = parse_config(R"({"model_type": "deepseek_v3", "rope_scaling": {"rope_type": "yarn", "factor": 40,
    "mscale": null, "mscale_all_dim": null, "beta_fast": null}})");
  CHECK(yn.rope_scaling.mscale == 1.0);
  CHECK(yn.rope_scaling.mscale_all_dim == 0.0);
  CHECK(yn.rope_scaling.beta_fast == 32.0);
  // eos as a list, the misspelt "gready" of DeepSeek's remote code.
  const auto e = parse_config(R"({"model_type": "deepseek_v3", "eos_token_id": [1, 7], "topk_method": "noaux_tc"})");
  CHECK(e.eos_token_ids == std::vector<std::int64_t>{1, 7});
  CHECK(parse_config(with(v2_lite, "\"greedy\"", "\"gready\"")).topk_method == "greedy");
}

TEST_CASE("config: errors name the file and the field") {
  struct bad_case {
    std::string from, to, field;
    bool grouped = false;  // applied to V2-Lite with topk_method group_limited_greedy
  };
  const bad_case cases[] = {
      {"\"deepseek_v2\"", "\"llama\"", "model_type"},
      {"\"hidden_size\": 2048", "\"hidden_size\": \"2048\"", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": -3", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": 20.5", "hidden_size"},
      {"\"qk_rope_head_dim\": 64", "\"qk_rope_head_dim\": 63", "qk_rope_head_dim"},
      {"\"n_group\": 1", "\"n_group\": 3", "n_group", true},
      {"\"topk_group\": 1", "\"topk_group\": 2", "topk_group", true},
      {"\"num_experts_per_tok\": 6", "\"num_experts_per_tok\": 65", "num_experts_per_tok"},
      {"\"scoring_func\": \"softmax\"", "\"scoring_func\": \"relu\"", "scoring_func"},
      {"\"topk_method\": \"greedy\"", "\"topk_method\": \"best\"", "topk_method"},
      {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act"},
      {"\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", "rms_norm_eps"},
      {"\"norm_topk_prob\": false", "\"norm_topk_prob\": 0", "norm_topk_prob"},
      {"\"type\": \"yarn\"", "\"type\": \"dynamic\"", "rope_scaling.type"},
      {"\"factor\": 40", "\"factor\": \"big\"", "rope_scaling.factor"},
      {"\"factor\": 40", "\"factor\": 0.5", "rope_scaling.factor"},
      {"\"original_max_position_embeddings\": 4096", "\"original_max_position_embeddings\": 0",
       "rope_scaling.original_max_position_embeddings"},
      {"\"eos_token_id\": 100001", "\"eos_token_id\": 200000", "eos_token_id"},
      {"\"attention_bias\": false", "\"attention_bias\": true", "attention_bias"},
      {"\"kv_lora_rank\": 512", "\"kv_lora_rank\": 0", "kv_lora_rank"},
  };
  for (const auto& bc : cases) {
    CAPTURE(bc.to);
    const std::string base = bc.grouped ? with(v2_lite, "\"greedy\"", "\"group_limited_greedy\"") : v2_lite;
    const std::string msg = error_of(with(base, bc.from, bc.to));
    CHECK(msg.find("cfg.json") != std::string::npos);
    CHECK(msg.find("'" + bc.field + "'") != std::string::npos);
  }
  CHECK(error_of("{\"model_type\": ").find("not valid JSON") != std::string::npos);
  CHECK(error_of("[1, 2]").find("not a JSON object") != std::string::npos);
  CHECK(error_of("{}").find("'model_type'") != std::string::npos);
  CHECK(error_of(R"({"model_type": "deepseek_v3", "quantization_config": {"quant_method": "awq"}})")
            .find("quantization_config.quant_method") != std::string::npos);
  CHECK(error_of(R"({"model_type": "deepseek_v3", "quantization_config": {"quant_method": "fp8",
                    "weight_block_size": [128]}})")
            .find("weight_block_size") != std::string::npos);
  CHECK_THROWS_AS((void)moela::io::load_config("/nonexistent/dir"), moela::error);
}

TEST_CASE("config: n_group / topk_group are checked only for the group-limited methods") {
  // 12 of 64 experts with 8 groups of 8 and one group kept: greedy ignores the groups (HF and
  // moe_config::validate), so the config is valid; group_limited_greedy and noaux_tc would allow
  // only 8 experts per token.
  // (V2-Lite has topk_group 1 already.)
  const std::string greedy = with(with(v2_lite, "\"n_group\": 1", "\"n_group\": 8"), "\"num_experts_per_tok\": 6",
                                  "\"num_experts_per_tok\": 12");
  const auto g = parse_config(greedy, "cfg.json");
  CHECK(g.topk_method == "greedy");
  CHECK(g.n_group == 8);
  CHECK(g.topk_group == 1);
  CHECK(g.num_experts_per_tok == 12);
  CHECK(parse_config(with(greedy, "\"greedy\"", "\"gready\""), "cfg.json").topk_method == "greedy");
  // greedy accepts even groups that do not divide the experts.
  CHECK_NOTHROW((void)parse_config(with(greedy, "\"n_group\": 8", "\"n_group\": 5"), "cfg.json"));
  for (const char* method : {"\"group_limited_greedy\"", "\"noaux_tc\""}) {
    CAPTURE(method);
    const std::string msg = error_of(with(greedy, "\"greedy\"", method));
    CHECK(msg.find("cfg.json") != std::string::npos);
    CHECK(msg.find("'num_experts_per_tok'") != std::string::npos);
    CHECK(msg.find("(12)") != std::string::npos);
    CHECK(msg.find("topk_group 1") != std::string::npos);
    CHECK(msg.find("n_group 8") != std::string::npos);
  }
}

TEST_CASE("io::json_fields: absent and null take the default, a wrong type names the field") {
  const auto j = nlohmann::json::parse(R"({"a": 2048.0, "b": null, "s": "x", "t": true, "n": 1e-6,
    "bad": "64", "o": {"k": [1]}})");
  const moela::io::json_fields f(j, "reader: 'cfg'");
  CHECK(f.integer("a", 1) == 2048);  // an integral float is an integer
  CHECK(f.integer("b", 7) == 7);     // null: the default
  CHECK(f.integer("missing", 9) == 9);
  CHECK(f.required_integer("missing", 5) == 5);
  CHECK(f.string("s", "") == "x");
  CHECK(f.boolean("t", false));
  CHECK(f.number("n", 0) == 1e-6);
  CHECK_THROWS_WITH_AS((void)f.integer("bad", 0), "reader: 'cfg' field 'bad' must be an integer, got \"64\"",
                       moela::error);
  CHECK_THROWS_WITH_AS((void)f.required_integer("missing", 0), "reader: 'cfg' has no 'missing'", moela::error);
  CHECK_THROWS_WITH_AS((void)f.boolean("s", false), "reader: 'cfg' field 's' must be true or false, got \"x\"",
                       moela::error);
  CHECK(f.is_null("b"));
  CHECK_FALSE(f.is_null("a"));
  CHECK_FALSE(f.is_null("missing"));
  CHECK_THROWS_WITH_AS((void)f.object("s"), "reader: 'cfg' field 's' must be an object or null, got \"x\"",
                       moela::error);
  const moela::io::json_fields o = f.object("o");
  CHECK_THROWS_WITH_AS((void)o.number("k", 0), "reader: 'cfg' field 'o.k' must be a number, got [1]", moela::error);
  CHECK_THROWS_WITH_AS((void)o.required_integer("z", 0), "reader: 'cfg' has no 'o.z'", moela::error);
}
