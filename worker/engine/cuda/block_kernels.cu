#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "worker/engine/cuda/block_kernels.h"
#include "worker/engine/cuda/device_common.cuh"

// Memory-bound kernels: each thread moves 16-byte packs where the sizes and
// addresses allow (kVec elements), scalars otherwise. Row kernels give one
// warp to a row, so the row's sum is a fixed per-lane order plus a fixed
// shuffle tree.

namespace roundhouse::engine::cuda {
namespace {

using device::Aligned16;
using device::FromFloat;
using device::kThreads;
using device::kWarpSize;
using device::kWarpsPerBlock;
using device::Pack;
using device::ToFloat;
using device::WarpSum;

// Rounds through T and back: the value a T tensor would hold.
template <typename T>
__device__ __forceinline__ float RoundT(float x) {
  return ToFloat<T>(FromFloat<T>(x));
}

template <typename T, int kVec>
__device__ __forceinline__ Pack<T, kVec> LoadPack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <typename T, int kVec>
__device__ __forceinline__ void StorePack(T* p, const Pack<T, kVec>& v) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = v;
}

__device__ __forceinline__ float Sigmoid(float x) {
  return 1.f / (1.f + expf(-x));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid for a grid-stride loop over `work` items: enough blocks to fill the
// GPU several times over, bounded so that huge tensors loop.
unsigned GridFor(int64_t work) {
  const int64_t blocks = CeilDiv(work, kThreads);
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1)
                                              : 65536);
}

// ---- RMSNorm ---------------------------------------------------------------

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    RmsNormForwardKernel(int64_t rows, int64_t dim, const T* __restrict__ x,
                         const T* __restrict__ weight, float eps,
                         T* __restrict__ out, float* __restrict__ rstd) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                    threadIdx.x / kWarpSize;
  if (r >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const T* xr = x + r * dim;
  float ss = 0.f;
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < dim;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> p = LoadPack<T, kVec>(xr + j);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float v = ToFloat(p.e[k]);
      ss += v * v;
    }
  }
  ss = WarpSum(ss);
  const float rs = rsqrtf(ss / static_cast<float>(dim) + eps);
  if (lane == 0) rstd[r] = rs;
  T* outr = out + r * dim;
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < dim;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> p = LoadPack<T, kVec>(xr + j);
    const Pack<T, kVec> w = LoadPack<T, kVec>(weight + j);
    Pack<T, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float y = RoundT<T>(ToFloat(p.e[k]) * rs);
      o.e[k] = FromFloat<T>(ToFloat(w.e[k]) * y);
    }
    StorePack<T, kVec>(outr + j, o);
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    RmsNormBackwardKernel(int64_t rows, int64_t dim, const T* __restrict__ x,
                          const T* __restrict__ weight,
                          const float* __restrict__ rstd,
                          const T* __restrict__ grad_out,
                          T* __restrict__ grad_x) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                    threadIdx.x / kWarpSize;
  if (r >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const T* xr = x + r * dim;
  const T* gr = grad_out + r * dim;
  float dot = 0.f;
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < dim;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> p = LoadPack<T, kVec>(xr + j);
    const Pack<T, kVec> g = LoadPack<T, kVec>(gr + j);
    const Pack<T, kVec> w = LoadPack<T, kVec>(weight + j);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      dot += RoundT<T>(ToFloat(g.e[k]) * ToFloat(w.e[k])) * ToFloat(p.e[k]);
    }
  }
  dot = WarpSum(dot);
  const float rs = rstd[r];
  const float coef = rs * rs * rs / static_cast<float>(dim) * dot;
  T* dxr = grad_x + r * dim;
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < dim;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> p = LoadPack<T, kVec>(xr + j);
    const Pack<T, kVec> g = LoadPack<T, kVec>(gr + j);
    const Pack<T, kVec> w = LoadPack<T, kVec>(weight + j);
    Pack<T, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float gy = RoundT<T>(ToFloat(g.e[k]) * ToFloat(w.e[k]));
      o.e[k] = FromFloat<T>(gy * rs - ToFloat(p.e[k]) * coef);
    }
    StorePack<T, kVec>(dxr + j, o);
  }
}

// ---- SwiGLU ----------------------------------------------------------------

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    SwiGluForwardKernel(int64_t packs, const T* __restrict__ gate,
                        const T* __restrict__ up, T* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       i < packs; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Pack<T, kVec> g = LoadPack<T, kVec>(gate + i * kVec);
    const Pack<T, kVec> u = LoadPack<T, kVec>(up + i * kVec);
    Pack<T, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float gv = ToFloat(g.e[k]);
      const float s = RoundT<T>(gv * Sigmoid(gv));
      o.e[k] = FromFloat<T>(s * ToFloat(u.e[k]));
    }
    StorePack<T, kVec>(out + i * kVec, o);
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    SwiGluBackwardKernel(int64_t packs, const T* __restrict__ gate,
                         const T* __restrict__ up,
                         const T* __restrict__ grad_out,
                         T* __restrict__ grad_gate, T* __restrict__ grad_up) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       i < packs; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Pack<T, kVec> g = LoadPack<T, kVec>(gate + i * kVec);
    const Pack<T, kVec> u = LoadPack<T, kVec>(up + i * kVec);
    const Pack<T, kVec> d = LoadPack<T, kVec>(grad_out + i * kVec);
    Pack<T, kVec> dg, du;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float gv = ToFloat(g.e[k]);
      const float sig = Sigmoid(gv);
      const float s = RoundT<T>(gv * sig);
      const float dv = ToFloat(d.e[k]);
      const float ds = RoundT<T>(dv * ToFloat(u.e[k]));
      du.e[k] = FromFloat<T>(dv * s);
      dg.e[k] = FromFloat<T>(ds * (sig * (1.f + gv * (1.f - sig))));
    }
    StorePack<T, kVec>(grad_gate + i * kVec, dg);
    StorePack<T, kVec>(grad_up + i * kVec, du);
  }
}

// ---- RoPE ------------------------------------------------------------------

// One thread per (token, head, i < half) pair: it owns elements i and
// i + half of that head, which exchange values.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    RopeKernel(bool backward, int64_t tokens, int64_t heads, int64_t dim,
               const T* __restrict__ in, const T* __restrict__ cos,
               const T* __restrict__ sin, T* __restrict__ out) {
  const int64_t half = dim / 2;
  const int64_t total = tokens * heads * half;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       idx < total; idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = idx % half;
    const int64_t th = idx / half;  // token * heads + head
    const int64_t t = th / heads;
    const T* a = in + th * dim;
    T* o = out + th * dim;
    const T* c = cos + t * dim;
    const T* s = sin + t * dim;
    const float x0 = ToFloat(a[i]), x1 = ToFloat(a[i + half]);
    const float c0 = ToFloat(c[i]), c1 = ToFloat(c[i + half]);
    const float s0 = ToFloat(s[i]), s1 = ToFloat(s[i + half]);
    if (!backward) {
      // rot_i = -x1 for the first half, x0 for the second.
      o[i] = FromFloat<T>(RoundT<T>(x0 * c0) + RoundT<T>(-x1 * s0));
      o[i + half] = FromFloat<T>(RoundT<T>(x1 * c1) + RoundT<T>(x0 * s1));
    } else {
      // `in` is the output gradient here.
      o[i] = FromFloat<T>(RoundT<T>(x0 * c0) + RoundT<T>(x1 * s1));
      o[i + half] = FromFloat<T>(RoundT<T>(x1 * c1) - RoundT<T>(x0 * s0));
    }
  }
}

// ---- masked MSE ------------------------------------------------------------

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    MsePartialKernel(int64_t packs, int64_t width_packs,
                     const T* __restrict__ pred, const T* __restrict__ ref,
                     const float* __restrict__ mask,
                     float* __restrict__ partials) {
  __shared__ float warp_sums[kWarpsPerBlock];
  float acc = 0.f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       i < packs; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float m = mask[i / width_packs];
    const Pack<T, kVec> p = LoadPack<T, kVec>(pred + i * kVec);
    const Pack<T, kVec> r = LoadPack<T, kVec>(ref + i * kVec);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float d = (ToFloat(p.e[k]) - ToFloat(r.e[k])) * m;
      acc += d * d;
    }
  }
  acc = WarpSum(acc);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float v = lane < kWarpsPerBlock ? warp_sums[lane] : 0.f;
    v = WarpSum(v);
    if (lane == 0) partials[blockIdx.x] = v;
  }
}

__global__ void __launch_bounds__(kThreads)
    MseFinishKernel(int n, const float* __restrict__ partials, float scale,
                    float* __restrict__ loss) {
  __shared__ float warp_sums[kWarpsPerBlock];
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += partials[i];
  acc = WarpSum(acc);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float v = lane < kWarpsPerBlock ? warp_sums[lane] : 0.f;
    v = WarpSum(v);
    if (lane == 0) loss[0] = v * scale;
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    MseBackwardKernel(int64_t packs, int64_t width_packs,
                      const T* __restrict__ pred, const T* __restrict__ ref,
                      const float* __restrict__ mask, float scale,
                      const float* __restrict__ grad_loss,
                      T* __restrict__ grad_pred) {
  const float k2 = grad_loss[0] * scale * 2.f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
       i < packs; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float m = mask[i / width_packs];
    const Pack<T, kVec> p = LoadPack<T, kVec>(pred + i * kVec);
    const Pack<T, kVec> r = LoadPack<T, kVec>(ref + i * kVec);
    Pack<T, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      o.e[k] = FromFloat<T>(k2 * (ToFloat(p.e[k]) - ToFloat(r.e[k])) * m * m);
    }
    StorePack<T, kVec>(grad_pred + i * kVec, o);
  }
}

// ---- dispatch --------------------------------------------------------------

template <typename T>
constexpr int VecOf() {
  return 16 / static_cast<int>(sizeof(T));
}

template <typename F>
cudaError_t ByDtype(ActDtype dtype, F&& f) {
  switch (dtype) {
    case ActDtype::kFloat32:
      return f(float{});
    case ActDtype::kBFloat16:
      return f(__nv_bfloat16{});
    case ActDtype::kFloat16:
      return f(__half{});
  }
  return cudaErrorInvalidValue;
}

bool AllAligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (!Aligned16(p)) return false;
  }
  return true;
}

// Both directions run the same kernel; `in` is x forward, the output
// gradient backward.
cudaError_t LaunchRope(bool backward, ActDtype dtype, int64_t tokens,
                       int64_t heads, int64_t dim, const void* in,
                       const void* cos, const void* sin, void* out,
                       cudaStream_t stream) {
  if (dim % 2 != 0) return cudaErrorInvalidValue;
  if (tokens <= 0 || heads <= 0 || dim < 2) return cudaSuccess;
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    RopeKernel<T><<<GridFor(tokens * heads * (dim / 2)), kThreads, 0, stream>>>(
        backward, tokens, heads, dim, static_cast<const T*>(in),
        static_cast<const T*>(cos), static_cast<const T*>(sin),
        static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t LaunchRmsNormForward(ActDtype dtype, int64_t rows, int64_t dim,
                                 const void* x, const void* weight, float eps,
                                 void* out, float* rstd, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(CeilDiv(rows, kWarpsPerBlock)));
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    if (dim % V == 0 && AllAligned({x, weight, out})) {
      RmsNormForwardKernel<T, V><<<grid, kThreads, 0, stream>>>(
          rows, dim, static_cast<const T*>(x), static_cast<const T*>(weight),
          eps, static_cast<T*>(out), rstd);
    } else {
      RmsNormForwardKernel<T, 1><<<grid, kThreads, 0, stream>>>(
          rows, dim, static_cast<const T*>(x), static_cast<const T*>(weight),
          eps, static_cast<T*>(out), rstd);
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchRmsNormBackward(ActDtype dtype, int64_t rows, int64_t dim,
                                  const void* x, const void* weight,
                                  const float* rstd, const void* grad_out,
                                  void* grad_x, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(CeilDiv(rows, kWarpsPerBlock)));
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    if (dim % V == 0 && AllAligned({x, weight, grad_out, grad_x})) {
      RmsNormBackwardKernel<T, V><<<grid, kThreads, 0, stream>>>(
          rows, dim, static_cast<const T*>(x), static_cast<const T*>(weight),
          rstd, static_cast<const T*>(grad_out), static_cast<T*>(grad_x));
    } else {
      RmsNormBackwardKernel<T, 1><<<grid, kThreads, 0, stream>>>(
          rows, dim, static_cast<const T*>(x), static_cast<const T*>(weight),
          rstd, static_cast<const T*>(grad_out), static_cast<T*>(grad_x));
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchSwiGluForward(ActDtype dtype, int64_t n, const void* gate,
                                const void* up, void* out,
                                cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    if (n % V == 0 && AllAligned({gate, up, out})) {
      SwiGluForwardKernel<T, V><<<GridFor(n / V), kThreads, 0, stream>>>(
          n / V, static_cast<const T*>(gate), static_cast<const T*>(up),
          static_cast<T*>(out));
    } else {
      SwiGluForwardKernel<T, 1><<<GridFor(n), kThreads, 0, stream>>>(
          n, static_cast<const T*>(gate), static_cast<const T*>(up),
          static_cast<T*>(out));
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchSwiGluBackward(ActDtype dtype, int64_t n, const void* gate,
                                 const void* up, const void* grad_out,
                                 void* grad_gate, void* grad_up,
                                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    if (n % V == 0 && AllAligned({gate, up, grad_out, grad_gate, grad_up})) {
      SwiGluBackwardKernel<T, V><<<GridFor(n / V), kThreads, 0, stream>>>(
          n / V, static_cast<const T*>(gate), static_cast<const T*>(up),
          static_cast<const T*>(grad_out), static_cast<T*>(grad_gate),
          static_cast<T*>(grad_up));
    } else {
      SwiGluBackwardKernel<T, 1><<<GridFor(n), kThreads, 0, stream>>>(
          n, static_cast<const T*>(gate), static_cast<const T*>(up),
          static_cast<const T*>(grad_out), static_cast<T*>(grad_gate),
          static_cast<T*>(grad_up));
    }
    return cudaGetLastError();
  });
}

cudaError_t LaunchRopeForward(ActDtype dtype, int64_t tokens, int64_t heads,
                              int64_t dim, const void* x, const void* cos,
                              const void* sin, void* out, cudaStream_t stream) {
  return LaunchRope(/*backward=*/false, dtype, tokens, heads, dim, x, cos, sin,
                    out, stream);
}

cudaError_t LaunchRopeBackward(ActDtype dtype, int64_t tokens, int64_t heads,
                               int64_t dim, const void* cos, const void* sin,
                               const void* grad_out, void* grad_x,
                               cudaStream_t stream) {
  return LaunchRope(/*backward=*/true, dtype, tokens, heads, dim, grad_out, cos,
                    sin, grad_x, stream);
}

cudaError_t LaunchMaskedMseForward(ActDtype dtype, int64_t tokens,
                                   int64_t width, const void* pred,
                                   const void* ref, const float* mask,
                                   float scale, float* partials, float* loss,
                                   cudaStream_t stream) {
  if (tokens <= 0 || width <= 0) {
    MseFinishKernel<<<1, kThreads, 0, stream>>>(0, partials, scale, loss);
    return cudaGetLastError();
  }
  cudaError_t err = ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    const bool vec = width % V == 0 && AllAligned({pred, ref});
    const int64_t packs = tokens * width / (vec ? V : 1);
    const int64_t blocks = CeilDiv(packs, kThreads);
    const unsigned grid = static_cast<unsigned>(
        blocks < kMseMaxPartials ? blocks : kMseMaxPartials);
    if (vec) {
      MsePartialKernel<T, V><<<grid, kThreads, 0, stream>>>(
          packs, width / V, static_cast<const T*>(pred),
          static_cast<const T*>(ref), mask, partials);
    } else {
      MsePartialKernel<T, 1><<<grid, kThreads, 0, stream>>>(
          packs, width, static_cast<const T*>(pred), static_cast<const T*>(ref),
          mask, partials);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    MseFinishKernel<<<1, kThreads, 0, stream>>>(static_cast<int>(grid),
                                                partials, scale, loss);
    return cudaGetLastError();
  });
  return err;
}

cudaError_t LaunchMaskedMseBackward(ActDtype dtype, int64_t tokens,
                                    int64_t width, const void* pred,
                                    const void* ref, const float* mask,
                                    float scale, const float* grad_loss,
                                    void* grad_pred, cudaStream_t stream) {
  if (tokens <= 0 || width <= 0) return cudaSuccess;
  return ByDtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = VecOf<T>();
    const bool vec = width % V == 0 && AllAligned({pred, ref, grad_pred});
    const int64_t packs = tokens * width / (vec ? V : 1);
    if (vec) {
      MseBackwardKernel<T, V><<<GridFor(packs), kThreads, 0, stream>>>(
          packs, width / V, static_cast<const T*>(pred),
          static_cast<const T*>(ref), mask, scale, grad_loss,
          static_cast<T*>(grad_pred));
    } else {
      MseBackwardKernel<T, 1><<<GridFor(packs), kThreads, 0, stream>>>(
          packs, width, static_cast<const T*>(pred), static_cast<const T*>(ref),
          mask, scale, grad_loss, static_cast<T*>(grad_pred));
    }
    return cudaGetLastError();
  });
}

}  // namespace roundhouse::engine::cuda
