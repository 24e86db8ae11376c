#ifndef ROUNDHOUSE_WORKER_ENGINE_TEST_TENSORS_H_
#define ROUNDHOUSE_WORKER_ENGINE_TEST_TENSORS_H_

// Tensor comparisons shared by the engine's unit tests (test code only).

#include <torch/torch.h>

#include <cmath>

namespace roundhouse::engine::test_util {

// Normwise relative error ||a - b|| / ||b||, computed in double on the CPU
// from tensors of any dtype and device; 0 when both are all zero, infinity
// when only b is.
inline double RelErr(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor ad = a.detach().to(torch::kCPU, torch::kFloat64);
  torch::Tensor bd = b.detach().to(torch::kCPU, torch::kFloat64);
  const double diff = (ad - bd).norm().item<double>();
  const double base = bd.norm().item<double>();
  if (base == 0) return diff == 0 ? 0 : INFINITY;
  return diff / base;
}

}  // namespace roundhouse::engine::test_util

#endif  // ROUNDHOUSE_WORKER_ENGINE_TEST_TENSORS_H_
