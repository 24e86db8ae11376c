#include "worker/engine/job_config.h"

#include <cctype>
#include <cmath>
#include <limits>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

std::string Describe(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// protobuf's JSON parser accepts lowerCamelCase as well as the proto field
// name; mirror that so a spec the coordinator accepted is accepted here.
std::string ToSnake(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (std::isupper(static_cast<unsigned char>(c))) {
      out.push_back('_');
      out.push_back(static_cast<char>(std::tolower(c)));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// protobuf's JSON name: "_" dropped, the following character upper-cased.
std::string ToLowerCamel(const std::string& key) {
  std::string out;
  bool upper = false;
  for (char c : key) {
    if (c == '_') {
      upper = true;
      continue;
    }
    out.push_back(upper ? static_cast<char>(std::toupper(
                              static_cast<unsigned char>(c)))
                        : c);
    upper = false;
  }
  return out;
}

// Checks `obj` is an object whose keys are all in `known`; returns a copy
// with canonical (snake_case) keys.
absl::StatusOr<json> Normalize(const json& obj, const std::string& path,
                               const std::set<std::string>& known) {
  if (!obj.is_object()) {
    return Bad(path.empty() ? "spec" : path,
               absl::StrCat("must be a JSON object (got ", Describe(obj),
                            ")"));
  }
  json out = json::object();
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    std::string key = known.count(it.key()) ? it.key() : ToSnake(it.key());
    if (!known.count(key)) {
      // protobuf's lowerCamelCase of a name with a digit after "_"
      // ("min_recall_at_1" -> "minRecallAt1") does not map back by
      // ToSnake: match against the camel form of every known name.
      for (const std::string& k : known) {
        if (ToLowerCamel(k) == it.key()) key = k;
      }
    }
    std::string field = path.empty() ? it.key() : path + "." + it.key();
    if (!known.count(key)) return Bad(field, "unknown field");
    if (out.contains(key)) return Bad(field, "given twice");
    out[key] = it.value();
  }
  return out;
}

// Integers may come as JSON numbers or, as protobuf's JSON form allows, as
// decimal strings.
absl::StatusOr<int64_t> GetInt(const json& v, const std::string& path) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) {
      return static_cast<int64_t>(d);
    }
  }
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (!s.empty() && s.size() < 19) {
      size_t pos = 0;
      try {
        long long n = std::stoll(s, &pos);
        if (pos == s.size()) return static_cast<int64_t>(n);
      } catch (...) {
      }
    }
  }
  return Bad(path, absl::StrCat("must be an integer (got ", Describe(v), ")"));
}

absl::StatusOr<int> GetInt32(const json& v, const std::string& path) {
  ASSIGN_OR_RETURN(int64_t n, GetInt(v, path));
  if (n < std::numeric_limits<int>::min() ||
      n > std::numeric_limits<int>::max()) {
    return Bad(path, absl::StrCat("out of range (got ", n, ")"));
  }
  return static_cast<int>(n);
}

absl::StatusOr<double> GetDouble(const json& v, const std::string& path) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    size_t pos = 0;
    try {
      double d = std::stod(s, &pos);
      if (pos == s.size() && !s.empty()) return d;
    } catch (...) {
    }
  }
  return Bad(path, absl::StrCat("must be a number (got ", Describe(v), ")"));
}

absl::StatusOr<bool> GetBool(const json& v, const std::string& path) {
  if (v.is_boolean()) return v.get<bool>();
  return Bad(path, absl::StrCat("must be true or false (got ", Describe(v),
                                ")"));
}

absl::StatusOr<std::string> GetString(const json& v, const std::string& path) {
  if (v.is_string()) return v.get<std::string>();
  return Bad(path, absl::StrCat("must be a string (got ", Describe(v), ")"));
}

absl::Status CheckBits(int bits, const std::string& path, bool allow16) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return absl::OkStatus();
  if (allow16 && bits == 16) return absl::OkStatus();
  return Bad(path, absl::StrCat("must be one of 2, 3, 4, 8",
                                allow16 ? ", 16" : "", " (got ", bits, ")"));
}

absl::Status CheckGroup(int g, const std::string& path) {
  if (g == 32 || g == 64 || g == 128 || g == -1) return absl::OkStatus();
  return Bad(path,
             absl::StrCat("must be one of 32, 64, 128, -1 (got ", g, ")"));
}

absl::Status ParseScheme(const json& in, JobConfig* c,
                         std::set<std::string>* given) {
  static const std::set<std::string> kKnown = {
      "bits", "group_size", "sym", "iters", "nsamples", "seqlen",
      "batch_size", "gradient_accumulate_steps", "lr", "minmax_lr", "seed",
      "enable_minmax_tuning", "enable_quanted_input", "not_use_best_mse",
      "compute_dtype", "deterministic"};
  ASSIGN_OR_RETURN(json s, Normalize(in, "scheme", kKnown));
  for (auto it = s.begin(); it != s.end(); ++it) given->insert(it.key());
  TuningConfig& t = c->tune;
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    const std::string p = "scheme." + k;
    if (k == "bits") {
      ASSIGN_OR_RETURN(c->global.bits, GetInt32(v, p));
      RETURN_IF_ERROR(CheckBits(c->global.bits, p, /*allow16=*/false));
    } else if (k == "group_size") {
      ASSIGN_OR_RETURN(c->global.group_size, GetInt32(v, p));
      RETURN_IF_ERROR(CheckGroup(c->global.group_size, p));
    } else if (k == "sym") {
      ASSIGN_OR_RETURN(c->global.sym, GetBool(v, p));
    } else if (k == "iters") {
      ASSIGN_OR_RETURN(t.iters, GetInt32(v, p));
      if (t.iters < 0 || t.iters > 100000) {
        return Bad(p, absl::StrCat("must be in [0, 100000] (got ", t.iters,
                                   ")"));
      }
    } else if (k == "nsamples") {
      ASSIGN_OR_RETURN(c->nsamples, GetInt32(v, p));
      if (c->nsamples < 1 || c->nsamples > 1000000) {
        return Bad(p, absl::StrCat("must be in [1, 1000000] (got ",
                                   c->nsamples, ")"));
      }
    } else if (k == "seqlen") {
      ASSIGN_OR_RETURN(c->seqlen, GetInt32(v, p));
      if (c->seqlen < 2 || c->seqlen > 1048576) {
        return Bad(p, absl::StrCat("must be in [2, 1048576] (got ", c->seqlen,
                                   ")"));
      }
    } else if (k == "batch_size") {
      ASSIGN_OR_RETURN(t.batch_size, GetInt32(v, p));
      if (t.batch_size < 1) {
        return Bad(p, absl::StrCat("must be >= 1 (got ", t.batch_size, ")"));
      }
    } else if (k == "gradient_accumulate_steps") {
      ASSIGN_OR_RETURN(t.gradient_accumulate_steps, GetInt32(v, p));
      if (t.gradient_accumulate_steps < 1) {
        return Bad(p, absl::StrCat("must be >= 1 (got ",
                                   t.gradient_accumulate_steps, ")"));
      }
    } else if (k == "lr" || k == "minmax_lr") {
      ASSIGN_OR_RETURN(double lr, GetDouble(v, p));
      if (!std::isfinite(lr) || lr <= 0 || lr > 10) {
        return Bad(p, absl::StrCat("must be in (0, 10] (got ", Describe(v),
                                   ")"));
      }
      if (k == "lr") {
        t.lr = lr;
        t.lr_set = true;
      } else {
        t.minmax_lr = lr;
        t.minmax_lr_set = true;
      }
    } else if (k == "seed") {
      ASSIGN_OR_RETURN(t.seed, GetInt32(v, p));
    } else if (k == "enable_minmax_tuning") {
      ASSIGN_OR_RETURN(t.enable_minmax_tuning, GetBool(v, p));
    } else if (k == "enable_quanted_input") {
      ASSIGN_OR_RETURN(t.enable_quanted_input, GetBool(v, p));
    } else if (k == "not_use_best_mse") {
      ASSIGN_OR_RETURN(t.not_use_best_mse, GetBool(v, p));
    } else if (k == "compute_dtype") {
      ASSIGN_OR_RETURN(c->compute_dtype, GetString(v, p));
      if (c->compute_dtype.empty()) c->compute_dtype = "auto";
      if (c->compute_dtype != "auto" && c->compute_dtype != "float32" &&
          c->compute_dtype != "bfloat16" && c->compute_dtype != "float16") {
        return Bad(p, absl::StrCat("must be one of \"auto\", \"float32\", "
                                   "\"bfloat16\", \"float16\" (got ",
                                   Describe(v), ")"));
      }
    } else if (k == "deterministic") {
      ASSIGN_OR_RETURN(c->deterministic, GetBool(v, p));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseLayerConfig(const json& v, JobConfig* c) {
  if (!v.is_array()) {
    return Bad("layer_config", absl::StrCat("must be a list (got ",
                                            Describe(v), ")"));
  }
  static const std::set<std::string> kKnown = {"name", "bits", "group_size",
                                               "sym"};
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string base = absl::StrCat("layer_config[", i, "]");
    ASSIGN_OR_RETURN(json e, Normalize(v[i], base, kKnown));
    LayerRule rule;
    if (!e.contains("name") || !e["name"].is_string() ||
        e["name"].get<std::string>().empty()) {
      return Bad(base + ".name", "must be a non-empty string");
    }
    rule.pattern = e["name"].get<std::string>();
    if (e.contains("bits")) {
      ASSIGN_OR_RETURN(int bits, GetInt32(e["bits"], base + ".bits"));
      RETURN_IF_ERROR(CheckBits(bits, base + ".bits", /*allow16=*/true));
      rule.bits = bits;
    }
    if (e.contains("group_size")) {
      ASSIGN_OR_RETURN(int g, GetInt32(e["group_size"], base + ".group_size"));
      RETURN_IF_ERROR(CheckGroup(g, base + ".group_size"));
      rule.group_size = g;
    }
    if (e.contains("sym")) {
      ASSIGN_OR_RETURN(bool sym, GetBool(e["sym"], base + ".sym"));
      rule.sym = sym;
    }
    c->layer_config.push_back(std::move(rule));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ParseStringList(
    const json& v, const std::string& path) {
  if (!v.is_array()) {
    return Bad(path, absl::StrCat("must be a list of strings (got ",
                                  Describe(v), ")"));
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = absl::StrCat(path, "[", i, "]");
    ASSIGN_OR_RETURN(std::string s, GetString(v[i], p));
    if (s.empty()) return Bad(p, "must not be empty");
    out.push_back(std::move(s));
  }
  return out;
}

absl::Status ParseCalibration(const json& in, JobConfig* c,
                              std::set<std::string>* given) {
  static const std::set<std::string> kKnown = {
      "path", "format", "field", "selection", "stratify_column",
      "template", "allow_fewer_samples", "drop_short", "preset",
      "query_prefix"};
  ASSIGN_OR_RETURN(json s, Normalize(in, "calibration", kKnown));
  for (auto it = s.begin(); it != s.end(); ++it) given->insert(it.key());
  CalibrationConfig& cal = c->calibration;
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    const std::string p = "calibration." + k;
    const json& v = it.value();
    if (k == "allow_fewer_samples") {
      ASSIGN_OR_RETURN(cal.allow_fewer_samples, GetBool(v, p));
      continue;
    }
    if (k == "drop_short") {
      ASSIGN_OR_RETURN(cal.drop_short, GetBool(v, p));
      continue;
    }
    ASSIGN_OR_RETURN(std::string str, GetString(v, p));
    if (k == "path") {
      cal.path = str;
    } else if (k == "format") {
      if (!str.empty() && str != "jsonl" && str != "text" && str != "dir") {
        return Bad(p, absl::StrCat("must be one of \"jsonl\", \"text\", "
                                   "\"dir\" (got ", Describe(v), ")"));
      }
      cal.format = str;
    } else if (k == "field") {
      cal.field = str;
    } else if (k == "selection") {
      if (str.empty()) str = "random";
      if (str != "random" && str != "stratified") {
        return Bad(p, absl::StrCat("must be \"random\" or \"stratified\" "
                                   "(got ", Describe(v), ")"));
      }
      cal.selection = str;
    } else if (k == "stratify_column") {
      cal.stratify_column = str;
    } else if (k == "query_prefix") {
      cal.query_prefix = str;
    } else if (k == "preset") {
      if (!str.empty() && str != "colpali_train_set") {
        return Bad(p, absl::StrCat("must be \"colpali_train_set\" or empty "
                                   "(got ", Describe(v), ")"));
      }
      cal.preset = str;
    } else if (k == "template") {
      if (str.empty()) str = "raw";
      if (str != "raw" && str != "colqwen3_query" && str != "pack") {
        return Bad(p, absl::StrCat("must be one of \"raw\", "
                                   "\"colqwen3_query\", \"pack\" (got ",
                                   Describe(v), ")"));
      }
      cal.templ = str;
    }
  }
  return absl::OkStatus();
}

// calibration.preset "colpali_train_set" (the ColQwen3 plan, models.md §3):
// fills every field the spec did not set explicitly.
void ApplyPreset(const std::set<std::string>& scheme_given,
                 const std::set<std::string>& cal_given, JobConfig* c) {
  CalibrationConfig& cal = c->calibration;
  if (cal.preset != "colpali_train_set") return;
  if (!cal_given.count("field")) cal.field = "query";
  if (!cal_given.count("selection")) cal.selection = "stratified";
  if (!cal_given.count("stratify_column")) cal.stratify_column = "source";
  if (!cal_given.count("template")) cal.templ = "colqwen3_query";
  if (!scheme_given.count("nsamples")) c->nsamples = 256;
  if (!scheme_given.count("seqlen")) c->seqlen = 512;
  if (!scheme_given.count("seed")) c->tune.seed = 42;
}

absl::Status ParseEvaluation(const json& in, JobConfig* c) {
  static const std::set<std::string> kKnown = {
      "enabled", "min_token_cosine_similarity", "eval_samples", "eval_path",
      "min_recall_at_1"};
  ASSIGN_OR_RETURN(json s, Normalize(in, "evaluation", kKnown));
  EvaluationConfig& e = c->evaluation;
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    const std::string p = "evaluation." + k;
    const json& v = it.value();
    if (k == "enabled") {
      ASSIGN_OR_RETURN(e.enabled, GetBool(v, p));
    } else if (k == "min_token_cosine_similarity") {
      ASSIGN_OR_RETURN(e.min_token_cosine_similarity, GetDouble(v, p));
      if (!(e.min_token_cosine_similarity >= -1.0 &&
            e.min_token_cosine_similarity <= 1.0)) {
        return Bad(p, absl::StrCat("must be in [-1, 1] (got ", Describe(v),
                                   ")"));
      }
    } else if (k == "eval_samples") {
      ASSIGN_OR_RETURN(e.eval_samples, GetInt32(v, p));
      if (e.eval_samples < 1 || e.eval_samples > 100000) {
        return Bad(p, absl::StrCat("must be in [1, 100000] (got ",
                                   e.eval_samples, ")"));
      }
      e.eval_samples_set = true;
    } else if (k == "eval_path") {
      ASSIGN_OR_RETURN(e.eval_path, GetString(v, p));
    } else if (k == "min_recall_at_1") {
      ASSIGN_OR_RETURN(e.min_recall_at_1, GetDouble(v, p));
      if (!(e.min_recall_at_1 >= 0.0 && e.min_recall_at_1 <= 1.0)) {
        return Bad(p, absl::StrCat("must be in [0, 1] (got ", Describe(v),
                                   ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobConfig> ParseJobConfig(const json& spec) {
  static const std::set<std::string> kKnown = {
      "model", "scheme", "layer_config", "calibration", "export_formats",
      "evaluation", "priority", "deadline_seconds", "labels", "max_retries",
      "allow_low_memory_retry", "resources", "ignore_layers"};
  ASSIGN_OR_RETURN(json s, Normalize(spec, "", kKnown));
  JobConfig c;
  c.raw = spec;
  std::set<std::string> scheme_given, cal_given;
  if (s.contains("scheme")) {
    RETURN_IF_ERROR(ParseScheme(s["scheme"], &c, &scheme_given));
  }
  if (s.contains("layer_config")) {
    RETURN_IF_ERROR(ParseLayerConfig(s["layer_config"], &c));
  }
  if (s.contains("ignore_layers")) {
    ASSIGN_OR_RETURN(c.ignore_layers,
                     ParseStringList(s["ignore_layers"], "ignore_layers"));
  }
  if (s.contains("calibration")) {
    RETURN_IF_ERROR(ParseCalibration(s["calibration"], &c, &cal_given));
  }
  ApplyPreset(scheme_given, cal_given, &c);
  if (c.calibration.selection == "stratified" &&
      c.calibration.stratify_column.empty()) {
    return Bad("calibration.stratify_column",
               "required when calibration.selection is \"stratified\"");
  }
  if (c.calibration.path.empty()) {
    return Bad("calibration.path",
               "required (a JSON Lines or text file, or a directory; "
               "relative paths are resolved against the model directory)");
  }
  if (s.contains("export_formats")) {
    ASSIGN_OR_RETURN(std::vector<std::string> formats,
                     ParseStringList(s["export_formats"], "export_formats"));
    if (!formats.empty()) {
      std::set<std::string> seen;
      for (size_t i = 0; i < formats.size(); ++i) {
        const std::string p = absl::StrCat("export_formats[", i, "]");
        if (formats[i] != "auto_round" && formats[i] != "auto_gptq" &&
            formats[i] != "auto_awq") {
          return Bad(p, absl::StrCat("must be one of \"auto_round\", "
                                     "\"auto_gptq\", \"auto_awq\" (got \"",
                                     formats[i], "\")"));
        }
        if (!seen.insert(formats[i]).second) {
          return Bad(p, absl::StrCat("\"", formats[i], "\" listed twice"));
        }
      }
      c.export_formats = formats;
    }
  }
  if (s.contains("evaluation")) {
    RETURN_IF_ERROR(ParseEvaluation(s["evaluation"], &c));
  }

  // Defaults that depend on other fields (autoround-spec §1.4, §3.1).
  TuningConfig& t = c.tune;
  if (!t.lr_set) t.lr = t.iters > 0 ? 1.0 / t.iters : 5e-3;
  if (!t.minmax_lr_set) t.minmax_lr = t.lr;
  if (t.batch_size > c.nsamples) t.batch_size = c.nsamples;

  // The AWQ layout needs 4-bit asymmetric weights (autoround-spec §4.3).
  for (const std::string& f : c.export_formats) {
    if (f != "auto_awq") continue;
    if (c.global.bits != 4 || c.global.sym) {
      return Bad("export_formats",
                 "\"auto_awq\" needs scheme.bits = 4 and scheme.sym = false");
    }
    for (size_t i = 0; i < c.layer_config.size(); ++i) {
      const LayerRule& r = c.layer_config[i];
      if ((r.bits && *r.bits != 4 && *r.bits != 16) || (r.sym && *r.sym)) {
        return Bad(absl::StrCat("layer_config[", i, "]"),
                   "\"auto_awq\" export needs every quantized layer 4-bit "
                   "asymmetric");
      }
    }
  }
  return c;
}

absl::StatusOr<JobConfig> ParseJobConfigText(std::string_view text) {
  json spec = json::parse(text.begin(), text.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (spec.is_discarded()) {
    // Re-parse with exceptions for the position of the syntax error.
    try {
      json ignored = json::parse(text.begin(), text.end());
      (void)ignored;
    } catch (const json::parse_error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec: not valid JSON: ", e.what()));
    }
    return absl::InvalidArgumentError("spec: not valid JSON");
  }
  return ParseJobConfig(spec);
}

json ResolvedSpecJson(const JobConfig& c) {
  json j;
  j["scheme"] = {
      {"bits", c.global.bits},
      {"group_size", c.global.group_size},
      {"sym", c.global.sym},
      {"iters", c.tune.iters},
      {"nsamples", c.nsamples},
      {"seqlen", c.seqlen},
      {"batch_size", c.tune.batch_size},
      {"gradient_accumulate_steps", c.tune.gradient_accumulate_steps},
      {"lr", c.tune.lr},
      {"minmax_lr", c.tune.minmax_lr},
      {"seed", c.tune.seed},
      {"enable_minmax_tuning", c.tune.enable_minmax_tuning},
      {"enable_quanted_input", c.tune.enable_quanted_input},
      {"not_use_best_mse", c.tune.not_use_best_mse},
      {"compute_dtype", c.compute_dtype},
      {"deterministic", c.deterministic}};
  json rules = json::array();
  for (const LayerRule& r : c.layer_config) {
    json e = {{"name", r.pattern}};
    if (r.bits) e["bits"] = *r.bits;
    if (r.group_size) e["group_size"] = *r.group_size;
    if (r.sym) e["sym"] = *r.sym;
    rules.push_back(e);
  }
  j["layer_config"] = rules;
  j["ignore_layers"] = c.ignore_layers;
  const CalibrationConfig& cal = c.calibration;
  j["calibration"] = {{"path", cal.path},
                      {"format", cal.format},
                      {"field", cal.field},
                      {"selection", cal.selection},
                      {"stratify_column", cal.stratify_column},
                      {"template", cal.templ},
                      {"allow_fewer_samples", cal.allow_fewer_samples},
                      {"drop_short", cal.drop_short},
                      {"query_prefix", cal.query_prefix}};
  j["export_formats"] = c.export_formats;
  j["evaluation"] = {
      {"enabled", c.evaluation.enabled},
      {"min_token_cosine_similarity", c.evaluation.min_token_cosine_similarity},
      {"eval_samples", c.evaluation.eval_samples},
      {"eval_path", c.evaluation.eval_path},
      {"min_recall_at_1", c.evaluation.min_recall_at_1}};
  return j;
}

}  // namespace roundhouse::engine
