#ifndef ROUNDHOUSE_WORKER_ENGINE_CUDA_DEVICE_COMMON_CUH_
#define ROUNDHOUSE_WORKER_ENGINE_CUDA_DEVICE_COMMON_CUH_

// Device helpers shared by the engine's CUDA kernels (qdq_kernels.cu,
// block_kernels.cu): the launch shape (one warp per row, eight warps per
// block), dtype conversions with round-to-nearest-even, vector packs and a
// fixed-order warp sum. Include only from .cu files.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace roundhouse::engine::cuda::device {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpSize * kWarpsPerBlock;

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half x) {
  return __half2float(x);
}

// Round to nearest even, as libtorch's casts do.
template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}

// kVec consecutive elements, loaded/stored as one access when the launcher
// has checked the alignment.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T e[kVec];
};

// Sum over the 32 lanes with a fixed shuffle tree (the same bytes on every
// run); every lane gets the result.
__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x = __fadd_rn(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// Host side: whether a pointer allows 16-byte accesses (nullptr does).
inline bool Aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace roundhouse::engine::cuda::device

#endif  // ROUNDHOUSE_WORKER_ENGINE_CUDA_DEVICE_COMMON_CUH_
