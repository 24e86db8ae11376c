#ifndef ROUNDHOUSE_WORKER_ENGINE_CUDA_TORCH_INTEROP_H_
#define ROUNDHOUSE_WORKER_ENGINE_CUDA_TORCH_INTEROP_H_

// Torch-side helpers shared by the wrappers of the engine's CUDA kernels
// (fused_qdq.cc, fused_block_ops.cc). CUDA builds only. Stateless.

#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include "worker/engine/cuda/qdq_kernels.h"

namespace roundhouse::engine::cuda {

// The kernels' element type for `t`. Throws c10::Error
// "<op>: <name> dtype must be float32, bfloat16 or float16, got <dtype>".
inline QdqDtype KernelDtypeOf(const torch::Tensor& t, const char* op,
                              const char* name) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return QdqDtype::kFloat32;
    case torch::kBFloat16:
      return QdqDtype::kBFloat16;
    case torch::kFloat16:
      return QdqDtype::kFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name,
                  " dtype must be float32, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

// Throws c10::Error "<what> failed: <CUDA error>" unless err is cudaSuccess.
inline void CheckLaunch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

}  // namespace roundhouse::engine::cuda

#endif  // ROUNDHOUSE_WORKER_ENGINE_CUDA_TORCH_INTEROP_H_
