#include "server/core/spec_validation.h"

#include <cmath>
#include <regex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace roundhouse::server {
namespace {

using roundhouse::v1::JobSpec;

absl::Status Invalid(absl::string_view field, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", reason));
}

absl::Status CheckOneOf(absl::string_view field, int value,
                        std::initializer_list<int> allowed) {
  for (int a : allowed) {
    if (a == value) return absl::OkStatus();
  }
  return Invalid(field, absl::StrCat(value, " is not one of ",
                                     absl::StrJoin(allowed, ", ")));
}

absl::Status CheckStringOneOf(absl::string_view field,
                              const std::string& value,
                              std::initializer_list<const char*> allowed) {
  for (const char* a : allowed) {
    if (value == a) return absl::OkStatus();
  }
  std::vector<std::string> quoted;
  for (const char* a : allowed) quoted.push_back(absl::StrCat("\"", a, "\""));
  return Invalid(field, absl::StrCat("\"", value, "\" is not one of ",
                                     absl::StrJoin(quoted, ", ")));
}

absl::Status CheckRegex(absl::string_view field, const std::string& pattern) {
  if (pattern.empty()) return Invalid(field, "must not be empty");
  try {
    std::regex re(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return Invalid(field, absl::StrCat("invalid regex \"", pattern,
                                       "\": ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(absl::string_view field, double v, double min) {
  if (!std::isfinite(v)) return Invalid(field, "must be a finite number");
  if (v < min) return Invalid(field, absl::StrCat(v, " is below ", min));
  return absl::OkStatus();
}

absl::Status ValidateScheme(const roundhouse::v1::QuantScheme& s) {
  if (s.has_bits()) {
    RETURN_IF_ERROR(CheckOneOf("scheme.bits", s.bits(), {2, 3, 4, 8}));
  }
  if (s.has_group_size()) {
    RETURN_IF_ERROR(
        CheckOneOf("scheme.group_size", s.group_size(), {32, 64, 128, -1}));
  }
  if (s.has_iters() && s.iters() < 0) {
    return Invalid("scheme.iters", absl::StrCat(s.iters(), " is negative"));
  }
  struct Positive {
    const char* name;
    bool has;
    int value;
  };
  for (const Positive& p :
       {Positive{"scheme.nsamples", s.has_nsamples(), s.nsamples()},
        Positive{"scheme.seqlen", s.has_seqlen(), s.seqlen()},
        Positive{"scheme.batch_size", s.has_batch_size(), s.batch_size()},
        Positive{"scheme.gradient_accumulate_steps",
                 s.has_gradient_accumulate_steps(),
                 s.gradient_accumulate_steps()}}) {
    if (p.has && p.value <= 0) {
      return Invalid(p.name, absl::StrCat(p.value, " must be > 0"));
    }
  }
  if (s.has_lr()) RETURN_IF_ERROR(CheckFinite("scheme.lr", s.lr(), 0));
  if (s.has_minmax_lr()) {
    RETURN_IF_ERROR(CheckFinite("scheme.minmax_lr", s.minmax_lr(), 0));
  }
  if (s.has_compute_dtype()) {
    RETURN_IF_ERROR(CheckStringOneOf("scheme.compute_dtype", s.compute_dtype(),
                                     {"float32", "bfloat16", "float16",
                                      "auto"}));
  }
  return absl::OkStatus();
}

absl::Status ValidateCalibration(const roundhouse::v1::CalibrationSpec& c,
                                 const std::string& model_path) {
  if (!c.format().empty()) {
    RETURN_IF_ERROR(CheckStringOneOf("calibration.format", c.format(),
                                     {"jsonl", "text", "dir"}));
  }
  if (!c.selection().empty()) {
    RETURN_IF_ERROR(CheckStringOneOf("calibration.selection", c.selection(),
                                     {"random", "stratified"}));
  }
  if (!c.preset().empty()) {
    RETURN_IF_ERROR(CheckStringOneOf("calibration.preset", c.preset(),
                                     {"colpali_train_set"}));
  }
  if (c.selection() == "stratified" && c.stratify_column().empty() &&
      c.preset().empty()) {
    return Invalid("calibration.stratify_column",
                   "required when selection is \"stratified\"");
  }
  if (!c.template_().empty()) {
    RETURN_IF_ERROR(CheckStringOneOf("calibration.template", c.template_(),
                                     {"raw", "colqwen3_query", "pack"}));
  }
  if (!c.path().empty()) {
    std::string path = c.path()[0] == '/'
                           ? c.path()
                           : JoinPath(model_path, c.path());
    if (!PathExists(path)) {
      return Invalid("calibration.path",
                     absl::StrCat(path, " does not exist"));
    }
  }
  return absl::OkStatus();
}

// Hugging Face repo ids: ORG and NAME of letters, digits, '-', '_', '.'.
bool IsRepoPart(absl::string_view s) {
  if (s.empty() || s == "." || s == "..") return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::string> ResolveHf(const ModelResolverOptions& options,
                                      absl::string_view ref) {
  if (options.hf_cache.empty()) {
    return Invalid("model", absl::StrCat("hf://", ref,
                                         ": no --hf-cache is configured"));
  }
  std::string revision = "main";
  absl::string_view repo = ref;
  size_t at = ref.find('@');
  if (at != absl::string_view::npos) {
    revision = std::string(ref.substr(at + 1));
    repo = ref.substr(0, at);
  }
  std::vector<absl::string_view> parts = absl::StrSplit(repo, '/');
  if (parts.size() != 2 || !IsRepoPart(parts[0]) || !IsRepoPart(parts[1])) {
    return Invalid("model", absl::StrCat("hf://", ref,
                                         " is not hf://ORG/NAME[@REVISION]"));
  }
  if (revision.empty() || absl::StrContains(revision, "..") ||
      absl::StartsWith(revision, "/")) {
    return Invalid("model", absl::StrCat("hf://", ref, ": bad revision"));
  }
  std::string repo_dir = JoinPath(
      options.hf_cache,
      absl::StrCat("models--", parts[0], "--", parts[1]));
  if (!IsDirectory(repo_dir)) {
    return Invalid("model", absl::StrCat("hf://", ref, ": ", repo_dir,
                                         " is not in the hub cache"));
  }
  std::string commit;
  std::string ref_file = JoinPath(JoinPath(repo_dir, "refs"), revision);
  if (PathExists(ref_file) && !IsDirectory(ref_file)) {
    ASSIGN_OR_RETURN(std::string content, ReadFile(ref_file));
    commit = std::string(absl::StripAsciiWhitespace(content));
  } else {
    commit = revision;  // a commit hash given directly
  }
  std::string snapshot =
      JoinPath(JoinPath(repo_dir, "snapshots"), commit);
  if (!IsDirectory(snapshot)) {
    return Invalid("model", absl::StrCat("hf://", ref, ": revision ",
                                         revision, " has no snapshot ",
                                         snapshot));
  }
  auto real = RealPath(snapshot);
  if (!real.ok()) return Invalid("model", real.status().message());
  auto real_cache = RealPath(options.hf_cache);
  if (!real_cache.ok() || !IsWithin(*real, *real_cache)) {
    return Invalid("model", absl::StrCat("hf://", ref, ": snapshot ", *real,
                                         " is outside the hub cache"));
  }
  if (!PathExists(JoinPath(*real, "config.json"))) {
    return Invalid("model", absl::StrCat("hf://", ref, " (", *real,
                                         ") has no config.json"));
  }
  return *real;
}

}  // namespace

absl::StatusOr<std::string> ResolveModel(const ModelResolverOptions& options,
                                         const std::string& model) {
  if (model.empty()) return Invalid("model", "required");
  if (absl::StartsWith(model, "hf://")) {
    return ResolveHf(options, absl::string_view(model).substr(5));
  }
  if (options.model_roots.empty()) {
    return Invalid("model", "no --model-root is configured");
  }
  std::string path =
      model[0] == '/' ? model : JoinPath(options.model_roots[0], model);
  if (!PathExists(path)) {
    return Invalid("model", absl::StrCat("path ", path, " does not exist"));
  }
  auto real = RealPath(path);
  if (!real.ok()) return Invalid("model", real.status().message());
  bool inside = false;
  for (const std::string& root : options.model_roots) {
    auto real_root = RealPath(root);
    if (real_root.ok() && IsWithin(*real, *real_root)) {
      inside = true;
      break;
    }
  }
  if (!inside) {
    return Invalid("model",
                   absl::StrCat("path ", *real,
                                " is outside the configured model roots"));
  }
  if (!IsDirectory(*real)) {
    return Invalid("model", absl::StrCat(*real, " is not a directory"));
  }
  if (!PathExists(JoinPath(*real, "config.json"))) {
    return Invalid("model", absl::StrCat(*real, " has no config.json"));
  }
  return *real;
}

absl::StatusOr<JobSpec> ParseSpecJson(const std::string& json) {
  JobSpec spec;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(json, &spec, opts);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: ", std::string(status.message())));
  }
  return spec;
}

absl::StatusOr<ValidatedSpec> ValidateSpec(const ModelResolverOptions& options,
                                           JobSpec spec) {
  RETURN_IF_ERROR(ValidateScheme(spec.scheme()));
  for (int i = 0; i < spec.layer_config_size(); ++i) {
    const auto& lc = spec.layer_config(i);
    std::string field = absl::StrCat("layer_config[", i, "]");
    RETURN_IF_ERROR(CheckRegex(absl::StrCat(field, ".name"), lc.name()));
    if (lc.has_bits()) {
      RETURN_IF_ERROR(
          CheckOneOf(absl::StrCat(field, ".bits"), lc.bits(), {2, 3, 4, 8, 16}));
    }
    if (lc.has_group_size()) {
      RETURN_IF_ERROR(CheckOneOf(absl::StrCat(field, ".group_size"),
                                 lc.group_size(), {32, 64, 128, -1}));
    }
  }
  for (int i = 0; i < spec.ignore_layers_size(); ++i) {
    RETURN_IF_ERROR(CheckRegex(absl::StrCat("ignore_layers[", i, "]"),
                               spec.ignore_layers(i)));
  }
  std::set<std::string> formats;
  for (int i = 0; i < spec.export_formats_size(); ++i) {
    const std::string& f = spec.export_formats(i);
    std::string field = absl::StrCat("export_formats[", i, "]");
    RETURN_IF_ERROR(
        CheckStringOneOf(field, f, {"auto_round", "auto_gptq", "auto_awq"}));
    if (!formats.insert(f).second) {
      return Invalid(field, absl::StrCat("\"", f, "\" is listed twice"));
    }
    int bits = spec.scheme().has_bits() ? spec.scheme().bits() : 4;
    bool sym = spec.scheme().has_sym() ? spec.scheme().sym() : true;
    if (f == "auto_awq" && (bits != 4 || sym)) {
      return Invalid(field,
                     "auto_awq requires a 4-bit asymmetric scheme "
                     "(scheme.bits 4, scheme.sym false)");
    }
  }
  const auto& ev = spec.evaluation();
  if (ev.has_min_token_cosine_similarity()) {
    double v = ev.min_token_cosine_similarity();
    if (!std::isfinite(v) || v < -1 || v > 1) {
      return Invalid("evaluation.min_token_cosine_similarity",
                     absl::StrCat(v, " is outside [-1, 1]"));
    }
  }
  if (ev.has_min_recall_at_1()) {
    double v = ev.min_recall_at_1();
    if (!std::isfinite(v) || v < 0 || v > 1) {
      return Invalid("evaluation.min_recall_at_1",
                     absl::StrCat(v, " is outside [0, 1]"));
    }
  }
  if (ev.has_eval_samples() && ev.eval_samples() <= 0) {
    return Invalid("evaluation.eval_samples",
                   absl::StrCat(ev.eval_samples(), " must be > 0"));
  }
  if (spec.priority() < 0 || spec.priority() > 100) {
    return Invalid("priority",
                   absl::StrCat(spec.priority(), " is outside 0..100"));
  }
  if (spec.priority() == 0) spec.set_priority(50);  // proto3: 0 = unset
  RETURN_IF_ERROR(
      CheckFinite("deadline_seconds", spec.deadline_seconds(), 0));
  if (spec.has_max_retries() &&
      (spec.max_retries() < 0 || spec.max_retries() > 100)) {
    return Invalid("max_retries",
                   absl::StrCat(spec.max_retries(), " is outside 0..100"));
  }
  for (const auto& [k, v] : spec.labels()) {
    if (k.empty() || k.size() > 128) {
      return Invalid("labels", absl::StrCat("key \"", k,
                                            "\" must have 1..128 characters"));
    }
    if (v.size() > 256) {
      return Invalid(absl::StrCat("labels[", k, "]"),
                     "value is longer than 256 characters");
    }
  }
  const auto& res = spec.resources();
  RETURN_IF_ERROR(CheckStringOneOf("resources.device", res.device(),
                                   {"", "any", "cpu", "cuda"}));
  if (res.min_memory_bytes() < 0) {
    return Invalid("resources.min_memory_bytes", "is negative");
  }
  if (res.gpu_count() < 0) return Invalid("resources.gpu_count", "is negative");
  if (res.gpu_count() > 0 && res.device() == "cpu") {
    return Invalid("resources.gpu_count", "set for a cpu job");
  }
  ValidatedSpec out;
  ASSIGN_OR_RETURN(out.model_path, ResolveModel(options, spec.model()));
  RETURN_IF_ERROR(ValidateCalibration(spec.calibration(), out.model_path));
  if (!ev.eval_path().empty()) {
    std::string path = ev.eval_path()[0] == '/'
                           ? ev.eval_path()
                           : JoinPath(out.model_path, ev.eval_path());
    if (!PathExists(path)) {
      return Invalid("evaluation.eval_path",
                     absl::StrCat(path, " does not exist"));
    }
  }
  out.spec = std::move(spec);
  return out;
}

}  // namespace roundhouse::server
