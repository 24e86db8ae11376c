#ifndef ROUNDHOUSE_WORKER_ENGINE_FUSED_QDQ_H_
#define ROUNDHOUSE_WORKER_ENGINE_FUSED_QDQ_H_

// Torch-facing wrappers of the fused CUDA kernels of worker/engine/cuda/
// qdq_kernels.h: the quantize-dequantize (QDQ) of a Linear weight with its
// straight-through backward, and the signed-SGD step of SignRound.
//
// Availability: the kernels exist only in a build configured with
// -DROUNDHOUSE_ENABLE_CUDA=ON (compile definition ROUNDHOUSE_WITH_CUDA). In
// other builds FusedKernelsCompiled() is false and FusedQdq/FusedSignStep
// throw c10::Error. Every precondition violation throws c10::Error naming
// the argument (callers at the engine edge convert it to a Status).
//
// Streams and synchronisation: work is enqueued on the current CUDA stream
// of the tensors' device (c10::cuda::getCurrentCUDAStream()); nothing
// synchronises the host, reads device values on the host or allocates
// beyond the returned tensors, so both calls (and FusedQdq's backward) can
// be captured in a CUDA graph.
//
// Determinism: results (values and gradients) are the same bytes on every
// run for the same inputs. The QDQ forward is bit-identical to the torch
// path of LinearQuantizer::QdqForward() on CUDA; gradients equal its
// autograd up to fp32 summation order.
//
// Thread safety: the functions keep no state; concurrent calls on disjoint
// tensors are safe.

#include <torch/torch.h>

namespace roundhouse::engine {

// True when this binary contains the CUDA kernels.
bool FusedKernelsCompiled();

// True when FusedKernelsCompiled() and the environment variable
// RH_DISABLE_FUSED_QDQ is not "1" (the process-wide off switch; read on
// every call).
bool FusedQdqEnabledByEnv();

// Differentiable fused QDQ of one Linear weight, identical in value to the
// torch chain of LinearQuantizer (autoround-spec §1.1-1.3):
//   weight    [out, in], float32/bfloat16/float16, contiguous, CUDA; treated
//             as a constant (no gradient).
//   v         [rows, G] float32 contiguous, rows = out * ceil(in / G).
//   min_scale, max_scale [rows] float32 contiguous, or both undefined when
//             min/max tuning is off. CLAMPED TO [0, 1] IN PLACE by the
//             forward (like the torch path's clamp_; the version counter is
//             not bumped).
//   wmin, wmax [rows] float32 contiguous: the group range (<= 0, >= 0).
//   bits      2, 3, 4 or 8; sym: full-range symmetric or asymmetric.
// Returns [out, in] in the weight's dtype. Its backward yields gradients
// for v, min_scale and max_scale (as torch autograd of the chain: rounding
// is identity, clamps pass the gradient inside their inclusive range, the
// fp16 cast is identity); the forward's inputs must not be modified
// between forward and backward (checked for torch in-place ops).
torch::Tensor FusedQdq(const torch::Tensor& weight, const torch::Tensor& v,
                       const torch::Tensor& min_scale,
                       const torch::Tensor& max_scale,
                       const torch::Tensor& wmin, const torch::Tensor& wmax,
                       int bits, bool sym);

// One signed-SGD step with best tracking, in place, no autograd:
//   if (take != 0) best = param;  then  param = param + alpha * sign(grad)
// with sign(0) = 0, exactly the torch sequence of signround.cc
// (best.mul_(1-take).addcmul_(param, take); grad.sign_();
// param.add_(grad, alpha)) for take in {0, 1} and alpha = float(-lr *
// factor). param, grad, best: float32, contiguous, same shape, same CUDA
// device; take, alpha: 1-element float32 tensors on that device, read by
// the kernel. grad is left unchanged.
void FusedSignStep(torch::Tensor param, const torch::Tensor& grad,
                   torch::Tensor best, const torch::Tensor& take,
                   const torch::Tensor& alpha);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_FUSED_QDQ_H_
