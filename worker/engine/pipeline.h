#ifndef ROUNDHOUSE_WORKER_ENGINE_PIPELINE_H_
#define ROUNDHOUSE_WORKER_ENGINE_PIPELINE_H_

// engine::Quantize: one whole quantization job (autoround-spec §2), from a
// Hugging Face checkpoint directory to a complete artifact directory.
//
//   loading      open the checkpoint, discover the layout, resolve the
//                per-layer config over every block Linear (all spec errors
//                surface here, before any compute)
//   calibration  build the calibration set (calibration.path relative to
//                the model directory unless absolute), hash the inputs,
//                open / resume the checkpoint directory
//   tuning       block by block: fp_out = FP block(fp_in); SignRound with
//                the prediction on the quantized chain q_in; q_next = QDQ
//                block(q_in); fp_next = fp_out (enable_quanted_input=false:
//                both chains FP). Block 0's input is the embedding of the
//                calibration ids. The loss mask is the attention mask with
//                the last position zeroed (§1.5).
//   export       every requested format into <out>.staging-<pid> (one
//                format: directly; several: <staging>/<format>/)
//   evaluation   token cosine similarity between the FP and the quantized
//                model on held-out samples (the quality gate)
//   done         manifest.json written last, staging renamed to <out>
//
// Determinism and resume: the mini-batch sampler of block k is seeded with
// a hash of (scheme.seed, k) only, so a run resumed after block k-1 draws
// exactly the batches the uninterrupted run drew (a deliberate difference
// from the reference, whose single Python RNG stream continues across
// blocks — docs/differences.md, "mini-batch sampler"). With the same inputs
// and device the checkpoint files are byte-identical whether or not the run
// was resumed, and so is the whole artifact when evaluation is off. With
// evaluation on, test_results.json and README.md carry the evaluation's
// wall-clock throughput (and manifest.json their hashes), so only those
// three files differ between runs.
//
// Errors (absl::Status codes the CLI maps to exit codes):
//   InvalidArgument / NotFound  bad spec, model or calibration data
//   ResourceExhausted           out of memory (libtorch / CUDA OOM)
//   Aborted                     should_stop() returned true at a block
//                               boundary (after that block's checkpoint)
//   other                       internal errors
// On any error nothing is left at <out> and the staging directory is
// removed; the checkpoint directory keeps every completed block.
//
// Thread-compatible: one Quantize per process at a time (it sets libtorch's
// global deterministic flag and thread-independent state).

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/job_config.h"

namespace roundhouse::engine {

struct QuantizeRequest {
  std::string model_dir;
  std::string out_dir;
  // "" = no checkpoints, no resume. Left in place after success (the
  // caller removes it once the artifact is safely recorded).
  std::string checkpoint_dir;
  JobConfig config;
  std::string device = "cpu";  // "cpu" or "cuda"
  // CUDA: tune data-parallel over cuda:0 .. cuda:gpus-1 (the visible
  // devices; the agent sets CUDA_VISIBLE_DEVICES). Must be >= 1.
  int gpus = 1;
  // Keep the activation chains on the CPU between blocks and run the FP
  // forwards one sample at a time (slower, less device memory).
  bool low_memory = false;
  // Progress events exactly as in docs/architecture.md ("stage", "plan",
  // "block"; plus "checkpoint" {"action":"resume"|"fresh","reason":...}).
  // Called on the calling thread. May be empty.
  std::function<void(const nlohmann::json&)> on_event;
  // Polled after every block's checkpoint; true -> AbortedError.
  std::function<bool()> should_stop;
  // Largest safetensors shard of the exported checkpoint.
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

struct BlockReport {
  int block_index = 0;
  double loss_before = 0;
  double loss_after = 0;
  int best_iter = 0;
  double seconds = 0;   // 0 for blocks restored from a checkpoint
  bool resumed = false;
};

struct QuantizeResult {
  std::string artifact_dir;
  nlohmann::json manifest;
  std::vector<BlockReport> blocks;  // empty when an artifact was reused
  bool reused = false;              // <out> already held a valid artifact
  // The quality gate (true when evaluation is disabled).
  bool quality_passed = true;
  std::string quality_message;      // why the gate failed
};

// ResourceExhausted statuses from Quantize carry the device memory in use
// when the allocation failed (CUDA; 0 on CPU) as a decimal string payload.
inline constexpr char kPeakMemoryPayload[] =
    "type.googleapis.com/roundhouse.engine.PeakMemoryBytes";

absl::StatusOr<QuantizeResult> Quantize(const QuantizeRequest& request);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_PIPELINE_H_
