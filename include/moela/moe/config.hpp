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

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"

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
  bool group_limited() const { return topk_method != topk_rule::greedy && n_group > 1 && topk_group < n_group; }
  /// Experts the group limit allows per token (E when there is no limit).
  index_t allowed_experts() const {
    return topk_method == topk_rule::greedy ? n_routed_experts : topk_group * (n_routed_experts / n_group);
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
    if (topk_method == topk_rule::greedy) return;  // n_group / topk_group unused
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

  /// Reads the MoE fields of a Hugging Face DeepSeek `config.json` (V2, V2-Lite, V3, R1).
  /// Absent or null optional fields take HF's meaning: n_group / topk_group 1, scoring_func
  /// softmax, topk_method greedy, norm_topk_prob false, routed_scaling_factor 1,
  /// n_shared_experts 0. The result is validated.
  static moe_config from_hf_json(const nlohmann::json& j) {
    auto need = [&](const char* key) -> const nlohmann::json& {
      check(j.contains(key) && !j[key].is_null(), "moe_config: config.json has no '", key, "'");
      return j[key];
    };
    auto opt = [&](const char* key) -> const nlohmann::json* {
      return j.contains(key) && !j[key].is_null() ? &j[key] : nullptr;
    };
    auto integer = [&](const nlohmann::json& v, const char* key) -> index_t {
      check(v.is_number_integer(), "moe_config: config.json field '", key, "' must be an integer, got ", v.dump());
      return v.get<index_t>();
    };
    moe_config c;
    c.hidden_size = integer(need("hidden_size"), "hidden_size");
    c.n_routed_experts = integer(need("n_routed_experts"), "n_routed_experts");
    c.num_experts_per_tok = integer(need("num_experts_per_tok"), "num_experts_per_tok");
    c.moe_intermediate_size = integer(need("moe_intermediate_size"), "moe_intermediate_size");
    if (auto* v = opt("n_group")) c.n_group = integer(*v, "n_group");
    if (auto* v = opt("topk_group")) c.topk_group = integer(*v, "topk_group");
    if (auto* v = opt("n_shared_experts")) c.n_shared_experts = integer(*v, "n_shared_experts");
    if (auto* v = opt("norm_topk_prob")) {
      check(v->is_boolean(), "moe_config: config.json field 'norm_topk_prob' must be a boolean, got ", v->dump());
      c.norm_topk_prob = v->get<bool>();
    }
    if (auto* v = opt("routed_scaling_factor")) {
      check(v->is_number(), "moe_config: config.json field 'routed_scaling_factor' must be a number, got ",
            v->dump());
      c.routed_scaling_factor = v->get<float>();
    }
    if (auto* v = opt("scoring_func")) {
      const std::string s = v->is_string() ? v->get<std::string>() : v->dump();
      if (s == "softmax") c.scoring_func = score_fn::softmax;
      else if (s == "sigmoid") c.scoring_func = score_fn::sigmoid;
      else fail("moe_config: config.json field 'scoring_func' is '", s, "' (expected softmax or sigmoid)");
    }
    if (auto* v = opt("topk_method")) {
      const std::string s = v->is_string() ? v->get<std::string>() : v->dump();
      if (s == "greedy") c.topk_method = topk_rule::greedy;
      else if (s == "group_limited_greedy") c.topk_method = topk_rule::group_limited_greedy;
      else if (s == "noaux_tc") c.topk_method = topk_rule::noaux_tc;
      else
        fail("moe_config: config.json field 'topk_method' is '", s,
             "' (expected greedy, group_limited_greedy or noaux_tc)");
    }
    c.validate();
    return c;
  }
};

}  // namespace moela::moe
