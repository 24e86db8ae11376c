#ifndef ROUNDHOUSE_WORKER_ENGINE_DELIVERABLE_H_
#define ROUNDHOUSE_WORKER_ENGINE_DELIVERABLE_H_

// The deliverable folder a team publishes to a model hub: next to the
// exported checkpoint (and test_results.json, written by the evaluation
// stage) WriteDeliverable adds
//
//   README.md                 model card: YAML front matter for the hub
//                             (base_model when the spec's model is a hub id,
//                             library_name, tags; no license: the engine
//                             cannot know it), base model, method and
//                             configuration, per-layer overrides and
//                             unquantized layers, calibration recipe, the
//                             evaluation results table, on-disk size, how to
//                             load it (transformers, auto-round, vLLM),
//                             limitations, provenance.
//   quantization_config.json  the "quantization_config" object of the
//                             exported config.json, byte-identical to what
//                             the exporter wrote (one per format directory
//                             when several formats were exported).
//   .gitattributes            Git LFS for *.safetensors, *.bin, *.gguf, *.pt
//                             and for any other file over 10 MiB (the hub
//                             refuses larger plain-git files).
//
// Call order (pipeline.cc): after export and evaluation, with the STAGING
// directory, before manifest.json is written and the directory renamed, so
// the manifest hashes these files too.
//
// Determinism: every file is a pure function of (manifest, test_results,
// the files already in the directory): no clock, no host name, no absolute
// paths other than those inside the inputs. Figures that vary between runs
// (throughput, wall time, peak memory) appear in the card only when
// test_results carries them; such a card differs between two runs exactly
// where test_results.json does.
//
// Inputs:
//   manifest      the manifest body pipeline.cc builds (before "files" is
//                 added): "spec" (the job spec as given, "model" required),
//                 "resolved_spec" (job_config.h ResolvedSpecJson; "scheme"
//                 required), "formats" ({format: {"directory",
//                 "packing_format"}}, required, non-empty), "layers"
//                 ([{name, quantized, bits, group_size, sym | reason}]),
//                 "inputs" (calibration_sha256, calibration_samples),
//                 "versions", "model_family", "device", "compute_dtype",
//                 "evaluation" (the summary). Optional keys are omitted from
//                 the card when absent.
//   test_results  the object written to test_results.json. The card reads
//                 (all optional):
//                   "evaluation": {"enabled": bool, "passed": bool,
//                                  "message": str, "source": str,
//                                  "samples": int, "tokens": int}
//                   "gate" or "thresholds": {name: number} (shown as is)
//                   "metrics": {name: number | {sub: number | {...}}}
//                 Every numeric leaf of "metrics" becomes one row of the
//                 results table (known names get readable labels and units:
//                 *_bytes as sizes, *_seconds, *_per_second; a pair
//                 {"fp": x, "quantized": y} becomes one row with both
//                 columns). When "metrics" is absent, the numeric fields of
//                 test_results["evaluation"], else of manifest["evaluation"],
//                 are tabulated the same way. Nothing else is invented: a
//                 metric absent from the inputs is absent from the card.
//
// Errors: InvalidArgument naming the field ("manifest.resolved_spec.scheme.
// bits: expected an integer") for malformed inputs; NotFound / InvalidArgument
// naming the file for a format directory without a readable config.json or
// without its quantization_config. Files already written stay in the
// staging directory, which the caller removes on error.
//
// Thread-compatible: no shared state.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace roundhouse::engine {

inline constexpr char kModelCardFile[] = "README.md";
inline constexpr char kQuantizationConfigFile[] = "quantization_config.json";
inline constexpr char kGitAttributesFile[] = ".gitattributes";

// Files a complete deliverable holds at the top of the artifact directory
// (test_results.json comes from the evaluation stage). Used by tests and
// by clients that check a folder before uploading it.
inline constexpr const char* kDeliverableTopLevelFiles[] = {
    "README.md", "test_results.json", ".gitattributes"};

// Files above this size are tracked by Git LFS whatever their extension.
inline constexpr int64_t kLfsThresholdBytes = 10 * 1024 * 1024;

// One file of the artifact directory, path relative to it.
struct ArtifactFileInfo {
  std::string path;
  int64_t size_bytes = 0;
};

// Writes README.md, quantization_config.json (per format directory) and
// .gitattributes into `artifact_dir` (atomically, file by file).
absl::Status WriteDeliverable(const std::string& artifact_dir,
                              const nlohmann::json& manifest,
                              const nlohmann::json& test_results);

// The pieces, for tests and tools. `files` lists the directory's files
// (sorted by path) as they are before the card is written.
absl::StatusOr<std::string> RenderModelCard(
    const nlohmann::json& manifest, const nlohmann::json& test_results,
    const std::vector<ArtifactFileInfo>& files);
std::string RenderGitAttributes(const std::vector<ArtifactFileInfo>& files);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_DELIVERABLE_H_
