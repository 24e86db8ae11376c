#include "client/spec_merge.h"

#include "absl/strings/str_cat.h"

namespace roundhouse::client {

namespace {

using json = nlohmann::json;

// Returns the object at `key`, creating it; error if the file put a
// non-object there.
absl::StatusOr<json*> ObjectAt(json& parent, const char* key) {
  json& child = parent[key];
  if (child.is_null()) child = json::object();
  if (!child.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec key '", key, "' must be an object to apply command-line flags"));
  }
  return &child;
}

}  // namespace

absl::StatusOr<json> MergeSpec(const json& base, const SpecOverrides& o) {
  json spec = base.is_null() ? json::object() : base;
  if (!spec.is_object()) {
    return absl::InvalidArgumentError("the job spec must be a JSON object");
  }
  if (o.model) spec["model"] = *o.model;
  if (o.priority) spec["priority"] = *o.priority;
  if (o.deadline_seconds) spec["deadline_seconds"] = *o.deadline_seconds;
  const bool any_scheme = o.bits || o.group_size || o.sym || o.iters ||
                          o.nsamples || o.seqlen || o.batch_size || o.seed;
  if (any_scheme) {
    absl::StatusOr<json*> scheme = ObjectAt(spec, "scheme");
    if (!scheme.ok()) return scheme.status();
    json& s = **scheme;
    if (o.bits) s["bits"] = *o.bits;
    if (o.group_size) s["group_size"] = *o.group_size;
    if (o.sym) s["sym"] = *o.sym;
    if (o.iters) s["iters"] = *o.iters;
    if (o.nsamples) s["nsamples"] = *o.nsamples;
    if (o.seqlen) s["seqlen"] = *o.seqlen;
    if (o.batch_size) s["batch_size"] = *o.batch_size;
    if (o.seed) s["seed"] = *o.seed;
  }
  if (!o.labels.empty()) {
    absl::StatusOr<json*> labels = ObjectAt(spec, "labels");
    if (!labels.ok()) return labels.status();
    for (const auto& [k, v] : o.labels) (**labels)[k] = v;
  }
  if (!o.formats.empty()) spec["export_formats"] = o.formats;
  if (o.calibration_path) {
    absl::StatusOr<json*> calibration = ObjectAt(spec, "calibration");
    if (!calibration.ok()) return calibration.status();
    (**calibration)["path"] = *o.calibration_path;
  }
  return spec;
}

}  // namespace roundhouse::client
