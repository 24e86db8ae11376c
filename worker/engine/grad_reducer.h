#ifndef ROUNDHOUSE_WORKER_ENGINE_GRAD_REDUCER_H_
#define ROUNDHOUSE_WORKER_ENGINE_GRAD_REDUCER_H_

// All-reduce (sum) of same-shaped tensors held by data-parallel replicas,
// one replica per device. Used by SignRound to sum the tunables' gradients
// and the loss sums of the replicas before the identical sign step.
//
// Contract of AllReduceSum(tensors): tensors[r][k] is tensor k of replica r
// (contiguous, float32, on replica r's device; tensor k has one shape on
// every replica). On return every tensors[r][k] holds the elementwise sum
// over r, with identical bytes on every replica (a replica whose bytes
// differed would step differently and the replicas would drift apart).
// Work is enqueued on each device's current stream; there is no host
// synchronisation. Not thread-safe: one caller at a time.

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace roundhouse::engine {

class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  virtual void AllReduceSum(std::vector<std::vector<torch::Tensor>>& tensors) = 0;
  virtual std::string name() const = 0;
};

// Sums through replica 0 with tensor copies (peer copies between GPUs,
// plain adds on one device): works on any devices, including several
// replicas on the CPU (used by tests). Deterministic: replica order.
std::unique_ptr<GradientReducer> MakeCopyReducer();

// NCCL ring all-reduce over `devices` (distinct CUDA devices of this
// process). Unimplemented when the build has no NCCL
// (ROUNDHOUSE_WITH_NCCL), InvalidArgument for non-CUDA or repeated
// devices, Internal with NCCL's message when the communicator fails.
absl::StatusOr<std::unique_ptr<GradientReducer>> MakeNcclReducer(
    const std::vector<c10::Device>& devices);

// NCCL when it can be used for `devices`, copies otherwise.
std::unique_ptr<GradientReducer> MakeBestReducer(
    const std::vector<c10::Device>& devices);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_GRAD_REDUCER_H_
