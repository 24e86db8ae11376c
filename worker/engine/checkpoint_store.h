#ifndef ROUNDHOUSE_WORKER_ENGINE_CHECKPOINT_STORE_H_
#define ROUNDHOUSE_WORKER_ENGINE_CHECKPOINT_STORE_H_

// Durable per-block checkpoints of a quantization run, for resume after a
// crash, preemption or drain.
//
// Layout of the checkpoint directory:
//   fingerprint.json               {"fingerprint": "<hex>", ...}
//   block-00000/                   one directory per completed block
//     meta.json                    block index, fingerprint, losses, layers
//     model.safetensors            per quantized Linear suffix S:
//                                  "S.weight_qdq", "S.scale", "S.zero",
//                                  "S.codes" (u8; int32 in memory)
//     chains/model.safetensors     "fp" and (when distinct) "q": the two
//                                  activation chains after the block,
//                                  verbatim (dtype and bytes preserved)
// A block directory is written as "block-0000k.tmp-<pid>", fsynced and
// renamed into place, so it is either complete or absent. After block k is
// in place the chains of block k-1 are deleted (only the newest chains are
// needed).
//
// Resume rule: only a contiguous prefix 0..k-1 of complete blocks whose
// meta.json carries the current fingerprint is trusted, and it is cut back
// to the newest block that still has its chains. A fingerprint that differs
// from fingerprint.json wipes the directory (a fresh start).
//
// Not thread-safe; one process per directory.

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/quantizer.h"
#include <torch/torch.h>

namespace roundhouse::engine {

// The results of one tuned block.
struct BlockResult {
  int block_index = 0;
  double loss_before = 0;
  double loss_after = 0;
  int best_iter = 0;
  // By Linear suffix ("self_attn.q_proj", ...); quantized Linears only.
  std::map<std::string, QdqResult> layers;
};

class CheckpointStore {
 public:
  // Opens (creating when missing) `dir` for a run whose inputs hash to
  // `fingerprint`. Whatever is there under another fingerprint is removed.
  static absl::StatusOr<std::unique_ptr<CheckpointStore>> Open(
      const std::string& dir, const std::string& fingerprint);

  // Number of blocks a run can skip (contiguous, verified prefix).
  int resumable_blocks() const { return resumable_blocks_; }
  // "resumed", "fresh: no checkpoint", "fresh: fingerprint changed", ...
  const std::string& open_note() const { return note_; }

  // The results of block `k` < resumable_blocks() (CPU tensors).
  absl::StatusOr<BlockResult> LoadBlock(int k) const;
  // The chains after block resumable_blocks()-1 (CPU, verbatim). `q` is
  // left undefined when only the FP chain was stored.
  absl::Status LoadChains(torch::Tensor* fp, torch::Tensor* q) const;

  // Durably stores block `result.block_index` with the chains after it
  // (`q` may be undefined or the same tensor as `fp`: stored once).
  absl::Status WriteBlock(const BlockResult& result, const torch::Tensor& fp,
                          const torch::Tensor& q);

  const std::string& dir() const { return dir_; }

 private:
  CheckpointStore() = default;
  std::string BlockDir(int k) const;

  std::string dir_;
  std::string fingerprint_;
  int resumable_blocks_ = 0;
  std::string note_;
};

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_CHECKPOINT_STORE_H_
