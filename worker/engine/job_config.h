#ifndef ROUNDHOUSE_WORKER_ENGINE_JOB_CONFIG_H_
#define ROUNDHOUSE_WORKER_ENGINE_JOB_CONFIG_H_

// The engine's view of a job spec: the JSON form of roundhouse.v1.JobSpec
// (keys are the proto field names, snake_case; the lowerCamelCase spelling
// protobuf's JSON printer uses without preserve_proto_field_names is accepted
// too) parsed with nlohmann::json, validated, and completed with the
// reference defaults (intel/auto-round 0.15.0, autoround-spec §3.1).
//
// Every invalid value yields absl::InvalidArgumentError whose message starts
// with the JSON path of the offending field, e.g.
//   "scheme.bits: must be one of 2, 3, 4, 8 (got -1)"
//   "layer_config[1].name: must be a non-empty string"
//   "scheme.bitz: unknown field"
// Coordinator-side fields (model, priority, deadline_seconds, labels,
// max_retries, allow_low_memory_retry, resources) are accepted and ignored.
//
// Thread-compatible: pure functions of their arguments.

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/layer_config.h"
#include "worker/engine/quantizer.h"

namespace roundhouse::engine {

// scheme.* tuning knobs (autoround-spec §1.4-§1.6), defaults resolved.
struct TuningConfig {
  int iters = 200;                    // 0 = round-to-nearest only
  int batch_size = 8;                 // capped to nsamples
  int gradient_accumulate_steps = 1;
  double lr = 1.0 / 200;              // [1/iters]; 5e-3 when iters == 0
  double minmax_lr = 1.0 / 200;       // [lr]
  bool lr_set = false;                // lr given explicitly in the spec
  bool minmax_lr_set = false;         // minmax_lr given explicitly
  int seed = 42;
  bool enable_minmax_tuning = true;
  bool enable_quanted_input = true;
  bool not_use_best_mse = false;
};

// calibration.* (CalibrationSpec).
struct CalibrationConfig {
  std::string path;    // required; relative paths are relative to the model
  std::string format;  // "" = guess from the path
  std::string field;   // "" = "input_ids" when present, else "text"
  std::string selection = "random";  // or "stratified"
  std::string stratify_column;
  std::string templ = "raw";  // "raw", "colqwen3_query", "pack"
  bool allow_fewer_samples = false;
  bool drop_short = false;
  // "" or "colpali_train_set": field "query", stratified by "source",
  // colqwen3_query template, and (unless set in scheme) nsamples 256,
  // seqlen 512, seed 42. Explicit fields win. Already applied by
  // ParseJobConfig.
  std::string preset;
  std::string query_prefix;  // colqwen3_query template only
};

// evaluation.* (EvaluationSpec).
struct EvaluationConfig {
  bool enabled = true;
  double min_token_cosine_similarity = 0.95;  // in [-1, 1]
  int eval_samples = 16;                      // > 0 when enabled
  bool eval_samples_set = false;              // given explicitly
  std::string eval_path;  // "" = held-out split of the calibration source
  // ColQwen3 retrieval gate (docs/evaluation.md), in [0, 1]; 0 = off.
  double min_recall_at_1 = 0;
};

struct JobConfig {
  QuantParams global;  // scheme.bits / group_size / sym
  TuningConfig tune;
  int nsamples = 128;
  int seqlen = 2048;
  std::vector<LayerRule> layer_config;
  std::vector<std::string> ignore_layers;
  CalibrationConfig calibration;
  std::vector<std::string> export_formats = {"auto_round"};
  EvaluationConfig evaluation;
  // "auto" (fp32 on CPU, the checkpoint dtype on CUDA), "float32",
  // "bfloat16", "float16".
  std::string compute_dtype = "auto";
  bool deterministic = true;
  // The spec as given.
  nlohmann::json raw;
};

// Parses and validates a JobSpec JSON object.
absl::StatusOr<JobConfig> ParseJobConfig(const nlohmann::json& spec);
// Same from text; a JSON syntax error is InvalidArgument with its position.
absl::StatusOr<JobConfig> ParseJobConfigText(std::string_view text);

// The fully resolved settings that determine the engine's output, as a
// canonical JSON object (every default filled in, coordinator-side fields
// left out). Used for the checkpoint fingerprint and recorded in the
// manifest: two specs with equal ResolvedSpecJson produce the same bytes.
nlohmann::json ResolvedSpecJson(const JobConfig& config);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_JOB_CONFIG_H_
