#ifndef ROUNDHOUSE_WORKER_ENGINE_CUDA_BLOCK_KERNELS_H_
#define ROUNDHOUSE_WORKER_ENGINE_CUDA_BLOCK_KERNELS_H_

// Raw-pointer launchers of fused CUDA kernels for the decoder block's
// memory-bound steps and the tuning loss (no torch types; the torch-facing
// autograd wrappers are worker/engine/fused_block_ops.h). Compiled only with
// -DROUNDHOUSE_ENABLE_CUDA=ON.
//
// Why: with libtorch ops each of these steps is a chain of element-wise
// kernels, every one a full pass over [tokens, width] activations; on the
// H200 they took about half of a tuning iteration of the reference
// configuration (bench/gpu-tuning.md). One kernel per step and direction
// reads and writes each tensor once.
//
// Numerics: each kernel computes in fp32 and rounds to the storage dtype T
// at the points where the libtorch op chain of decoder_block.cc rounds
// (named per launcher), so values agree with it up to fp32 summation order
// and rsqrt's last bit.
//
// Buffers: contiguous, row-major, device memory of one GPU, dtype T for
// activations (fp32, bf16 or fp16), fp32 where stated. Outputs must not
// alias inputs.
//
// Threading and streams: every launcher only enqueues work on `stream` and
// returns; it never synchronises, allocates or reads device memory on the
// host (scalars such as the loss gradient are read by the kernel), so it can
// be captured in a CUDA graph. Launchers keep no host state.
//
// Determinism: fixed per-thread summation order and fixed reduction trees
// (no atomics), so the same inputs give the same bytes on every run.
//
// Errors: each launcher returns cudaGetLastError() after its launch.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/engine/cuda/qdq_kernels.h"

namespace roundhouse::engine::cuda {

// Activation dtype (shared with the QDQ kernels).
using ActDtype = QdqDtype;

// RMSNorm over the last dimension, `rows` rows of `dim` elements:
//   r   = rsqrt(mean(float(x)^2) + eps)            (fp32, saved in rstd)
//   out = T(float(weight) * float(T(float(x) * r)))
// weight [dim] in T; rstd [rows] fp32.
cudaError_t LaunchRmsNormForward(ActDtype dtype, int64_t rows, int64_t dim,
                                 const void* x, const void* weight, float eps,
                                 void* out, float* rstd, cudaStream_t stream);
// Gradient with respect to x (weight is a constant):
//   g_i  = float(T(grad_out_i * weight_i))
//   dx_i = T(g_i * r - float(x_i) * r^3 / dim * sum_j g_j * float(x_j))
cudaError_t LaunchRmsNormBackward(ActDtype dtype, int64_t rows, int64_t dim,
                                  const void* x, const void* weight,
                                  const float* rstd, const void* grad_out,
                                  void* grad_x, cudaStream_t stream);

// SwiGLU gate: out = T(float(T(silu(gate))) * float(up)), n elements.
cudaError_t LaunchSwiGluForward(ActDtype dtype, int64_t n, const void* gate,
                                const void* up, void* out, cudaStream_t stream);
// ds = T(dout * up); grad_up = T(dout * T(silu(gate)));
// grad_gate = T(float(ds) * silu'(gate)).
cudaError_t LaunchSwiGluBackward(ActDtype dtype, int64_t n, const void* gate,
                                 const void* up, const void* grad_out,
                                 void* grad_gate, void* grad_up,
                                 cudaStream_t stream);

// Rotary embedding of x [tokens, heads, dim] (dim even, half = dim/2) with
// cos, sin [tokens, dim] in T:
//   out_i = T(T(x_i * cos_i) + T(rot_i * sin_i)),
//   rot_i = -x_{i+half} (i < half), x_{i-half} (i >= half).
cudaError_t LaunchRopeForward(ActDtype dtype, int64_t tokens, int64_t heads,
                              int64_t dim, const void* x, const void* cos,
                              const void* sin, void* out, cudaStream_t stream);
// The transpose: dx_j = T(T(dout_j * cos_j) + u_j) with
//   u_j = T(dout_{j+half} * sin_{j+half}) (j < half),
//         -T(dout_{j-half} * sin_{j-half}) (j >= half).
cudaError_t LaunchRopeBackward(ActDtype dtype, int64_t tokens, int64_t heads,
                               int64_t dim, const void* cos, const void* sin,
                               const void* grad_out, void* grad_x,
                               cudaStream_t stream);

// Masked squared error, pred and ref [tokens, width] in T, mask [tokens]
// fp32:  loss = scale * sum_{t,h} ((float(pred) - float(ref)) * mask_t)^2,
// reduced in two deterministic passes through `partials`
// (kMseMaxPartials floats of scratch). loss: one fp32 element.
constexpr int kMseMaxPartials = 1024;
cudaError_t LaunchMaskedMseForward(ActDtype dtype, int64_t tokens,
                                   int64_t width, const void* pred,
                                   const void* ref, const float* mask,
                                   float scale, float* partials, float* loss,
                                   cudaStream_t stream);
// grad_pred = T(grad_loss[0] * scale * 2 * (float(pred) - float(ref)) *
//               mask_t * mask_t); grad_loss is one fp32 element on the
// device (the upstream gradient, read by the kernel).
cudaError_t LaunchMaskedMseBackward(ActDtype dtype, int64_t tokens,
                                    int64_t width, const void* pred,
                                    const void* ref, const float* mask,
                                    float scale, const float* grad_loss,
                                    void* grad_pred, cudaStream_t stream);

}  // namespace roundhouse::engine::cuda

#endif  // ROUNDHOUSE_WORKER_ENGINE_CUDA_BLOCK_KERNELS_H_
