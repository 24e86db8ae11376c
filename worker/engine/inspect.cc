#include "worker/engine/inspect.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {
namespace {

using json = nlohmann::json;

bool StartsWith(const std::string& s, const std::string& p) {
  return !p.empty() && s.compare(0, p.size(), p) == 0;
}

std::string Component(const ModelLayout& l, const std::string& name) {
  if (StartsWith(name, l.block_prefix + ".")) return "language_model_blocks";
  if (name == l.embed_tokens) return "embeddings";
  if (name == l.final_norm) return "final_norm";
  if (StartsWith(name, l.vision_prefix)) return "vision_tower";
  if ((l.projection_weight && name == *l.projection_weight) ||
      (l.projection_bias && name == *l.projection_bias)) {
    return "projection";
  }
  if (l.lm_head && name == *l.lm_head) return "lm_head";
  return "other";
}

// Reference AutoRound (autoround-spec §3.4): int weight-only quantization
// keeps any Linear whose dimensions are not multiples of 32 in 16 bits.
// roundhouse additionally requires the group size to divide `in` (or to be
// -1, or >= in, which makes one group per row) so that every group is full
// and the packed layout needs no padding.
std::string KeepReason(int64_t out, int64_t in, int group_size) {
  if (out % 32 != 0 || in % 32 != 0) {
    return absl::StrCat("shape [", out, ",", in,
                        "] not divisible by 32 (reference rule)");
  }
  if (group_size > 0 && in > group_size && in % group_size != 0) {
    return absl::StrCat("group_size ", group_size, " does not divide in=", in);
  }
  return "";
}

std::string EscapeRegex(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) {
      out += '\\';
    }
    out += c;
  }
  return out;
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f %s", b, units[u])
                : absl::StrFormat("%.2f %s", b, units[u]);
}

std::string HumanCount(double n) {
  if (n >= 1e9) return absl::StrFormat("%.3f B", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.3f M", n / 1e6);
  if (n >= 1e3) return absl::StrFormat("%.1f K", n / 1e3);
  return absl::StrFormat("%.0f", n);
}

}  // namespace

absl::StatusOr<nlohmann::json> InspectModel(const std::string& model_dir,
                                            int bits, int group_size) {
  if (bits < 2 || bits > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("inspect: bits must be in [2, 8], got ", bits));
  }
  if (group_size == 0 || group_size < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inspect: group_size must be -1 or positive, got ", group_size));
  }
  ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(model_dir));
  ASSIGN_OR_RETURN(ModelLayout l, DiscoverLayout(model_dir, *ckpt));
  const TextConfig& t = l.text;

  json r;
  r["model_dir"] = model_dir;
  r["family"] = std::string(ModelFamilyName(l.family));
  r["model_type"] = l.model_type;
  r["config"] = {{"hidden_size", t.hidden_size},
                 {"intermediate_size", t.intermediate_size},
                 {"num_layers", t.num_layers},
                 {"num_heads", t.num_heads},
                 {"num_kv_heads", t.num_kv_heads},
                 {"head_dim", t.head_dim},
                 {"vocab_size", t.vocab_size},
                 {"rms_norm_eps", t.rms_norm_eps},
                 {"rope_theta", t.rope_theta},
                 {"tie_word_embeddings", t.tie_word_embeddings},
                 {"torch_dtype", t.torch_dtype},
                 {"qk_norm", t.qk_norm},
                 {"attention_bias", t.attention_bias},
                 {"embed_dim", l.embed_dim}};
  r["prefixes"] = {{"lm", l.lm_prefix},
                   {"blocks", l.block_prefix},
                   {"vision", l.vision_prefix},
                   {"embed_tokens", l.embed_tokens},
                   {"final_norm", l.final_norm},
                   {"lm_head", l.lm_head ? json(*l.lm_head) : json(nullptr)},
                   {"projection_weight", l.projection_weight
                                             ? json(*l.projection_weight)
                                             : json(nullptr)}};

  // Quantization decisions for the block Linears first: the size estimate
  // needs them.
  std::map<std::string, std::pair<bool, std::vector<int64_t>>> decisions;
  json linears = json::array();
  int quantizable = 0, kept = 0;
  // suffix -> kept reasons per block, to collapse uniform decisions into
  // one layer_config rule.
  std::map<std::string, std::vector<std::string>> kept_by_suffix;
  for (int b = 0; b < t.num_layers; ++b) {
    const std::vector<std::string> names = l.BlockLinearNames(b);
    for (size_t k = 0; k < names.size(); ++k) {
      ASSIGN_OR_RETURN(const TensorInfo* info,
                       ckpt->Info(names[k] + ".weight"));
      const int64_t out = info->shape[0], in = info->shape[1];
      std::string reason = KeepReason(out, in, group_size);
      const bool q = reason.empty();
      (q ? quantizable : kept)++;
      if (!q) kept_by_suffix[BlockLinearSuffixes()[k]].push_back(names[k]);
      decisions[names[k]] = {q, info->shape};
      linears.push_back({{"name", names[k]},
                         {"block", b},
                         {"shape", info->shape},
                         {"quantizable", q},
                         {"reason", reason}});
    }
  }
  r["linears"] = linears;
  r["quantizable_linears"] = quantizable;
  r["kept_linears"] = kept;
  json layer_config = json::array();
  for (const auto& [suffix, names] : kept_by_suffix) {
    if (static_cast<int>(names.size()) == t.num_layers) {
      layer_config.push_back({{"name", EscapeRegex(suffix) + "$"},
                              {"bits", 16}});
    } else {
      for (const std::string& n : names) {
        layer_config.push_back({{"name", "^" + EscapeRegex(n) + "$"},
                                {"bits", 16}});
      }
    }
  }
  r["layer_config"] = layer_config;

  // Components and sizes.
  struct Acc {
    uint64_t params = 0, bytes = 0;
  };
  std::map<std::string, Acc> comps;
  uint64_t total_params = 0, bytes_before = 0, bytes_after = 0;
  for (const std::string& name : ckpt->TensorNames()) {
    ASSIGN_OR_RETURN(const TensorInfo* info, ckpt->Info(name));
    const uint64_t n = static_cast<uint64_t>(info->NumElements());
    Acc& a = comps[Component(l, name)];
    a.params += n;
    a.bytes += info->NumBytes();
    total_params += n;
    bytes_before += info->NumBytes();

    // GPTQ-style packing (autoround-spec §4.2): int32-packed codes, one
    // packed zero point and one fp16 scale per group and output channel,
    // bias in fp16. Everything else keeps its stored dtype.
    const std::string module =
        name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0
            ? name.substr(0, name.size() - 7)
            : (name.size() > 5 &&
                       name.compare(name.size() - 5, 5, ".bias") == 0
                   ? name.substr(0, name.size() - 5)
                   : std::string());
    auto d = decisions.find(module);
    if (d != decisions.end() && d->second.first) {
      const uint64_t out = d->second.second[0], in = d->second.second[1];
      if (name == module + ".weight") {
        const uint64_t groups =
            group_size == -1 || in <= static_cast<uint64_t>(group_size)
                ? 1
                : in / group_size;
        bytes_after += out * in * bits / 8;          // qweight
        bytes_after += groups * out * 2;             // scales (fp16)
        bytes_after += (groups * out * bits + 7) / 8;  // qzeros
      } else {
        bytes_after += out * 2;  // bias as fp16
      }
    } else {
      bytes_after += info->NumBytes();
    }
  }
  json components = json::array();
  for (const char* c : {"language_model_blocks", "embeddings", "final_norm",
                        "vision_tower", "projection", "lm_head", "other"}) {
    auto it = comps.find(c);
    if (it == comps.end()) continue;
    components.push_back(
        {{"name", c},
         {"params", it->second.params},
         {"bytes", it->second.bytes},
         {"share", total_params == 0 ? 0.0
                                     : static_cast<double>(it->second.params) /
                                           static_cast<double>(total_params)}});
  }
  r["components"] = components;
  r["total_params"] = total_params;
  r["total_bytes"] = bytes_before;
  r["estimate"] = {
      {"bits", bits},
      {"group_size", group_size},
      {"bytes_before", bytes_before},
      {"bytes_after", bytes_after},
      {"ratio", bytes_before == 0 ? 0.0
                                  : static_cast<double>(bytes_after) /
                                        static_cast<double>(bytes_before)}};
  return r;
}

std::string FormatInspectReport(const nlohmann::json& r) {
  std::string s;
  auto get = [](const json& j, const char* k) -> json {
    return j.is_object() && j.contains(k) ? j.at(k) : json();
  };
  // Strings without JSON quotes, everything else as JSON.
  auto str = [&](const json& j, const char* k) -> std::string {
    json v = get(j, k);
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  const json cfg = get(r, "config");
  absl::StrAppend(&s, "Model:    ", str(r, "model_dir"), "\n");
  absl::StrAppend(&s, "Family:   ", str(r, "family"), " (model_type ",
                  str(r, "model_type"), ")\n");
  absl::StrAppend(
      &s, "Text:     hidden ", get(cfg, "hidden_size").dump(), ", layers ",
      get(cfg, "num_layers").dump(), ", heads ", get(cfg, "num_heads").dump(),
      "/", get(cfg, "num_kv_heads").dump(), " x ", get(cfg, "head_dim").dump(),
      ", intermediate ", get(cfg, "intermediate_size").dump(), ", vocab ",
      get(cfg, "vocab_size").dump(), ", dtype ", str(cfg, "torch_dtype"),
      ", tied ", get(cfg, "tie_word_embeddings").dump(), "\n");
  const json pre = get(r, "prefixes");
  absl::StrAppend(&s, "Blocks:   ", str(pre, "blocks"), ".<i>\n\n");

  absl::StrAppend(&s, absl::StrFormat("%-24s %14s %8s %14s\n", "component",
                                      "params", "share", "bytes"));
  const json comps = get(r, "components");
  if (comps.is_array()) {
    for (const json& c : comps) {
      absl::StrAppend(
          &s, absl::StrFormat("%-24s %14s %7.2f%% %14s\n",
                              c.value("name", ""),
                              HumanCount(c.value("params", 0.0)),
                              100.0 * c.value("share", 0.0),
                              HumanBytes(c.value("bytes", 0.0))));
    }
  }
  absl::StrAppend(&s, absl::StrFormat(
                          "%-24s %14s %8s %14s\n\n", "total",
                          HumanCount(r.value("total_params", 0.0)), "",
                          HumanBytes(r.value("total_bytes", 0.0))));

  // One line per Linear kind and decision: blocks are usually uniform.
  std::map<std::tuple<int, std::string, std::string, bool, std::string>,
           int>
      groups;
  auto rank = [](const std::string& suffix) {
    const auto& all = BlockLinearSuffixes();
    return static_cast<int>(std::find(all.begin(), all.end(), suffix) -
                            all.begin());
  };
  const json lin = get(r, "linears");
  if (lin.is_array()) {
    for (const json& l : lin) {
      std::string name = l.value("name", "");
      std::string block_prefix = get(pre, "blocks").is_string()
                                     ? get(pre, "blocks").get<std::string>()
                                     : "";
      // Strip "<blocks>.<i>." to get the suffix.
      std::string suffix = name;
      if (name.compare(0, block_prefix.size(), block_prefix) == 0) {
        auto dot = name.find('.', block_prefix.size() + 1);
        if (dot != std::string::npos) suffix = name.substr(dot + 1);
      }
      groups[{rank(suffix), suffix, get(l, "shape").dump(),
              l.value("quantizable", false), l.value("reason", "")}]++;
    }
  }
  absl::StrAppend(&s, absl::StrFormat("%-20s %-14s %7s  %s\n", "linear",
                                      "shape [out,in]", "blocks", "decision"));
  for (const auto& [key, count] : groups) {
    const auto& [order, suffix, shape, q, reason] = key;
    (void)order;
    absl::StrAppend(&s, absl::StrFormat(
                            "%-20s %-14s %7d  %s\n", suffix, shape, count,
                            q ? std::string("quantize")
                              : absl::StrCat("keep 16-bit: ", reason)));
  }
  absl::StrAppend(&s, "\nquantizable linears: ",
                  r.value("quantizable_linears", 0), ", kept 16-bit: ",
                  r.value("kept_linears", 0), "\n");
  const json lc = get(r, "layer_config");
  if (lc.is_array() && !lc.empty()) {
    absl::StrAppend(&s, "suggested layer_config: ", lc.dump(), "\n");
  }
  const json e = get(r, "estimate");
  absl::StrAppend(
      &s,
      absl::StrFormat("estimate (W%dG%d): %s -> %s (%.1f%%)\n",
                      e.value("bits", 0), e.value("group_size", 0),
                      HumanBytes(e.value("bytes_before", 0.0)),
                      HumanBytes(e.value("bytes_after", 0.0)),
                      100.0 * e.value("ratio", 0.0)));
  return s;
}

}  // namespace roundhouse::engine
