#ifndef ROUNDHOUSE_WORKER_ENGINE_FUSED_BLOCK_OPS_H_
#define ROUNDHOUSE_WORKER_ENGINE_FUSED_BLOCK_OPS_H_

// Differentiable fused CUDA forms of the decoder block's memory-bound steps
// (RMSNorm, SwiGLU gate, rotary embedding) and of the tuning loss, over the
// kernels of worker/engine/cuda/block_kernels.h. Each replaces a chain of
// libtorch element-wise ops (one full pass over the activations per op, in
// both directions) with one kernel per direction.
//
// Values: each op rounds to the storage dtype where the libtorch chain of
// decoder_block.cc / signround.cc rounds (see block_kernels.h), so outputs
// and gradients agree with it up to fp32 summation order; worker/engine/
// fused_block_ops_test.cc states the tolerances.
//
// Availability: FusedBlockOpsUsable(t) is true only in a CUDA build, for a
// CUDA tensor of dtype float32/bfloat16/float16, and when the environment
// variable RH_DISABLE_FUSED_BLOCK_OPS is not "1" (the benchmarks' off
// switch, read once). The ops throw c10::Error for anything else and for
// shape or dtype mismatches, naming the argument.
//
// Streams: work goes to the current CUDA stream; nothing synchronises the
// host, so the ops and their backwards can be captured in a CUDA graph.
// Deterministic (no atomics). Stateless: thread-safe on disjoint tensors.
//
// Gradients: only for the activation inputs named below; weights, cos/sin,
// the reference and the mask are constants (the block's norm weights are
// never tuned).

#include <torch/torch.h>

namespace roundhouse::engine {

bool FusedBlockOpsUsable(const torch::Tensor& like);

// weight * T(float(x) * rsqrt(mean(float(x)^2, -1) + eps)) over the last
// dimension; x [..., D] (made contiguous), weight [D] in x's dtype.
// Gradient for x.
torch::Tensor FusedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                           double eps);

// silu(gate) * up; gate and up of one shape and dtype. Gradients for both.
torch::Tensor FusedSwiGlu(const torch::Tensor& gate, const torch::Tensor& up);

// x * cos + rotate_half(x) * sin for x [B, T, H, D] (heads of a token
// adjacent, the layout before the attention transpose), cos and sin
// [B, T, D] in x's dtype. Returns [B, T, H, D]. Gradient for x.
torch::Tensor FusedRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin);

// scale * sum over b, t, h of ((float(pred) - float(ref)) * mask[b, t])^2;
// pred and ref [B, T, H] of one dtype, mask [B, T] float32. Returns a 0-dim
// float32 tensor. Gradient for pred. For masks of 0/1 this is the value of
// signround.cc's ((pred*m - ref*m)^2).sum() * scale in fp32.
torch::Tensor FusedMaskedMse(const torch::Tensor& pred,
                             const torch::Tensor& ref,
                             const torch::Tensor& mask, double scale);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_FUSED_BLOCK_OPS_H_
