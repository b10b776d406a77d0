#pragma once
/// \file moela/moe/config.hpp
/// `moe::moe_config`: the runtime description of one DeepSeekMoE layer, field for field the
/// Hugging Face `config.json` names (spec §1.1), with validation and a JSON reader.
///
/// | field                    | meaning                                             | V2-Lite | V3     |
/// |--------------------------|-----------------------------------------------------|---------|--------|
/// | hidden_size              | D, width of the layer's input and output            | 2048    | 7168   |
/// | n_routed_experts         | E                                                   | 64      | 256    |
/// | num_experts_per_tok      | K, experts selected per token                       | 6       | 8      |
/// | n_group / topk_group     | expert groups / groups kept per token               | 1 / 1   | 8 / 4  |
/// | scoring_func             | softmax or sigmoid affinities (FP32)                | softmax | sigmoid|
/// | topk_method              | greedy, group_limited_greedy or noaux_tc            | greedy  | noaux_tc|
/// | norm_topk_prob           | renormalise the K selected weights to sum 1         | false   | true   |
/// | routed_scaling_factor    | multiplier on the routed weights (never on shared)  | 1.0     | 2.5    |
/// | n_shared_experts         | shared experts, fused into one SwiGLU               | 2       | 1      |
/// | moe_intermediate_size    | width of one routed expert                          | 1408    | 2048   |
///
/// `topk_method` decides the group-limited step (spec §6.2 step 4):
/// - `greedy`: plain top-K over all experts (n_group / topk_group are not used);
/// - `group_limited_greedy` (V2): group score = max of the scores in the group, no bias;
/// - `noaux_tc` (V3): the selection uses `score + e_score_correction_bias`, and the group score
///   is the sum of the two largest biased scores in the group.
/// With `n_group == 1` the group step keeps every expert, whatever the method.
///
/// Defaults: `hf_moe_defaults_for(model_type)` is the one table of the values Hugging Face
/// gives the MoE fields a config.json leaves out. `moe_config::from_hf_json` and
/// `io::parse_config` (io/config.hpp) both take their defaults from it, and both read the
/// `topk_method` / `scoring_func` spellings with `topk_rule_from_hf` / `score_fn_from_hf`.

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/io/json_value.hpp"

namespace moela::moe {

/// The affinity function (spec §6.2 step 2).
enum class score_fn { softmax, sigmoid };
/// How the experts are chosen (HF `topk_method`).
enum class topk_rule { greedy, group_limited_greedy, noaux_tc };

using moela::to_string;  // shapes; the overloads below add the enums

inline const char* to_string(score_fn f) { return f == score_fn::softmax ? "softmax" : "sigmoid"; }
inline const char* to_string(topk_rule r) {
  switch (r) {
    case topk_rule::greedy: return "greedy";
    case topk_rule::group_limited_greedy: return "group_limited_greedy";
    case topk_rule::noaux_tc: return "noaux_tc";
  }
  return "?";
}

/// The `scoring_func` spellings of config.json; nullopt for an unknown one.
constexpr std::optional<score_fn> score_fn_from_hf(std::string_view s) {
  if (s == "softmax") return score_fn::softmax;
  if (s == "sigmoid") return score_fn::sigmoid;
  return std::nullopt;
}
/// The `topk_method` spellings of config.json; nullopt for an unknown one. "gready", the
/// (misspelt) default of DeepSeek's own remote code, is an alias of greedy.
constexpr std::optional<topk_rule> topk_rule_from_hf(std::string_view s) {
  if (s == "greedy" || s == "gready") return topk_rule::greedy;
  if (s == "group_limited_greedy") return topk_rule::group_limited_greedy;
  if (s == "noaux_tc") return topk_rule::noaux_tc;
  return std::nullopt;
}
/// Whether the method reads `n_group` / `topk_group` (group_limited_greedy, noaux_tc). greedy
/// ignores both, as in Hugging Face, so they are neither used nor checked with it.
constexpr bool uses_groups(topk_rule r) { return r != topk_rule::greedy; }

struct moe_config {
  index_t hidden_size = 0;
  index_t n_routed_experts = 0;
  index_t num_experts_per_tok = 0;
  index_t n_group = 1;
  index_t topk_group = 1;
  score_fn scoring_func = score_fn::softmax;
  topk_rule topk_method = topk_rule::greedy;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  index_t n_shared_experts = 0;
  index_t moe_intermediate_size = 0;

  /// Width of the fused shared expert: `n_shared_experts * moe_intermediate_size` (0 = none).
  index_t shared_intermediate_size() const { return n_shared_experts * moe_intermediate_size; }
  /// Whether the layer has (and needs) an `e_score_correction_bias`.
  bool has_bias() const { return topk_method == topk_rule::noaux_tc; }
  /// Whether the group-limited step can exclude experts.
  bool group_limited() const { return uses_groups(topk_method) && n_group > 1 && topk_group < n_group; }
  /// Experts the group limit allows per token (E when there is no limit).
  index_t allowed_experts() const {
    return uses_groups(topk_method) ? topk_group * (n_routed_experts / n_group) : n_routed_experts;
  }

  /// Throws moela::error naming the first offending field.
  void validate() const {
    auto bad = [](auto&&... parts) { fail("moe_config: ", parts...); };
    if (hidden_size <= 0) bad("hidden_size must be positive, got ", hidden_size);
    if (n_routed_experts <= 0) bad("n_routed_experts must be positive, got ", n_routed_experts);
    if (num_experts_per_tok <= 0 || num_experts_per_tok > n_routed_experts)
      bad("num_experts_per_tok must be in [1, n_routed_experts = ", n_routed_experts, "], got ",
          num_experts_per_tok);
    if (moe_intermediate_size <= 0) bad("moe_intermediate_size must be positive, got ", moe_intermediate_size);
    if (n_shared_experts < 0) bad("n_shared_experts must be >= 0, got ", n_shared_experts);
    if (!(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0))
      bad("routed_scaling_factor must be finite and positive, got ", routed_scaling_factor);
    if (!uses_groups(topk_method)) return;  // greedy: n_group / topk_group unused
    if (n_group <= 0) bad("n_group must be positive, got ", n_group);
    if (n_routed_experts % n_group != 0)
      bad("n_group (", n_group, ") does not divide n_routed_experts (", n_routed_experts, ")");
    if (topk_group <= 0 || topk_group > n_group)
      bad("topk_group must be in [1, n_group = ", n_group, "], got ", topk_group);
    if (num_experts_per_tok > allowed_experts())
      bad("num_experts_per_tok (", num_experts_per_tok, ") is larger than the ", allowed_experts(),
          " experts the group limit allows (topk_group ", topk_group, " x ", n_routed_experts / n_group,
          " experts per group)");
    if (topk_method == topk_rule::noaux_tc && n_group > 1 && n_routed_experts / n_group < 2)
      bad("topk_method noaux_tc scores a group by its two best experts, but n_group (", n_group,
          ") leaves ", n_routed_experts / n_group, " expert per group");
  }

  /// Reads the MoE fields of a Hugging Face DeepSeek `config.json` (V2, V2-Lite, V3, R1) with
  /// the same defaults as `io::parse_config`: a field that is absent or null takes the value of
  /// `hf_moe_defaults_for(model_type)`. So for `deepseek_v3` an absent routing field means
  /// sigmoid / noaux_tc / norm_topk_prob true / routed_scaling_factor 2.5 / n_group 8 /
  /// topk_group 4, for `deepseek_v2` softmax / greedy / false / 1.0 / 1 / 1; sizes default too
  /// (V3: hidden_size 7168, n_routed_experts 256, num_experts_per_tok 8, ...), except V2's
  /// num_experts_per_tok, which must be given. Without `model_type` the routing fields take the
  /// V2 meaning, n_shared_experts is 0 and the four sizes (hidden_size, n_routed_experts,
  /// num_experts_per_tok, moe_intermediate_size) must be given. `topk_method` "gready" reads
  /// as greedy. Integers may be written as integral floats (2048.0), as io accepts them.
  /// Throws moela::error naming the field for: an unknown model_type, a missing required size,
  /// `n_routed_experts: null` (a model without MoE layers), a mistyped value, an unknown
  /// scoring_func / topk_method. The result is validated.
  static moe_config from_hf_json(const nlohmann::json& j);
};

/// Hugging Face's value for each MoE field of config.json that is absent or null, as a
/// moe_config, by `model_type` (transformers' DeepseekV2Config /
/// DeepseekV3Config; DeepSeek's remote code agrees on these except that its V2 leaves the
/// shapes unset and spells greedy "gready"):
/// | field | deepseek_v2 | deepseek_v3 | "" (no model_type) |
/// |---|---|---|---|
/// | hidden_size | 4096 | 7168 | required |
/// | n_routed_experts | 64 | 256 | required |
/// | num_experts_per_tok | required | 8 | required |
/// | moe_intermediate_size | 1407 | 2048 | required |
/// | n_shared_experts | 2 | 1 | 0 |
/// | n_group / topk_group | 1 / 1 (HF: null) | 8 / 4 | 1 / 1 |
/// | scoring_func / topk_method | softmax / greedy | sigmoid / noaux_tc | softmax / greedy |
/// | norm_topk_prob / routed_scaling_factor | false / 1.0 | true / 2.5 | false / 1.0 |
/// "required" is a size of 0: the reader requires the field (an explicit `n_routed_experts:
/// null` is not "absent": it means a model without MoE layers). The "" row serves
/// `moe_config::from_hf_json` on a config without `model_type` (io::parse_config requires one);
/// any other model_type gives nullopt.
constexpr std::optional<moe_config> hf_moe_defaults_for(std::string_view model_type) {
  if (model_type == "deepseek_v2")
    return moe_config{.hidden_size = 4096, .n_routed_experts = 64, .num_experts_per_tok = 0, .n_group = 1,
                      .topk_group = 1, .scoring_func = score_fn::softmax, .topk_method = topk_rule::greedy,
                      .norm_topk_prob = false, .routed_scaling_factor = 1.0f, .n_shared_experts = 2,
                      .moe_intermediate_size = 1407};
  if (model_type == "deepseek_v3")
    return moe_config{.hidden_size = 7168, .n_routed_experts = 256, .num_experts_per_tok = 8, .n_group = 8,
                      .topk_group = 4, .scoring_func = score_fn::sigmoid, .topk_method = topk_rule::noaux_tc,
                      .norm_topk_prob = true, .routed_scaling_factor = 2.5f, .n_shared_experts = 1,
                      .moe_intermediate_size = 2048};
  if (model_type.empty()) return moe_config{};
  return std::nullopt;
}


inline moe_config moe_config::from_hf_json(const nlohmann::json& j) {
  check(j.is_object(), "moe_config: config.json is not a JSON object");
  const io::json_fields f(j, "moe_config: config.json");
  const std::string model_type = f.string("model_type", "");
  const auto d = hf_moe_defaults_for(model_type);
  if (!d) f.bad("model_type", "is '", model_type, "' (expected deepseek_v2 or deepseek_v3)");
  if (f.is_null("n_routed_experts"))
    f.bad("n_routed_experts", "is null (a model without MoE layers)");
  moe_config c;
  // Sizes whose default is 0 (no default table: model_type absent) must be given.
  c.hidden_size = f.required_integer("hidden_size", d->hidden_size);
  c.n_routed_experts = f.required_integer("n_routed_experts", d->n_routed_experts);
  c.num_experts_per_tok = f.required_integer("num_experts_per_tok", d->num_experts_per_tok);
  c.moe_intermediate_size = f.required_integer("moe_intermediate_size", d->moe_intermediate_size);
  c.n_shared_experts = f.integer("n_shared_experts", d->n_shared_experts);
  c.n_group = f.integer("n_group", d->n_group);
  c.topk_group = f.integer("topk_group", d->topk_group);
  c.norm_topk_prob = f.boolean("norm_topk_prob", d->norm_topk_prob);
  c.routed_scaling_factor = static_cast<float>(f.number("routed_scaling_factor", d->routed_scaling_factor));
  const std::string scoring = f.string("scoring_func", to_string(d->scoring_func));
  const auto sf = score_fn_from_hf(scoring);
  if (!sf) f.bad("scoring_func", "is '", scoring, "' (expected softmax or sigmoid)");
  c.scoring_func = *sf;
  const std::string method = f.string("topk_method", to_string(d->topk_method));
  const auto tr = topk_rule_from_hf(method);
  if (!tr) f.bad("topk_method", "is '", method, "' (expected greedy, group_limited_greedy or noaux_tc)");
  c.topk_method = *tr;
  c.validate();
  return c;
}

}  // namespace moela::moe
