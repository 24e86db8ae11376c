#ifndef ROUNDHOUSE_WORKER_ENGINE_SIGNROUND_H_
#define ROUNDHOUSE_WORKER_ENGINE_SIGNROUND_H_

// SignRound tuning of one decoder block (autoround-spec §1.4-1.6): signed
// SGD on the rounding offsets V and the min/max scales of every quantized
// Linear, minimising the masked MSE between the QDQ block on the quantized
// input chain and the FP block output on the FP chain.
//
// Not thread-safe (mutates the quantizers). The loop keeps the best-loss
// bookkeeping on the device, so the only host synchronisation is at the end
// of the block (plus one check of the attention mask at its start).
//
// Execution strategies — they change speed and memory, never the algorithm:
//  * CUDA: fused QDQ forward/backward kernels (LinearQuantizer), one fused
//    signed-SGD kernel per tunable, fused attention, and (single device,
//    data on the device) the fixed-shape iteration captured once as a CUDA
//    graph and replayed. Results agree with the plain libtorch path within
//    rounding (reduction order), not bit for bit; a given build and seed
//    gives identical results run to run.
//  * Several devices (options.devices): data parallel. Every iteration's
//    batch is split across replicas of the block, the gradients of the
//    tunables and the loss sums are all-reduced (NCCL on CUDA when built
//    with it, device copies otherwise) before the identical sign step on
//    every replica, so the result is the single-device algorithm's up to
//    summation order.

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/decoder_block.h"
#include "worker/engine/quantizer.h"

namespace roundhouse::engine {

struct TuneOptions {
  int iters = 200;  // 0: round-to-nearest, no tuning
  // Learning rate of V. -1: per layer 1/iters, or 2/iters when iters >=
  // 1000 and the layer has bits <= 3 (§1.4).
  double lr = -1;
  double minmax_lr = -1;  // -1: the (per-layer) lr
  int batch_size = 8;     // samples per micro-batch (capped at N)
  int gradient_accumulate_steps = 1;
  bool enable_minmax_tuning = true;  // informational: the quantizers decide
  // true: keep the parameters evaluated at the last iteration instead of
  // the best-loss ones.
  bool not_use_best_mse = false;
  // Sampler seed. The sampler draws a fresh Fisher-Yates permutation of
  // [0, N) per epoch from std::mt19937_64(seed) (our own bounded draw, so
  // the order is identical on every platform); it is NOT Python's
  // `random`, so sample order differs from the reference.
  uint64_t seed = 42;

  // Data-parallel replicas, first = the device of `weights` (empty: that
  // device alone). Replica r > 0 gets copies of the block, the quantizers
  // and the calibration tensors.
  std::vector<c10::Device> devices;
  // CUDA only (ignored elsewhere): capture the iteration as a CUDA graph
  // (single device, calibration tensors on the device, fused kernels
  // available). Env RH_DISABLE_CUDA_GRAPHS=1 turns it off globally.
  bool cuda_graphs = true;
  // CUDA only: fused signed-SGD step kernel. Env RH_DISABLE_FUSED_STEP=1
  // turns it off globally.
  bool fused_step = true;
};

struct TuneResult {
  // The loss compared for best tracking (§1.5): sum over micro-batches of
  // the masked MSE (mean over all B*T*H elements, sum when accumulating)
  // divided by the number of valid tokens of the iteration's batch.
  double loss_before = 0;  // iteration 0 (round-to-nearest)
  double loss_after = 0;   // the best (or, not_use_best_mse, the last)
  int best_iter = 0;
  // Final QDQ results from the kept parameters, by Linear suffix (the keys
  // of `quantizers`).
  std::map<std::string, QdqResult> layers;
  // How the loop ran (for benchmarks and the block event).
  bool used_cuda_graph = false;
  int replicas = 1;
};

// Tunes one block. q_in [N,T,H]: block inputs on the quantized chain;
// fp_out [N,T,H]: the FP block's outputs on the FP chain (the target);
// attention_mask [N,T] (1 = real token); loss_mask [N,T] (1 = counts; pad
// positions and the last position already 0). `quantizers`: Linear suffix
// (see BlockLinearSuffixes) -> quantizer of that Linear's weight in
// `weights`; Linears without a quantizer run with their FP weights.
//
// Per iteration i (0-based): one global batch of min(N, batch_size *
// gradient_accumulate_steps) samples; loss x1000 backward per micro-batch;
// best tracking (strict <, iteration 0 included); p -= lr_i * sign(grad)
// with lr_i = lr * (1 - i/iters). Hence |V| <= lr*(iters+1)/2.
// On return the quantizers hold the kept (best) parameters, so
// QdqForward()/Finalize() reproduce TuneResult::layers.
// Errors: InvalidArgument for shape/option problems (naming the argument),
// Internal for libtorch failures (the c10 message).
absl::StatusOr<TuneResult> TuneBlock(
    const BlockConfig& config, const BlockWeights& weights,
    std::map<std::string, LinearQuantizer>& quantizers,
    const torch::Tensor& q_in, const torch::Tensor& fp_out,
    const torch::Tensor& attention_mask, const torch::Tensor& loss_mask,
    const TuneOptions& options);

// The per-layer learning rate of §1.4 (used when options.lr == -1).
double DefaultLearningRate(int iters, int bits);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_SIGNROUND_H_
