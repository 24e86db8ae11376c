#ifndef ROUNDHOUSE_WORKER_ENGINE_CUDA_QDQ_KERNELS_H_
#define ROUNDHOUSE_WORKER_ENGINE_CUDA_QDQ_KERNELS_H_

// Raw-pointer launchers of the fused CUDA kernels of the SignRound tuning
// loop (no torch types; the torch-facing wrapper is worker/engine/
// fused_qdq.h). Compiled only with -DROUNDHOUSE_ENABLE_CUDA=ON.
//
// 1. Quantize-dequantize (QDQ) of one Linear weight and its straight-through
//    backward, bit for bit the torch chain of LinearQuantizer::Compute()
//    (autoround-spec §1.1-1.3) as libtorch runs it on CUDA.
// 2. The signed-SGD step with best-value tracking of signround.cc.
//
// Shapes (all buffers contiguous, row-major, device memory of one GPU):
//   weight  [out, in]          in `dtype`
//   v       [rows, group]      fp32, rows = out * ngroups,
//                              ngroups = ceil(in / group)
//   wmin    [rows]             fp32, <= 0 (group minimum incl. padding)
//   wmax    [rows]             fp32, >= 0
//   min_scale, max_scale [rows] fp32, or both null when min/max tuning is
//                              off (then lo = wmin, hi = wmax)
// Row r = o * ngroups + g covers weight[o, g*group .. g*group+group-1];
// columns >= in read as 0 (the zero padding of §1.2) and are never written.
//
// Threading and streams: every launcher only enqueues work on `stream` and
// returns; it never synchronises, allocates or reads device memory on the
// host, so it can be captured in a CUDA graph. Launchers are thread-safe
// (no host state). Buffers passed to one launch must not be written by
// other work running concurrently with it.
//
// Determinism: one warp per row, fixed per-lane summation order and a fixed
// shuffle tree, so the same inputs give the same bytes on every run.
//
// Errors: each launcher returns cudaGetLastError() after its launch
// (cudaSuccess, or the launch/configuration error). Asynchronous faults
// surface at the next synchronising call, as with any kernel.

#include <cuda_runtime_api.h>

#include <cstdint>

namespace roundhouse::engine::cuda {

enum class QdqDtype { kFloat32, kBFloat16, kFloat16 };

struct QdqShape {
  int64_t out = 0;      // rows of the weight
  int64_t in = 0;       // columns of the weight
  int64_t group = 0;    // G > 0 (== in for one group per output row)
  int64_t ngroups = 0;  // ceil(in / group)
};

struct QdqScheme {
  int bits = 4;                 // 2, 3, 4 or 8
  bool sym = true;              // full-range symmetric or asymmetric
  float scale_threshold = 0.f;  // float(half(1e-5)): the fp16 q_scale_thresh
};

// Forward. Clamps min_scale/max_scale to [0, 1] IN PLACE (as the torch
// path's clamp_ before each QDQ; NaN stays NaN), then writes
// out[o, c] = QDQ(weight[o, c]) for c < in, in `dtype`.
cudaError_t LaunchQdqForward(QdqDtype dtype, const QdqShape& shape,
                             const QdqScheme& scheme, const void* weight,
                             const float* v, float* min_scale,
                             float* max_scale, const float* wmin,
                             const float* wmax, void* out,
                             cudaStream_t stream);

// Straight-through backward of the forward above, given grad_out [out, in]
// in `dtype` (the gradient of the QDQ weight). Reads min_scale/max_scale as
// the forward left them (already clamped). Writes grad_v [rows, group]
// (0 in padded columns) and, when min/max tuning is on (the scale pointers
// non-null), grad_min_scale / grad_max_scale [rows]; these two must then be
// non-null too. Outputs are overwritten, not accumulated. As in torch
// autograd of the chain, the scale's gradient is rounded to fp16 where the
// forward cast the scale to fp16 and back.
cudaError_t LaunchQdqBackward(QdqDtype dtype, const QdqShape& shape,
                              const QdqScheme& scheme, const void* weight,
                              const float* v, const float* min_scale,
                              const float* max_scale, const float* wmin,
                              const float* wmax, const void* grad_out,
                              float* grad_v, float* grad_min_scale,
                              float* grad_max_scale, cudaStream_t stream);

// Signed-SGD step over n fp32 elements, elementwise:
//   if (*take != 0) best[i] = param[i];
//   param[i] = param[i] + (*alpha) * sign(grad[i])   (sign(0) = sign(NaN) = 0)
// `take` and `alpha` are single fp32 values in device memory, read by the
// kernel (so a captured graph can be replayed with new values). grad is
// only read. float4 accesses when all three arrays are 16-byte aligned.
cudaError_t LaunchSignStep(int64_t n, float* param, const float* grad,
                           float* best, const float* take,
                           const float* alpha, cudaStream_t stream);

}  // namespace roundhouse::engine::cuda

#endif  // ROUNDHOUSE_WORKER_ENGINE_CUDA_QDQ_KERNELS_H_
