#include "worker/engine/deliverable.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Long lists (a 36-block model has 252 block Linears) are cut here in the
// card; manifest.json always holds the full list.
constexpr int kMaxListedLayers = 40;

// ---- validated field access -------------------------------------------------
// Every accessor names the JSON path of the offending field, so a malformed
// manifest or report is diagnosable from the error alone.

absl::Status TypeError(const std::string& path, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": expected ", expected));
}

const json* Find(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<const json*> OptObject(const json& obj, const char* key,
                                      const std::string& path) {
  const json* v = Find(obj, key);
  if (v != nullptr && !v->is_object()) return TypeError(path, "an object");
  return v;
}

absl::StatusOr<const json*> OptArray(const json& obj, const char* key,
                                     const std::string& path) {
  const json* v = Find(obj, key);
  if (v != nullptr && !v->is_array()) return TypeError(path, "an array");
  return v;
}

absl::StatusOr<std::optional<std::string>> OptString(const json& obj,
                                                     const char* key,
                                                     const std::string& path) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) return TypeError(path, "a string");
  return v->get<std::string>();
}

absl::StatusOr<std::optional<int64_t>> OptInt(const json& obj, const char* key,
                                              const std::string& path) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return TypeError(path, "an integer");
  return v->get<int64_t>();
}

absl::StatusOr<std::optional<double>> OptNumber(const json& obj,
                                                const char* key,
                                                const std::string& path) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return TypeError(path, "a number");
  return v->get<double>();
}

absl::StatusOr<std::optional<bool>> OptBool(const json& obj, const char* key,
                                            const std::string& path) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return TypeError(path, "a boolean");
  return v->get<bool>();
}

template <typename T>
absl::StatusOr<T> Required(absl::StatusOr<std::optional<T>> v,
                           const std::string& path) {
  if (!v.ok()) return v.status();
  if (!v->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing"));
  }
  return **v;
}

// ---- the card's inputs, validated -------------------------------------------

struct FormatInfo {
  std::string name;
  std::string directory;  // "" = the artifact's top level
  std::string packing_format;
};

struct LayerInfo {
  std::string name;
  bool quantized = true;
  std::optional<int64_t> bits, group_size;
  std::optional<bool> sym;
  std::string reason;
};

struct RuleInfo {
  std::string name;
  std::optional<int64_t> bits, group_size;
  std::optional<bool> sym;
};

struct CardInputs {
  std::string model;
  std::string family;  // "" when unknown
  int64_t bits = 0;
  int64_t group_size = 0;
  bool sym = true;
  std::optional<int64_t> iters, nsamples, seqlen, batch_size, seed;
  std::optional<double> lr, minmax_lr;
  std::string compute_dtype, device;
  std::vector<RuleInfo> rules;
  std::vector<std::string> ignore_layers;
  std::vector<LayerInfo> layers;
  std::vector<FormatInfo> formats;
  // Calibration recipe: (label, value) in display order.
  std::vector<std::pair<std::string, std::string>> calibration;
  std::map<std::string, std::string> versions;
  // Evaluation summary.
  std::optional<bool> eval_enabled, eval_passed;
  std::string eval_message, eval_source;
  std::optional<int64_t> eval_samples, eval_tokens;
  const json* metrics = nullptr;          // the object tabulated
  bool metrics_is_summary = false;        // an evaluation summary stands in
  const json* thresholds = nullptr;       // gate thresholds, shown as given
  json spec_thresholds = json::object();  // storage when from the spec
  const json* notes = nullptr;            // how figures were measured (strings)
};

absl::Status ParseScheme(const json& manifest, CardInputs* in) {
  ASSIGN_OR_RETURN(const json* resolved, OptObject(manifest, "resolved_spec",
                                                   "manifest.resolved_spec"));
  if (resolved == nullptr) {
    return absl::InvalidArgumentError("manifest.resolved_spec: missing");
  }
  const std::string sp = "manifest.resolved_spec.scheme";
  ASSIGN_OR_RETURN(const json* scheme, OptObject(*resolved, "scheme", sp));
  if (scheme == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(sp, ": missing"));
  }
  ASSIGN_OR_RETURN(
      in->bits, Required(OptInt(*scheme, "bits", sp + ".bits"), sp + ".bits"));
  ASSIGN_OR_RETURN(in->group_size,
                   Required(OptInt(*scheme, "group_size", sp + ".group_size"),
                            sp + ".group_size"));
  ASSIGN_OR_RETURN(in->sym,
                   Required(OptBool(*scheme, "sym", sp + ".sym"), sp + ".sym"));
  ASSIGN_OR_RETURN(in->iters, OptInt(*scheme, "iters", sp + ".iters"));
  ASSIGN_OR_RETURN(in->nsamples, OptInt(*scheme, "nsamples", sp + ".nsamples"));
  ASSIGN_OR_RETURN(in->seqlen, OptInt(*scheme, "seqlen", sp + ".seqlen"));
  ASSIGN_OR_RETURN(in->batch_size,
                   OptInt(*scheme, "batch_size", sp + ".batch_size"));
  ASSIGN_OR_RETURN(in->seed, OptInt(*scheme, "seed", sp + ".seed"));
  ASSIGN_OR_RETURN(in->lr, OptNumber(*scheme, "lr", sp + ".lr"));
  ASSIGN_OR_RETURN(in->minmax_lr,
                   OptNumber(*scheme, "minmax_lr", sp + ".minmax_lr"));

  const std::string rp = "manifest.resolved_spec.layer_config";
  ASSIGN_OR_RETURN(const json* rules, OptArray(*resolved, "layer_config", rp));
  if (rules != nullptr) {
    for (size_t i = 0; i < rules->size(); ++i) {
      const std::string p = absl::StrCat(rp, "[", i, "]");
      const json& r = (*rules)[i];
      if (!r.is_object()) return TypeError(p, "an object");
      RuleInfo rule;
      ASSIGN_OR_RETURN(
          rule.name, Required(OptString(r, "name", p + ".name"), p + ".name"));
      ASSIGN_OR_RETURN(rule.bits, OptInt(r, "bits", p + ".bits"));
      ASSIGN_OR_RETURN(rule.group_size,
                       OptInt(r, "group_size", p + ".group_size"));
      ASSIGN_OR_RETURN(rule.sym, OptBool(r, "sym", p + ".sym"));
      in->rules.push_back(std::move(rule));
    }
  }
  const std::string ip = "manifest.resolved_spec.ignore_layers";
  ASSIGN_OR_RETURN(const json* ignore,
                   OptArray(*resolved, "ignore_layers", ip));
  if (ignore != nullptr) {
    for (size_t i = 0; i < ignore->size(); ++i) {
      if (!(*ignore)[i].is_string()) {
        return TypeError(absl::StrCat(ip, "[", i, "]"), "a string");
      }
      in->ignore_layers.push_back((*ignore)[i].get<std::string>());
    }
  }

  // Calibration recipe: the resolved settings plus the preset and the
  // content hash (the preset is already expanded in resolved_spec).
  const std::string cp = "manifest.resolved_spec.calibration";
  ASSIGN_OR_RETURN(const json* cal, OptObject(*resolved, "calibration", cp));
  ASSIGN_OR_RETURN(const json* spec,
                   OptObject(manifest, "spec", "manifest.spec"));
  std::optional<std::string> preset;
  if (spec != nullptr) {
    ASSIGN_OR_RETURN(const json* scal, OptObject(*spec, "calibration",
                                                 "manifest.spec.calibration"));
    if (scal != nullptr) {
      ASSIGN_OR_RETURN(preset, OptString(*scal, "preset",
                                         "manifest.spec.calibration.preset"));
    }
  }
  auto add_cal = [in](const std::string& label,
                      const std::optional<std::string>& v) {
    if (v.has_value() && !v->empty()) in->calibration.emplace_back(label, *v);
  };
  if (cal != nullptr) {
    std::optional<std::string> s;
    ASSIGN_OR_RETURN(s, OptString(*cal, "path", cp + ".path"));
    add_cal("source", s);
  }
  add_cal("preset", preset);
  if (cal != nullptr) {
    static const std::pair<const char*, const char*> kKeys[] = {
        {"format", "format"},       {"field", "field"},
        {"selection", "selection"}, {"stratify_column", "stratified by"},
        {"template", "template"},   {"query_prefix", "query prefix"}};
    for (const auto& [key, label] : kKeys) {
      std::optional<std::string> s;
      ASSIGN_OR_RETURN(s, OptString(*cal, key, absl::StrCat(cp, ".", key)));
      add_cal(label, s);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseManifest(const json& manifest, CardInputs* in) {
  if (!manifest.is_object()) return TypeError("manifest", "an object");
  ASSIGN_OR_RETURN(const json* spec,
                   OptObject(manifest, "spec", "manifest.spec"));
  if (spec == nullptr) {
    return absl::InvalidArgumentError("manifest.spec: missing");
  }
  ASSIGN_OR_RETURN(in->model,
                   Required(OptString(*spec, "model", "manifest.spec.model"),
                            "manifest.spec.model"));
  if (in->model.empty()) {
    return absl::InvalidArgumentError("manifest.spec.model: empty");
  }
  RETURN_IF_ERROR(ParseScheme(manifest, in));

  std::optional<std::string> s;
  ASSIGN_OR_RETURN(
      s, OptString(manifest, "model_family", "manifest.model_family"));
  in->family = s.value_or("");
  ASSIGN_OR_RETURN(s, OptString(manifest, "device", "manifest.device"));
  in->device = s.value_or("");
  ASSIGN_OR_RETURN(
      s, OptString(manifest, "compute_dtype", "manifest.compute_dtype"));
  in->compute_dtype = s.value_or("");

  ASSIGN_OR_RETURN(const json* formats,
                   OptObject(manifest, "formats", "manifest.formats"));
  if (formats == nullptr || formats->empty()) {
    return absl::InvalidArgumentError(
        "manifest.formats: missing or empty (no exported format)");
  }
  for (auto it = formats->begin(); it != formats->end(); ++it) {
    const std::string p = absl::StrCat("manifest.formats.", it.key());
    if (!it->is_object()) return TypeError(p, "an object");
    FormatInfo f;
    f.name = it.key();
    ASSIGN_OR_RETURN(f.directory,
                     Required(OptString(*it, "directory", p + ".directory"),
                              p + ".directory"));
    if (absl::StrContains(f.directory, "..") ||
        absl::StartsWith(f.directory, "/")) {
      return absl::InvalidArgumentError(absl::StrCat(
          p, ".directory: must be a relative path inside the artifact (got \"",
          f.directory, "\")"));
    }
    ASSIGN_OR_RETURN(s,
                     OptString(*it, "packing_format", p + ".packing_format"));
    f.packing_format = s.value_or("");
    in->formats.push_back(std::move(f));
  }

  ASSIGN_OR_RETURN(const json* layers,
                   OptArray(manifest, "layers", "manifest.layers"));
  if (layers != nullptr) {
    for (size_t i = 0; i < layers->size(); ++i) {
      const std::string p = absl::StrCat("manifest.layers[", i, "]");
      const json& l = (*layers)[i];
      if (!l.is_object()) return TypeError(p, "an object");
      LayerInfo info;
      ASSIGN_OR_RETURN(
          info.name, Required(OptString(l, "name", p + ".name"), p + ".name"));
      ASSIGN_OR_RETURN(info.quantized,
                       Required(OptBool(l, "quantized", p + ".quantized"),
                                p + ".quantized"));
      ASSIGN_OR_RETURN(info.bits, OptInt(l, "bits", p + ".bits"));
      ASSIGN_OR_RETURN(info.group_size,
                       OptInt(l, "group_size", p + ".group_size"));
      ASSIGN_OR_RETURN(info.sym, OptBool(l, "sym", p + ".sym"));
      ASSIGN_OR_RETURN(s, OptString(l, "reason", p + ".reason"));
      info.reason = s.value_or("");
      in->layers.push_back(std::move(info));
    }
  }

  ASSIGN_OR_RETURN(const json* inputs,
                   OptObject(manifest, "inputs", "manifest.inputs"));
  if (inputs != nullptr) {
    std::optional<int64_t> n;
    ASSIGN_OR_RETURN(n, OptInt(*inputs, "calibration_samples",
                               "manifest.inputs.calibration_samples"));
    if (n.has_value())
      in->calibration.emplace_back("samples used", absl::StrCat(*n));
    ASSIGN_OR_RETURN(s, OptString(*inputs, "calibration_sha256",
                                  "manifest.inputs.calibration_sha256"));
    if (s.has_value()) {
      in->calibration.emplace_back("content sha256",
                                   absl::StrCat("`", *s, "`"));
    }
  }

  ASSIGN_OR_RETURN(const json* versions,
                   OptObject(manifest, "versions", "manifest.versions"));
  if (versions != nullptr) {
    for (auto it = versions->begin(); it != versions->end(); ++it) {
      if (it->is_string()) in->versions[it.key()] = it->get<std::string>();
    }
  }
  return absl::OkStatus();
}

// The first of `keys` present in `obj` as an object (validated), or null.
absl::StatusOr<const json*> FirstObject(const json* obj, const char* key,
                                        const std::string& path) {
  if (obj == nullptr) return nullptr;
  return OptObject(*obj, key, absl::StrCat(path, ".", key));
}

absl::Status ParseResults(const json& manifest, const json& test_results,
                          CardInputs* in) {
  if (!test_results.is_null() && !test_results.is_object()) {
    return TypeError("test_results", "an object");
  }
  // The evaluation object: test_results first, the manifest's summary as
  // a fallback. Its parts ("metrics", "gate", "info", "notes") may sit at
  // the top of test_results or inside the evaluation object.
  std::string ep = "test_results.evaluation";
  ASSIGN_OR_RETURN(const json* eval, OptObject(test_results, "evaluation", ep));
  if (eval == nullptr) {
    ep = "manifest.evaluation";
    ASSIGN_OR_RETURN(eval, OptObject(manifest, "evaluation", ep));
  }
  auto part = [&](const char* key) -> absl::StatusOr<const json*> {
    ASSIGN_OR_RETURN(const json* top,
                     FirstObject(&test_results, key, "test_results"));
    if (top != nullptr) return top;
    return FirstObject(eval, key, ep);
  };
  ASSIGN_OR_RETURN(in->metrics, part("metrics"));
  ASSIGN_OR_RETURN(const json* gate, part("gate"));
  ASSIGN_OR_RETURN(const json* info, part("info"));
  ASSIGN_OR_RETURN(in->notes, part("notes"));
  ASSIGN_OR_RETURN(in->thresholds, part("thresholds"));
  if (in->metrics == nullptr && eval != nullptr) {
    in->metrics = eval;
    in->metrics_is_summary = true;
  }

  std::optional<std::string> s;
  if (eval != nullptr) {
    ASSIGN_OR_RETURN(in->eval_enabled,
                     OptBool(*eval, "enabled", ep + ".enabled"));
    ASSIGN_OR_RETURN(in->eval_passed, OptBool(*eval, "passed", ep + ".passed"));
    ASSIGN_OR_RETURN(s, OptString(*eval, "message", ep + ".message"));
    in->eval_message = s.value_or("");
    ASSIGN_OR_RETURN(s, OptString(*eval, "source", ep + ".source"));
    in->eval_source = s.value_or("");
    ASSIGN_OR_RETURN(in->eval_samples,
                     OptInt(*eval, "samples", ep + ".samples"));
    ASSIGN_OR_RETURN(in->eval_tokens, OptInt(*eval, "tokens", ep + ".tokens"));
  }
  if (info != nullptr) {
    const std::string ip = "test_results info";
    if (!in->eval_samples) {
      ASSIGN_OR_RETURN(in->eval_samples,
                       OptInt(*info, "samples", ip + ".samples"));
    }
    if (!in->eval_tokens) {
      ASSIGN_OR_RETURN(in->eval_tokens,
                       OptInt(*info, "tokens", ip + ".tokens"));
    }
    if (in->eval_source.empty()) {
      ASSIGN_OR_RETURN(s, OptString(*info, "source", ip + ".source"));
      in->eval_source = s.value_or("");
    }
  }
  if (gate != nullptr) {
    const std::string gp = "test_results gate";
    if (!in->eval_passed) {
      ASSIGN_OR_RETURN(in->eval_passed,
                       OptBool(*gate, "passed", gp + ".passed"));
    }
    ASSIGN_OR_RETURN(const json* failures,
                     OptArray(*gate, "failures", gp + ".failures"));
    if (in->eval_message.empty() && failures != nullptr) {
      std::vector<std::string> msgs;
      for (size_t i = 0; i < failures->size(); ++i) {
        if (!(*failures)[i].is_string()) {
          return TypeError(absl::StrCat(gp, ".failures[", i, "]"), "a string");
        }
        msgs.push_back((*failures)[i].get<std::string>());
      }
      in->eval_message = absl::StrJoin(msgs, "; ");
    }
  }
  // Thresholds: as reported, else the resolved spec's gate settings.
  if (in->thresholds == nullptr) {
    const json* resolved = Find(manifest, "resolved_spec");
    const json* ev = resolved ? Find(*resolved, "evaluation") : nullptr;
    if (ev != nullptr && ev->is_object()) {
      for (auto it = ev->begin(); it != ev->end(); ++it) {
        if (it->is_number() && (absl::StartsWith(it.key(), "min_") ||
                                absl::StartsWith(it.key(), "max_"))) {
          in->spec_thresholds[it.key()] = *it;
        }
      }
      if (!in->spec_thresholds.empty()) in->thresholds = &in->spec_thresholds;
    }
  }
  return absl::OkStatus();
}

// ---- formatting
// ---------------------------------------------------------------

std::string Bytes(int64_t n) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return absl::StrCat(n, " B");
  return absl::StrFormat("%.2f %s (%d bytes)", v, kUnits[u], n);
}

std::string Num(double v) { return absl::StrFormat("%.6g", v); }

// A markdown table cell: no pipes or line breaks.
std::string Cell(const std::string& s) {
  return absl::StrReplaceAll(s, {{"|", "\\|"}, {"\n", " "}, {"\r", " "}});
}

std::string YamlString(const std::string& s) {
  return absl::StrCat(
      "\"", absl::StrReplaceAll(s, {{"\\", "\\\\"}, {"\"", "\\\""}}), "\"");
}

std::string BaseName(std::string s) {
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  const size_t slash = s.find_last_of('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

// "org/name" as the hub spells repository ids; a local path is not one.
bool IsHubId(const std::string& model) {
  static const std::regex kHubId(
      "^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$");
  return std::regex_match(model, kHubId) && !absl::StrContains(model, "..");
}

bool IsVisionFamily(const std::string& family) {
  return family == "colqwen3" || family == "qwen3_vl";
}

// Readable names for the metric keys the evaluation stage writes; unknown
// keys are shown with '_' as spaces.
std::string Label(const std::string& key) {
  static const std::map<std::string, std::string> kLabels = {
      {"token_cosine_similarity", "token cosine similarity"},
      {"mean_token_cosine_similarity", "token cosine similarity (mean)"},
      {"min_token_cosine_similarity", "token cosine similarity (min)"},
      {"hidden_state_mse", "MSE of final hidden states"},
      {"mse", "MSE"},
      {"embedding_cosine_similarity", "embedding cosine similarity"},
      {"maxsim", "MaxSim score"},
      {"mean_abs_delta", "mean |Δ|"},
      {"max_abs_delta", "max |Δ|"},
      {"recall_at_1", "Recall@1"},
      {"recall_at_5", "Recall@5"},
      {"perplexity", "perplexity"},
      {"nan_inf", "NaN/Inf values"},
      {"nan_inf_count", "NaN/Inf values"},
      {"compression_ratio", "compression ratio"},
      {"tokens_per_second", "throughput (tokens/s)"},
      {"peak_memory_bytes", "peak memory"},
      {"p5", "5th percentile"},
      {"hidden_states", "final hidden states"},
      {"embeddings", "multi-vector embeddings"},
      {"retrieval", "retrieval pool"},
      {"non_finite_values", "NaN/Inf values"},
      {"maxsim_mean_abs_diff", "MaxSim score |Δ| (mean)"},
      {"maxsim_max_abs_diff", "MaxSim score |Δ| (max)"},
      {"maxsim_pearson", "MaxSim score Pearson r"},
      {"maxsim_spearman", "MaxSim score Spearman ρ"},
      {"self_recall_at_1", "self Recall@1"},
      {"perplexity_relative_change", "perplexity relative change"},
      {"performance", "inference"},
      {"resident_weight_bytes", "resident weights"},
      {"peak_device_allocated_bytes", "peak device memory"},
      {"fp", "original"},
  };
  auto it = kLabels.find(key);
  if (it != kLabels.end()) return it->second;
  return absl::StrReplaceAll(key, {{"_", " "}});
}

std::string FormatLeaf(const std::string& key, const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_string()) return v.get<std::string>();
  if (absl::EndsWith(key, "_bytes") && v.is_number_integer()) {
    return Bytes(v.get<int64_t>());
  }
  if (v.is_number_integer()) return absl::StrCat(v.get<int64_t>());
  const double d = v.get<double>();
  if (absl::EndsWith(key, "_seconds")) return absl::StrCat(Num(d), " s");
  if (key == "compression_ratio") return absl::StrCat(Num(d), "×");
  return Num(d);
}

bool IsLeaf(const json& v) {
  return v.is_number() || v.is_boolean() || v.is_string();
}

// Keys of an evaluation summary that are not measurements (used when the
// summary stands in for a "metrics" object).
bool IsSummaryKey(const std::string& key) {
  static const std::set<std::string> kKeys = {
      "enabled",   "passed", "message", "source", "samples",    "tokens",
      "threshold", "info",   "notes",   "gate",   "thresholds", "metrics"};
  return kKeys.count(key) > 0;
}

struct Row {
  std::string metric;
  std::string value;
};

std::string PairValue(const std::string& key, const json& fp, const json& q) {
  std::string out = absl::StrCat("original ", FormatLeaf(key, fp),
                                 " → quantized ", FormatLeaf(key, q));
  if (fp.is_number() && q.is_number() && fp.get<double>() != 0) {
    const double rel =
        (q.get<double>() - fp.get<double>()) / std::abs(fp.get<double>());
    absl::StrAppend(&out, absl::StrFormat(" (%+.2f%%)", 100 * rel));
  }
  return out;
}

void Flatten(const json& obj, const std::string& prefix, const std::string& key,
             bool summary, std::vector<Row>* rows);
std::vector<std::string> RankedKeys(const json& obj);

std::string Join(const std::string& prefix, const std::string& label) {
  return prefix.empty() ? label : absl::StrCat(prefix, " / ", label);
}

// The two sides of an {"fp": ..., "quantized": ...} pair, side by side where
// both have a leaf, one side alone where only it has one.
void FlattenPair(const json& fp, const json& q, const std::string& prefix,
                 std::vector<Row>* rows) {
  for (auto it = fp.begin(); it != fp.end(); ++it) {
    if (it->is_null() || it->is_array()) continue;
    const json* qv = Find(q, it.key().c_str());
    const std::string label = Join(prefix, Label(it.key()));
    if (qv != nullptr && IsLeaf(*it) && IsLeaf(*qv)) {
      rows->push_back({label, PairValue(it.key(), *it, *qv)});
    } else if (qv != nullptr && it->is_object() && qv->is_object()) {
      FlattenPair(*it, *qv, label, rows);
    } else if (IsLeaf(*it)) {
      rows->push_back({Join(prefix, absl::StrCat("original ", Label(it.key()))),
                       FormatLeaf(it.key(), *it)});
    } else if (it->is_object()) {
      Flatten(*it, Join(prefix, absl::StrCat("original ", Label(it.key()))),
              it.key(), /*summary=*/false, rows);
    }
  }
  for (auto it = q.begin(); it != q.end(); ++it) {
    if (it->is_null() || it->is_array() ||
        Find(fp, it.key().c_str()) != nullptr) {
      continue;
    }
    const std::string label =
        Join(prefix, absl::StrCat("quantized ", Label(it.key())));
    if (IsLeaf(*it)) {
      rows->push_back({label, FormatLeaf(it.key(), *it)});
    } else if (it->is_object()) {
      Flatten(*it, label, it.key(), /*summary=*/false, rows);
    }
  }
}

// Flattens `obj` into rows: every leaf becomes a row; {"fp", "quantized"}
// children and "<x>_fp" / "<x>_quantized" siblings become rows with both
// values. Arrays (per-sample lists) are not tabulated. With `summary`, the
// top level's non-measurement keys (IsSummaryKey) are skipped.
void Flatten(const json& obj, const std::string& prefix,
             const std::string& obj_key, bool summary, std::vector<Row>* rows) {
  const json* fp = Find(obj, "fp");
  const json* q = Find(obj, "quantized");
  const bool paired =
      fp != nullptr && q != nullptr &&
      ((IsLeaf(*fp) && IsLeaf(*q)) || (fp->is_object() && q->is_object()));
  if (paired) {
    if (IsLeaf(*fp)) {
      rows->push_back(
          {prefix.empty() ? "value" : prefix, PairValue(obj_key, *fp, *q)});
    } else {
      FlattenPair(*fp, *q, prefix, rows);
    }
  }
  for (const std::string& key : RankedKeys(obj)) {
    const auto it = obj.find(key);
    if (paired && (key == "fp" || key == "quantized")) continue;
    if (it->is_null() || it->is_array()) continue;
    if (summary && prefix.empty() && IsSummaryKey(key)) continue;
    if (absl::EndsWith(key, "_quantized")) {
      const std::string base = key.substr(0, key.size() - 10);
      const json* fv = Find(obj, (base + "_fp").c_str());
      if (fv != nullptr && IsLeaf(*fv) && IsLeaf(*it)) continue;
    }
    if (absl::EndsWith(key, "_fp")) {
      const std::string base = key.substr(0, key.size() - 3);
      const json* qv = Find(obj, (base + "_quantized").c_str());
      if (qv != nullptr && IsLeaf(*it) && IsLeaf(*qv)) {
        rows->push_back({Join(prefix, Label(base)), PairValue(base, *it, *qv)});
        continue;
      }
    }
    if (it->is_object()) {
      Flatten(*it, Join(prefix, Label(key)), key, /*summary=*/false, rows);
    } else {
      rows->push_back({Join(prefix, Label(key)), FormatLeaf(key, *it)});
    }
  }
}

// Order of the results table: quality first, then size, then speed.
int MetricRank(const std::string& key) {
  static const char* const kOrder[] = {"hidden_states",
                                       "embeddings",
                                       "token_cosine_similarity",
                                       "mean_token_cosine_similarity",
                                       "min_token_cosine_similarity",
                                       "hidden_state_mse",
                                       "mse",
                                       "embedding_cosine_similarity",
                                       "maxsim",
                                       "retrieval",
                                       "recall_at_1",
                                       "recall_at_5",
                                       "perplexity",
                                       "perplexity_fp",
                                       "perplexity_relative_change",
                                       "nan_inf",
                                       "nan_inf_count",
                                       "size",
                                       "compression_ratio",
                                       "performance",
                                       "throughput",
                                       "memory"};
  for (size_t i = 0; i < std::size(kOrder); ++i) {
    if (key == kOrder[i]) return static_cast<int>(i);
  }
  return static_cast<int>(std::size(kOrder));
}

// The keys of `obj`, quality metrics first (MetricRank), then by name.
std::vector<std::string> RankedKeys(const json& obj) {
  std::vector<std::string> keys;
  for (auto it = obj.begin(); it != obj.end(); ++it) keys.push_back(it.key());
  std::stable_sort(keys.begin(), keys.end(),
                   [](const std::string& a, const std::string& b) {
                     return MetricRank(a) < MetricRank(b);
                   });
  return keys;
}

std::vector<Row> MetricRows(const json& metrics, bool summary) {
  // One Flatten per top-level key keeps the ranking; a top-level fp /
  // quantized pair and "_quantized" halves of "_fp" pairs go with their
  // partner.
  std::vector<std::string> keys;
  for (auto it = metrics.begin(); it != metrics.end(); ++it) {
    const std::string& k = it.key();
    if (k == "fp" || k == "quantized") continue;
    if (absl::EndsWith(k, "_quantized") &&
        metrics.contains(k.substr(0, k.size() - 10) + "_fp")) {
      continue;
    }
    keys.push_back(k);
  }
  std::stable_sort(keys.begin(), keys.end(),
                   [](const std::string& a, const std::string& b) {
                     return MetricRank(a) < MetricRank(b);
                   });
  std::vector<Row> rows;
  for (const std::string& k : keys) {
    json single = json::object();
    single[k] = metrics[k];
    if (absl::EndsWith(k, "_fp")) {
      const std::string qk = k.substr(0, k.size() - 3) + "_quantized";
      if (metrics.contains(qk)) single[qk] = metrics[qk];
    }
    Flatten(single, "", "", summary, &rows);
  }
  json pair = json::object();
  for (const char* k : {"fp", "quantized"}) {
    if (metrics.contains(k)) pair[k] = metrics[k];
  }
  if (!pair.empty()) Flatten(pair, "", "", summary, &rows);
  return rows;
}

// ---- sections
// -----------------------------------------------------------------

std::string SchemeName(const CardInputs& in) {
  return absl::StrCat("W", in.bits, " G", in.group_size,
                      in.sym ? " sym" : " asym");
}

void AppendFrontMatter(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "---\n");
  if (IsHubId(in.model)) {
    absl::StrAppend(out, "base_model: ", YamlString(in.model), "\n");
    absl::StrAppend(out, "base_model_relation: quantized\n");
  }
  absl::StrAppend(out, "library_name: transformers\n");
  if (in.family == "colqwen3") {
    absl::StrAppend(out, "pipeline_tag: visual-document-retrieval\n");
  } else if (in.family == "qwen3_vl") {
    absl::StrAppend(out, "pipeline_tag: image-text-to-text\n");
  } else if (!in.family.empty()) {
    absl::StrAppend(out, "pipeline_tag: text-generation\n");
  }
  std::vector<std::string> tags = {"roundhouse", "auto-round", "quantized",
                                   absl::StrCat(in.bits, "-bit")};
  std::set<std::string> seen(tags.begin(), tags.end());
  auto add = [&](const std::string& t) {
    if (!t.empty() && seen.insert(t).second) tags.push_back(t);
  };
  for (const FormatInfo& f : in.formats) {
    if (absl::StrContains(f.packing_format, "gptq") || f.name == "auto_gptq") {
      add("gptq");
    }
    if (absl::StrContains(f.packing_format, "awq") || f.name == "auto_awq") {
      add("awq");
    }
  }
  add(in.family);
  if (in.family == "colqwen3") {
    add("colpali");
    add("multi-vector");
  }
  absl::StrAppend(out, "tags:\n");
  for (const std::string& t : tags) {
    absl::StrAppend(out, "- ", YamlString(t), "\n");
  }
  absl::StrAppend(out, "---\n\n");
}

void AppendConfiguration(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## Method and configuration\n\n");
  absl::StrAppend(
      out,
      "Weight-only quantization with AutoRound (SignRound: signed-gradient "
      "tuning of the rounding and of the clipping range, block by block, "
      "against the original model's outputs on calibration data), "
      "re-implemented in C++ by roundhouse",
      in.versions.count("roundhouse")
          ? absl::StrCat(" ", in.versions.at("roundhouse"))
          : "",
      ". Activations stay in the compute precision.\n\n");
  absl::StrAppend(out, "| setting | value |\n|---|---|\n");
  absl::StrAppend(out, "| bits | ", in.bits, " |\n");
  absl::StrAppend(out, "| group size | ", in.group_size, " |\n");
  absl::StrAppend(out, "| symmetric | ", in.sym ? "yes" : "no (zero point)",
                  " |\n");
  if (in.iters) {
    absl::StrAppend(out, "| tuning iterations per block | ", *in.iters,
                    *in.iters == 0 ? " (round-to-nearest, no tuning)" : "",
                    " |\n");
  }
  if (in.nsamples) {
    absl::StrAppend(out, "| calibration samples (nsamples) | ", *in.nsamples,
                    " |\n");
  }
  if (in.seqlen) {
    absl::StrAppend(out, "| sequence length (seqlen) | ", *in.seqlen, " |\n");
  }
  if (in.batch_size) {
    absl::StrAppend(out, "| batch size | ", *in.batch_size, " |\n");
  }
  if (in.lr) absl::StrAppend(out, "| learning rate | ", Num(*in.lr), " |\n");
  if (in.minmax_lr) {
    absl::StrAppend(out, "| min-max learning rate | ", Num(*in.minmax_lr),
                    " |\n");
  }
  if (in.seed) absl::StrAppend(out, "| seed | ", *in.seed, " |\n");
  if (!in.compute_dtype.empty()) {
    absl::StrAppend(out, "| compute dtype | ", in.compute_dtype, " |\n");
  }
  if (!in.device.empty()) {
    absl::StrAppend(out, "| device | ", in.device, " |\n");
  }
  std::vector<std::string> fmts;
  for (const FormatInfo& f : in.formats) {
    std::string s = absl::StrCat("`", f.name, "`");
    if (!f.packing_format.empty()) {
      absl::StrAppend(&s, " (packing `", f.packing_format, "`)");
    }
    if (!f.directory.empty()) absl::StrAppend(&s, " in `", f.directory, "/`");
    fmts.push_back(s);
  }
  absl::StrAppend(out, "| export format | ", absl::StrJoin(fmts, ", "), " |\n");
  if (!in.layers.empty()) {
    int quantized = 0;
    for (const LayerInfo& l : in.layers) quantized += l.quantized ? 1 : 0;
    absl::StrAppend(out, "| decoder-block Linear layers quantized | ",
                    quantized, " of ", in.layers.size(), " |\n");
  }
  absl::StrAppend(out, "\n");

  // Per-layer overrides: the rules as given, then the layers they changed.
  absl::StrAppend(out, "### Per-layer overrides\n\n");
  if (in.rules.empty()) {
    absl::StrAppend(out,
                    "None: every quantized layer uses the scheme "
                    "above.\n\n");
  } else {
    absl::StrAppend(out,
                    "| layer pattern (regex) | bits | group size | "
                    "sym |\n|---|---|---|---|\n");
    for (const RuleInfo& r : in.rules) {
      absl::StrAppend(out, "| `", Cell(r.name), "` | ",
                      r.bits ? absl::StrCat(*r.bits) : "-", " | ",
                      r.group_size ? absl::StrCat(*r.group_size) : "-", " | ",
                      r.sym ? (*r.sym ? "yes" : "no") : "-", " |\n");
    }
    absl::StrAppend(out, "\n");
    std::vector<const LayerInfo*> changed;
    for (const LayerInfo& l : in.layers) {
      if (l.quantized && ((l.bits && *l.bits != in.bits) ||
                          (l.group_size && *l.group_size != in.group_size) ||
                          (l.sym && *l.sym != in.sym))) {
        changed.push_back(&l);
      }
    }
    if (!changed.empty()) {
      absl::StrAppend(out, changed.size(),
                      " layer(s) differ from the scheme:\n\n");
      for (size_t i = 0; i < changed.size() && i < kMaxListedLayers; ++i) {
        const LayerInfo& l = *changed[i];
        absl::StrAppend(out, "- `", l.name, "`: W", l.bits.value_or(in.bits),
                        " G", l.group_size.value_or(in.group_size),
                        l.sym.value_or(in.sym) ? " sym" : " asym", "\n");
      }
      if (changed.size() > kMaxListedLayers) {
        absl::StrAppend(out, "- ... and ", changed.size() - kMaxListedLayers,
                        " more (manifest.json, \"layers\")\n");
      }
      absl::StrAppend(out, "\n");
    }
  }

  absl::StrAppend(out, "### Layers kept in original precision\n\n");
  std::vector<const LayerInfo*> kept;
  for (const LayerInfo& l : in.layers) {
    if (!l.quantized) kept.push_back(&l);
  }
  absl::StrAppend(out,
                  "Outside the decoder blocks nothing is quantized: "
                  "embeddings, final norm and output head keep their "
                  "original dtype");
  if (IsVisionFamily(in.family)) {
    absl::StrAppend(out, ", and so do the vision tower",
                    in.family == "colqwen3" ? " and the projection head" : "");
  }
  absl::StrAppend(out, ".");
  if (!in.ignore_layers.empty()) {
    std::vector<std::string> quoted;
    for (const std::string& s : in.ignore_layers) {
      quoted.push_back(absl::StrCat("`", s, "`"));
    }
    absl::StrAppend(out, " Excluded by the job (ignore_layers): ",
                    absl::StrJoin(quoted, ", "), ".");
  }
  absl::StrAppend(out, "\n\n");
  if (kept.empty()) {
    if (!in.layers.empty()) {
      absl::StrAppend(out,
                      "Every decoder-block Linear layer is quantized.\n\n");
    }
  } else {
    absl::StrAppend(out, kept.size(),
                    " decoder-block Linear layer(s) are "
                    "not quantized:\n\n");
    for (size_t i = 0; i < kept.size() && i < kMaxListedLayers; ++i) {
      absl::StrAppend(
          out, "- `", kept[i]->name, "`",
          kept[i]->reason.empty() ? "" : absl::StrCat(": ", kept[i]->reason),
          "\n");
    }
    if (kept.size() > kMaxListedLayers) {
      absl::StrAppend(out, "- ... and ", kept.size() - kMaxListedLayers,
                      " more (manifest.json, \"layers\")\n");
    }
    absl::StrAppend(out, "\n");
  }
}

void AppendCalibration(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## Calibration\n\n");
  if (in.calibration.empty()) {
    absl::StrAppend(out, "The manifest records no calibration recipe.\n\n");
    return;
  }
  absl::StrAppend(out, "| setting | value |\n|---|---|\n");
  for (const auto& [label, value] : in.calibration) {
    absl::StrAppend(out, "| ", label, " | ", Cell(value), " |\n");
  }
  absl::StrAppend(out, "\n");
  if (IsVisionFamily(in.family)) {
    absl::StrAppend(out,
                    "Calibration is text-only: no images went through "
                    "the model.\n\n");
  }
}

void AppendResults(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## Evaluation against the original model\n\n");
  if (in.eval_enabled.has_value() && !*in.eval_enabled) {
    absl::StrAppend(out,
                    "Evaluation was disabled for this job "
                    "(`evaluation.enabled: false`): there are no quality "
                    "figures for this checkpoint.\n\n");
    return;
  }
  std::vector<Row> rows;
  if (in.metrics != nullptr) {
    rows = MetricRows(*in.metrics, in.metrics_is_summary);
  }
  if (rows.empty() && !in.eval_passed.has_value()) {
    absl::StrAppend(out,
                    "No evaluation results were recorded for this "
                    "checkpoint.\n\n");
    return;
  }
  std::vector<std::string> about;
  if (in.eval_samples) {
    about.push_back(absl::StrCat(*in.eval_samples, " held-out samples"));
  }
  if (in.eval_tokens) about.push_back(absl::StrCat(*in.eval_tokens, " tokens"));
  if (!in.eval_source.empty()) {
    about.push_back(absl::StrCat("source: ", in.eval_source));
  }
  absl::StrAppend(
      out,
      "The exported checkpoint was read back from its packed "
      "tensors and compared with the original model",
      about.empty() ? "" : absl::StrCat(" (", absl::StrJoin(about, ", "), ")"),
      ".", IsVisionFamily(in.family) ? " Text inputs only." : "", "\n\n");
  if (in.eval_passed.has_value()) {
    absl::StrAppend(out, "Quality gate: **",
                    *in.eval_passed ? "passed" : "FAILED", "**");
    if (!in.eval_message.empty()) {
      absl::StrAppend(out, ": ", in.eval_message);
    }
    absl::StrAppend(out, "\n\n");
  }
  if (in.thresholds != nullptr && !in.thresholds->empty()) {
    absl::StrAppend(out, "Gate thresholds:");
    for (auto it = in.thresholds->begin(); it != in.thresholds->end(); ++it) {
      if (IsLeaf(*it)) {
        // Recall thresholds are optional gates: 0 switches them off
        // (EvaluationSpec.min_recall_at_1).
        const bool off = absl::StartsWith(it.key(), "min_recall") &&
                         it->is_number() && it->get<double>() == 0;
        absl::StrAppend(out, " `", it.key(), "` = ", FormatLeaf(it.key(), *it),
                        off ? " (off)" : "", ";");
      }
    }
    if (out->back() == ';') out->pop_back();
    absl::StrAppend(out, "\n\n");
  }
  if (!rows.empty()) {
    absl::StrAppend(out, "| metric | value |\n|---|---|\n");
    for (const Row& r : rows) {
      absl::StrAppend(out, "| ", Cell(r.metric), " | ", Cell(r.value), " |\n");
    }
    absl::StrAppend(out, "\n");
  }
  if (in.notes != nullptr) {
    std::vector<std::string> lines;
    for (auto it = in.notes->begin(); it != in.notes->end(); ++it) {
      if (it->is_string()) {
        lines.push_back(absl::StrCat("- ", Label(it.key()), ": ",
                                     it->get<std::string>(), "\n"));
      }
    }
    if (!lines.empty()) {
      absl::StrAppend(out, "How these figures were measured:\n\n",
                      absl::StrJoin(lines, ""), "\n");
    }
  }
  absl::StrAppend(out,
                  "Every figure is in `test_results.json`, with the "
                  "configuration and versions.\n\n");
}

void AppendSize(const CardInputs& in,
                const std::vector<ArtifactFileInfo>& files, std::string* out) {
  absl::StrAppend(out, "## Size on disk\n\n");
  int64_t total = 0;
  for (const ArtifactFileInfo& f : files) total += f.size_bytes;
  absl::StrAppend(out, "| part | size |\n|---|---|\n");
  for (const FormatInfo& fmt : in.formats) {
    int64_t weights = 0;
    int n = 0;
    for (const ArtifactFileInfo& f : files) {
      const bool in_dir = fmt.directory.empty()
                              ? f.path.find('/') == std::string::npos
                              : absl::StartsWith(f.path, fmt.directory + "/");
      if (in_dir && absl::EndsWith(f.path, ".safetensors")) {
        weights += f.size_bytes;
        ++n;
      }
    }
    absl::StrAppend(out, "| weights, `", fmt.name, "` (", n,
                    " safetensors file", n == 1 ? "" : "s", ") | ",
                    Bytes(weights), " |\n");
  }
  absl::StrAppend(out, "| whole folder before this card (", files.size(),
                  " files) | ", Bytes(total), " |\n\n");
}

void AppendUsage(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## How to use\n\n");
  absl::StrAppend(out,
                  "Replace `REPO` with the hub repository id this folder was "
                  "uploaded to, or with a local path to the folder. The "
                  "snippets follow each library's documented loading path "
                  "for the format; roundhouse's own check of the checkpoint "
                  "is the evaluation above.\n\n");
  const bool colqwen = in.family == "colqwen3";
  const bool vl = in.family == "qwen3_vl";
  for (const FormatInfo& f : in.formats) {
    if (in.formats.size() > 1) {
      absl::StrAppend(out, "### Format `", f.name, "`\n\n");
    }
    const std::string sub =
        f.directory.empty() ? ""
                            : absl::StrCat(", subfolder=\"", f.directory, "\"");
    const bool auto_round = f.name == "auto_round";
    std::string import_line;
    std::string install = "pip install transformers";
    if (auto_round) {
      install = "pip install auto-round transformers";
      import_line =
          "from auto_round import AutoRoundConfig  # noqa: F401 "
          "(registers the auto-round method)\n";
    } else if (f.name == "auto_gptq") {
      install = "pip install transformers optimum gptqmodel";
    } else if (f.name == "auto_awq") {
      install = "pip install transformers autoawq";
    }
    absl::StrAppend(out, "With transformers (`", install, "`):\n\n```python\n");
    if (colqwen) {
      absl::StrAppend(
          out, "import torch\n", import_line,
          "from transformers import AutoModel, AutoProcessor\n\n",
          "model = AutoModel.from_pretrained(\n    \"REPO\"", sub,
          ", trust_remote_code=True,\n    torch_dtype=torch.bfloat16, "
          "device_map=\"auto\")\n",
          "processor = AutoProcessor.from_pretrained(\"REPO\"", sub,
          ", trust_remote_code=True)\n");
    } else if (vl) {
      absl::StrAppend(
          out, import_line,
          "from transformers import AutoModelForImageTextToText, "
          "AutoProcessor\n\n",
          "model = AutoModelForImageTextToText.from_pretrained(\n    \"REPO\"",
          sub, ", torch_dtype=\"auto\", device_map=\"auto\")\n",
          "processor = AutoProcessor.from_pretrained(\"REPO\"", sub, ")\n");
    } else {
      absl::StrAppend(
          out, import_line,
          "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n",
          "model = AutoModelForCausalLM.from_pretrained(\n    \"REPO\"", sub,
          ", torch_dtype=\"auto\", device_map=\"auto\")\n",
          "tokenizer = AutoTokenizer.from_pretrained(\"REPO\"", sub, ")\n");
    }
    absl::StrAppend(out, "```\n\n");
    if (auto_round) {
      absl::StrAppend(
          out,
          "With auto-round choosing the kernel backend explicitly:\n\n"
          "```python\nfrom auto_round import AutoRoundConfig\nfrom "
          "transformers import ",
          colqwen ? "AutoModel"
          : vl    ? "AutoModelForImageTextToText"
                  : "AutoModelForCausalLM",
          "\n\nmodel = ",
          colqwen ? "AutoModel"
          : vl    ? "AutoModelForImageTextToText"
                  : "AutoModelForCausalLM",
          ".from_pretrained(\n    \"REPO\"", sub,
          colqwen ? ", trust_remote_code=True" : "",
          ", device_map=\"auto\",\n    quantization_config="
          "AutoRoundConfig(backend=\"auto\"))\n```\n\n");
    }
    if (colqwen) {
      absl::StrAppend(
          out,
          "With vLLM: not covered. ColQwen3 is a remote-code multi-vector "
          "embedding model; roundhouse has not run it under vLLM.\n\n");
    } else {
      absl::StrAppend(
          out, "With vLLM (reads `quantization_config` from config.json",
          f.directory.empty() ? ""
                              : absl::StrCat("; point it at a local copy of `",
                                             f.directory, "/`"),
          "):\n\n```bash\nvllm serve REPO\n```\n\n");
    }
  }
}

void AppendLimitations(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## Limitations\n\n");
  absl::StrAppend(out,
                  "- Weight-only quantization: activations and the KV cache "
                  "stay in the compute dtype; speed-ups need a kernel for "
                  "the packed format.\n");
  if (in.eval_enabled.has_value() && !*in.eval_enabled) {
    absl::StrAppend(out,
                    "- Not evaluated: this job ran without the "
                    "evaluation stage.\n");
  } else {
    absl::StrAppend(out,
                    "- The evaluation measures agreement with the original "
                    "model on held-out samples; it is not a downstream "
                    "benchmark.\n");
  }
  if (in.eval_passed.has_value() && !*in.eval_passed) {
    absl::StrAppend(
        out, "- This checkpoint FAILED the quality gate",
        in.eval_message.empty() ? "" : absl::StrCat(" (", in.eval_message, ")"),
        "; it is kept for inspection, not for use.\n");
  }
  if (in.family == "colqwen3") {
    absl::StrAppend(
        out,
        "- Only the language model's decoder blocks are quantized: the "
        "vision tower and the projection head are unquantized, stored as in "
        "the original checkpoint (bf16 for the published ColQwen3).\n"
        "- Calibration used text only (queries); image inputs were never "
        "seen during tuning.\n"
        "- The evaluation ran on text; document-image retrieval quality "
        "was not measured.\n");
  } else if (in.family == "qwen3_vl") {
    absl::StrAppend(
        out,
        "- Only the language model's decoder blocks are quantized: the "
        "vision tower is unquantized.\n"
        "- Calibration and evaluation used text only.\n");
  }
  absl::StrAppend(out, "\n");
}

void AppendProvenance(const CardInputs& in, std::string* out) {
  absl::StrAppend(out, "## Provenance\n\n");
  absl::StrAppend(out, "- base model: `", in.model, "`\n");
  for (const auto& [k, v] : in.versions) {
    absl::StrAppend(out, "- ", k, ": ", v, "\n");
  }
  absl::StrAppend(out,
                  "- `manifest.json` lists every file of this folder with "
                  "its size and sha256, the job spec, the input hashes and "
                  "the per-block tuning losses.\n");
}

absl::StatusOr<std::vector<ArtifactFileInfo>> ListArtifactFiles(
    const std::string& dir) {
  ASSIGN_OR_RETURN(std::vector<std::string> rels, ListFilesRecursive(dir));
  std::vector<ArtifactFileInfo> out;
  for (const std::string& rel : rels) {
    // A previous card is not part of what it describes.
    if (rel == kModelCardFile || rel == kGitAttributesFile) continue;
    struct stat st;
    const std::string path = JoinPath(dir, rel);
    if (::stat(path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot stat ", path));
    }
    out.push_back({rel, static_cast<int64_t>(st.st_size)});
  }
  return out;
}

absl::Status WriteQuantizationConfig(const std::string& artifact_dir,
                                     const FormatInfo& f) {
  const std::string dir =
      f.directory.empty() ? artifact_dir : JoinPath(artifact_dir, f.directory);
  const std::string config_path = JoinPath(dir, "config.json");
  if (!PathExists(config_path)) {
    return absl::NotFoundError(absl::StrCat(config_path, ": missing (format \"",
                                            f.name, "\" was not exported)"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
  // ordered_json keeps the exporter's key order, so the file is byte for
  // byte what the exporter wrote next to config.json.
  ordered_json config =
      ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": not a JSON object"));
  }
  auto qc = config.find("quantization_config");
  if (qc == config.end() || !qc->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": quantization_config is missing"));
  }
  return WriteFileAtomically(JoinPath(dir, kQuantizationConfigFile),
                             qc->dump(2) + "\n");
}

}  // namespace

absl::StatusOr<std::string> RenderModelCard(
    const json& manifest, const json& test_results,
    const std::vector<ArtifactFileInfo>& files) {
  CardInputs in;
  RETURN_IF_ERROR(ParseManifest(manifest, &in));
  RETURN_IF_ERROR(ParseResults(manifest, test_results, &in));

  std::string out;
  AppendFrontMatter(in, &out);
  absl::StrAppend(&out, "# ", BaseName(in.model), " (AutoRound ",
                  SchemeName(in), ")\n\n");
  absl::StrAppend(&out, "A ", in.bits, "-bit weight-only quantization of `",
                  in.model, "`",
                  in.family.empty() ? "" : absl::StrCat(" (", in.family, ")"),
                  ", made with AutoRound by roundhouse.\n\n");
  if (in.eval_passed.has_value() && !*in.eval_passed) {
    absl::StrAppend(
        &out, "> **Warning: this checkpoint failed the quality gate",
        in.eval_message.empty() ? "" : absl::StrCat(" (", in.eval_message, ")"),
        ".** It is kept for inspection.\n\n");
  }
  AppendConfiguration(in, &out);
  AppendCalibration(in, &out);
  AppendResults(in, &out);
  AppendSize(in, files, &out);
  AppendUsage(in, &out);
  AppendLimitations(in, &out);
  AppendProvenance(in, &out);
  return out;
}

std::string RenderGitAttributes(const std::vector<ArtifactFileInfo>& files) {
  static const char* const kPatterns[] = {"*.safetensors", "*.bin", "*.gguf",
                                          "*.pt"};
  static const char* const kExts[] = {".safetensors", ".bin", ".gguf", ".pt"};
  std::string out;
  for (const char* p : kPatterns) {
    absl::StrAppend(&out, p, " filter=lfs diff=lfs merge=lfs -text\n");
  }
  for (const ArtifactFileInfo& f : files) {
    if (f.size_bytes <= kLfsThresholdBytes) continue;
    bool covered = false;
    for (const char* e : kExts) covered |= absl::EndsWith(f.path, e);
    // Git attribute patterns treat spaces and '#' specially; such names
    // are left to the hub's own size rule rather than mis-quoted here.
    if (covered || absl::StrContains(f.path, " ") ||
        absl::StartsWith(f.path, "#")) {
      continue;
    }
    absl::StrAppend(&out, "/", f.path,
                    " filter=lfs diff=lfs merge=lfs -text\n");
  }
  return out;
}

absl::Status WriteDeliverable(const std::string& artifact_dir,
                              const json& manifest, const json& test_results) {
  if (!IsDirectory(artifact_dir)) {
    return absl::NotFoundError(
        absl::StrCat(artifact_dir, ": artifact directory does not exist"));
  }
  // Validate everything before writing anything.
  CardInputs in;
  RETURN_IF_ERROR(ParseManifest(manifest, &in));
  RETURN_IF_ERROR(ParseResults(manifest, test_results, &in));
  for (const FormatInfo& f : in.formats) {
    RETURN_IF_ERROR(WriteQuantizationConfig(artifact_dir, f));
  }
  ASSIGN_OR_RETURN(std::vector<ArtifactFileInfo> files,
                   ListArtifactFiles(artifact_dir));
  ASSIGN_OR_RETURN(std::string card,
                   RenderModelCard(manifest, test_results, files));
  RETURN_IF_ERROR(WriteFileAtomically(
      JoinPath(artifact_dir, kGitAttributesFile), RenderGitAttributes(files)));
  return WriteFileAtomically(JoinPath(artifact_dir, kModelCardFile), card);
}

}  // namespace roundhouse::engine
