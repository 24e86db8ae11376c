#ifndef ROUNDHOUSE_SERVER_CORE_SPEC_VALIDATION_H_
#define ROUNDHOUSE_SERVER_CORE_SPEC_VALIDATION_H_

// Validation of job specs and resolution of model references.
//
// Every error is INVALID_ARGUMENT and names the field and the reason, e.g.
// "scheme.bits: 5 is not one of 2, 3, 4, 8" or
// "layer_config[1].name: invalid regex ...". Functions are thread-safe (they
// only read the file system).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "roundhouse/v1/roundhouse.pb.h"

namespace roundhouse::server {

struct ModelResolverOptions {
  // Local model folders must lie inside one of these (canonicalised).
  // Relative model paths are taken relative to the first root.
  std::vector<std::string> model_roots;
  // Shared Hugging Face hub cache (models--ORG--NAME/{refs,snapshots}) used
  // for "hf://ORG/NAME[@REVISION]" references; empty = hf:// refused.
  std::string hf_cache;
};

// Resolves `model` (a local folder or hf:// reference) to the canonical
// absolute directory holding config.json.
absl::StatusOr<std::string> ResolveModel(const ModelResolverOptions& options,
                                         const std::string& model);

// Parses a spec given as JSON (proto field names; unknown keys are rejected:
// "spec: ..." naming the key).
absl::StatusOr<roundhouse::v1::JobSpec> ParseSpecJson(const std::string& json);

struct ValidatedSpec {
  roundhouse::v1::JobSpec spec;  // priority defaulted (0 -> 50)
  std::string model_path;        // canonical absolute model directory
};

// Checks every field of `spec`, resolves the model and the calibration path.
absl::StatusOr<ValidatedSpec> ValidateSpec(const ModelResolverOptions& options,
                                           roundhouse::v1::JobSpec spec);

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_CORE_SPEC_VALIDATION_H_
