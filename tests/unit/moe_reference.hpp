#pragma once
// float64 reference of the DeepSeekMoE gate (spec §6.2) shared by the MoE tests, written
// independently of the library: full sorts, no policies, double throughout.
#include <moela/moe/config.hpp>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace moe_ref {
using moela::moe::moe_config;
using moela::moe::score_fn;
using moela::moe::topk_rule;

struct ref_result {
  std::vector<int> idx;          // descending choice score, ties lower index
  std::vector<double> weight;    // same order
  std::vector<double> scores;    // [E]
  double margin = 0;             // smallest gap that decides the selection (K-th vs best excluded; groups)
};

// float64 reference of spec §6.2, written independently of the library (full sorts, no policies).
inline ref_result reference_route(const moe_config& c, const std::vector<double>& logits, const std::vector<double>& bias) {
  const int E = int(c.n_routed_experts), K = int(c.num_experts_per_tok);
  ref_result r;
  r.scores.resize(E);
  if (c.scoring_func == score_fn::softmax) {
    double m = *std::max_element(logits.begin(), logits.end()), sum = 0;
    for (int e = 0; e < E; ++e) sum += std::exp(logits[e] - m);
    for (int e = 0; e < E; ++e) r.scores[e] = std::exp(logits[e] - m) / sum;
  } else {
    for (int e = 0; e < E; ++e) r.scores[e] = 1.0 / (1.0 + std::exp(-logits[e]));
  }
  std::vector<double> ch(E);
  for (int e = 0; e < E; ++e) ch[e] = r.scores[e] + (bias.empty() ? 0.0 : bias[e]);
  std::vector<bool> allowed(E, true);
  r.margin = 1e9;
  if (c.topk_method != topk_rule::greedy && c.n_group > 1) {
    const int G = int(c.n_group), per = E / G;
    std::vector<std::pair<double, int>> gs;
    for (int g = 0; g < G; ++g) {
      std::vector<double> v(ch.begin() + g * per, ch.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      gs.push_back({c.topk_method == topk_rule::noaux_tc ? v[0] + v[1] : v[0], g});
    }
    std::sort(gs.begin(), gs.end(), [](auto a, auto b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
    for (int i = int(c.topk_group); i < G; ++i)
      for (int e = gs[i].second * per; e < (gs[i].second + 1) * per; ++e) allowed[e] = false;
    if (c.topk_group < G) r.margin = std::min(r.margin, gs[c.topk_group - 1].first - gs[c.topk_group].first);
  }
  std::vector<std::pair<double, int>> cand;
  for (int e = 0; e < E; ++e)
    if (allowed[e]) cand.push_back({ch[e], e});
  std::sort(cand.begin(), cand.end(), [](auto a, auto b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  if (int(cand.size()) > K) r.margin = std::min(r.margin, cand[K - 1].first - cand[K].first);
  double sum = 0;
  for (int i = 0; i < K; ++i) {
    r.idx.push_back(cand[i].second);
    r.weight.push_back(r.scores[cand[i].second]);
    sum += r.scores[cand[i].second];
  }
  for (auto& w : r.weight) w = (c.norm_topk_prob ? w / (sum + 1e-20) : w) * c.routed_scaling_factor;
  return r;
}


}  // namespace moe_ref
