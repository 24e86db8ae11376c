#ifndef ROUNDHOUSE_WORKER_ENGINE_EXPORTER_H_
#define ROUNDHOUSE_WORKER_ENGINE_EXPORTER_H_

// Writing a quantized checkpoint in one of the export formats
// (autoround-spec §4): "auto_round" (packing chosen as §4.1), "auto_gptq",
// "auto_awq".
//
// Output directory contents:
//   model.safetensors (or shards + model.safetensors.index.json): for each
//     quantized Linear "<layer>.qweight/.qzeros/.scales[/.g_idx][/.bias]"
//     (packing.h) in place of "<layer>.weight"/".bias"; every other tensor
//     copied byte for byte with its original name, dtype and shape;
//   config.json: the source config (key order kept) plus
//     "quantization_config"; torch_dtype rewritten to float16 for the AWQ
//     packings and the standalone gptq/awq formats (§4.10);
//   quantization_config.json: the same dict;
//   tokenizer / processor / generation_config files and remote-code *.py
//     files copied from the model directory.
//
// Thread-compatible. The caller owns atomicity: it writes into a staging
// directory and renames it when everything (manifest included) is there.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/job_config.h"
#include "worker/engine/layer_config.h"
#include "worker/engine/model_config.h"
#include "worker/engine/packing.h"
#include "worker/engine/perplexity.h"
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {

struct ExportInput {
  std::string model_dir;
  const Checkpoint* checkpoint = nullptr;  // the source weights
  const ModelLayout* layout = nullptr;
  // One entry per block Linear (module names, no ".weight").
  const std::vector<ResolvedLayer>* layers = nullptr;
  // Final QDQ results by module name, for every quantized Linear.
  const std::map<std::string, QdqResult>* results = nullptr;
  const JobConfig* config = nullptr;
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

// The packing a format uses for this run (§4.1, §4.4). InvalidArgument for
// an unknown format.
absl::StatusOr<Packing> PackingForFormat(
    const std::string& format, const QuantParams& global,
    const std::vector<ResolvedLayer>& layers);

// The quantization_config object written for `format` (§4.4, §4.8, §4.9).
nlohmann::ordered_json BuildQuantizationConfig(const ExportInput& input,
                                               const std::string& format,
                                               Packing packing);

// Writes `format` into `out_dir` (created; must not hold a checkpoint).
// Returns the names of the files written, relative to out_dir.
absl::StatusOr<std::vector<std::string>> ExportFormat(
    const ExportInput& input, const std::string& format,
    const std::string& out_dir);

// Reads an exported directory back: a lookup that returns every original
// tensor name, dequantizing "<layer>.weight" from the packed tensors
// (float32, DequantizePacked) and passing everything else through as
// stored. `names` receives the original tensor names (sorted). Keeps
// `exported` referenced; it must outlive the lookup.
absl::StatusOr<WeightLookup> MakeDequantizingLookup(
    const Checkpoint& exported, const nlohmann::json& config_json,
    std::vector<std::string>* names);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_EXPORTER_H_
