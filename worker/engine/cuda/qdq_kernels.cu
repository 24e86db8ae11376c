#include "worker/engine/cuda/qdq_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "worker/engine/cuda/device_common.cuh"

// Bit-identity with the torch chain needs every fp32 operation rounded on
// its own, exactly as one libtorch elementwise kernel per op does it. The
// _rn intrinsics are never contracted into FMAs, whatever -fmad says, so
// all arithmetic that feeds the forward value goes through them.

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


// torch's clamp/clamp_min/clamp_max on CUDA: NaN propagates.
__device__ __forceinline__ float Clamp(float x, float lo, float hi) {
  return isnan(x) ? x : fminf(fmaxf(x, lo), hi);
}
__device__ __forceinline__ float ClampMin(float x, float lo) {
  return isnan(x) ? x : fmaxf(x, lo);
}
__device__ __forceinline__ float ClampMax(float x, float hi) {
  return isnan(x) ? x : fminf(x, hi);
}

// RoundSte's forward value, x + (round(x) - x), computed literally: it
// equals rint(x) except for the sign of a zero result, which the sym output
// s * q then carries.
__device__ __forceinline__ float RoundSteValue(float x) {
  return __fadd_rn(x, __fsub_rn(rintf(x), x));
}

__device__ __forceinline__ float HalfRound(float x) {
  return __half2float(__float2half_rn(x));
}

// Per-row quantities of LinearQuantizer::Compute().
struct Row {
  float lo, hi;    // scaled group range
  float s_pre;     // fp16-rounded scale before the threshold clamp
  float s;         // the scale
  float z;         // asym zero point (RoundSte value); 0 for sym
  float qmin, qmax;
  bool lo_branch;  // sym: the peak came from -lo (hi < -lo)
};

// `inv_div` is float(1 / divisor) of the scale's scalar division: libtorch
// on CUDA computes tensor / CPU-scalar as tensor * (1 / scalar) in fp32
// (div_true_kernel_cuda), so the kernel must do the same to match bits.
template <bool kSym>
__device__ __forceinline__ Row MakeRow(float lo, float hi, int bits,
                                       float inv_div, float thr) {
  Row row;
  row.lo = lo;
  row.hi = hi;
  if (kSym) {
    const float m = static_cast<float>(1 << (bits - 1));
    const float a = -lo;
    row.lo_branch = hi < a;
    const float peak = row.lo_branch ? a : -hi;
    row.s_pre = HalfRound(__fmul_rn(peak, inv_div));
    row.s = row.s_pre < 0.f ? ClampMax(row.s_pre, -thr)
                            : ClampMin(row.s_pre, thr);
    row.z = 0.f;
    row.qmin = -m;
    row.qmax = m - 1.f;
  } else {
    row.lo_branch = false;
    row.s_pre = HalfRound(__fmul_rn(__fsub_rn(hi, lo), inv_div));
    row.s = ClampMin(row.s_pre, thr);
    row.z = RoundSteValue(__fdiv_rn(-lo, row.s));
    row.qmin = 0.f;
    row.qmax = static_cast<float>((1 << bits) - 1);
  }
  return row;
}

__device__ __forceinline__ float Clamp01(float x) { return Clamp(x, 0.f, 1.f); }

struct KernelArgs {
  int64_t out, in, group, ngroups;
  int bits;
  float inv_div, thr;
};

// kVec: elements per lane and access (1, or 4 when group and in are
// multiples of 4 and the buffers 16-byte aligned).
template <typename T, bool kSym, int kVec>
__global__ void __launch_bounds__(kThreads)
    QdqForwardKernel(KernelArgs args, const T* __restrict__ weight,
                     const float* __restrict__ v, float* min_scale,
                     float* max_scale, const float* __restrict__ wmin,
                     const float* __restrict__ wmax, T* __restrict__ out) {
  const int64_t rows = args.out * args.ngroups;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                    threadIdx.x / kWarpSize;
  if (r >= rows) return;  // uniform per warp
  const int lane = threadIdx.x % kWarpSize;
  float lo = wmin[r];
  float hi = wmax[r];
  if (min_scale != nullptr) {
    const float ms = Clamp01(min_scale[r]);
    const float xs = Clamp01(max_scale[r]);
    // Every lane has read the old values before lane 0 writes.
    __syncwarp();
    if (lane == 0) {
      min_scale[r] = ms;
      max_scale[r] = xs;
    }
    lo = __fmul_rn(lo, ms);
    hi = __fmul_rn(hi, xs);
  }
  const Row row = MakeRow<kSym>(lo, hi, args.bits, args.inv_div, args.thr);
  const int64_t o = r / args.ngroups;
  const int64_t col0 = (r % args.ngroups) * args.group;
  const int64_t valid =
      args.in - col0 < args.group ? args.in - col0 : args.group;
  const T* w_row = weight + o * args.in + col0;
  T* out_row = out + o * args.in + col0;
  const float* v_row = v + r * args.group;
  // valid is a multiple of kVec (the launcher's condition for kVec > 1).
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < valid;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> w = *reinterpret_cast<const Pack<T, kVec>*>(w_row + j);
    const Pack<float, kVec> vv =
        *reinterpret_cast<const Pack<float, kVec>*>(v_row + j);
    Pack<T, kVec> y;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float x = __fadd_rn(__fdiv_rn(ToFloat(w.e[k]), row.s), vv.e[k]);
      float c = RoundSteValue(x);
      if (!kSym) c = __fadd_rn(c, row.z);
      const float q = Clamp(c, row.qmin, row.qmax);
      y.e[k] = FromFloat<T>(kSym ? __fmul_rn(row.s, q)
                                 : __fmul_rn(row.s, __fsub_rn(q, row.z)));
    }
    *reinterpret_cast<Pack<T, kVec>*>(out_row + j) = y;
  }
}

template <typename T, bool kSym, int kVec>
__global__ void __launch_bounds__(kThreads)
    QdqBackwardKernel(KernelArgs args, const T* __restrict__ weight,
                      const float* __restrict__ v,
                      const float* __restrict__ min_scale,
                      const float* __restrict__ max_scale,
                      const float* __restrict__ wmin,
                      const float* __restrict__ wmax,
                      const T* __restrict__ grad_out,
                      float* __restrict__ grad_v,
                      float* __restrict__ grad_min_scale,
                      float* __restrict__ grad_max_scale) {
  const int64_t rows = args.out * args.ngroups;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                    threadIdx.x / kWarpSize;
  if (r >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const float w_lo = wmin[r];
  const float w_hi = wmax[r];
  float lo = w_lo;
  float hi = w_hi;
  if (min_scale != nullptr) {
    lo = __fmul_rn(lo, Clamp01(min_scale[r]));
    hi = __fmul_rn(hi, Clamp01(max_scale[r]));
  }
  const Row row = MakeRow<kSym>(lo, hi, args.bits, args.inv_div, args.thr);
  const int64_t o = r / args.ngroups;
  const int64_t col0 = (r % args.ngroups) * args.group;
  const int64_t valid =
      args.in - col0 < args.group ? args.in - col0 : args.group;
  const T* w_row = weight + o * args.in + col0;
  const T* g_row = grad_out + o * args.in + col0;
  const float* v_row = v + r * args.group;
  float* gv_row = grad_v + r * args.group;
  // d out_j / d s (z held fixed) = (q_j - z) - mask_j * w_j / s, summed
  // per element (q_j - z and w_j / s nearly cancel; summing them apart
  // would lose digits); d out_j / d z = s * (mask_j - 1).
  float sum_s = 0.f;   // sum g_j * ((q_j - z) - mask_j * w_j / s)
  float sum_nz = 0.f;  // sum over clamped j of g_j   (asym)
  for (int64_t j = static_cast<int64_t>(lane) * kVec; j < valid;
       j += kWarpSize * kVec) {
    const Pack<T, kVec> w = *reinterpret_cast<const Pack<T, kVec>*>(w_row + j);
    const Pack<T, kVec> g = *reinterpret_cast<const Pack<T, kVec>*>(g_row + j);
    const Pack<float, kVec> vv =
        *reinterpret_cast<const Pack<float, kVec>*>(v_row + j);
    Pack<float, kVec> gv;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float gk = ToFloat(g.e[k]);
      const float ws = __fdiv_rn(ToFloat(w.e[k]), row.s);
      const float x = __fadd_rn(ws, vv.e[k]);
      float c = RoundSteValue(x);
      if (!kSym) c = __fadd_rn(c, row.z);
      // clamp's backward passes the gradient where qmin <= c <= qmax.
      const bool mask = c >= row.qmin && c <= row.qmax;
      const float q = Clamp(c, row.qmin, row.qmax);
      gv.e[k] = mask ? gk * row.s : 0.f;
      const float qz = kSym ? q : q - row.z;
      sum_s += gk * (mask ? qz - ws : qz);
      if (!kSym && !mask) sum_nz += gk;
    }
    *reinterpret_cast<Pack<float, kVec>*>(gv_row + j) = gv;
  }
  // Padded columns: their output is dropped, so their gradient is 0.
  for (int64_t j = valid + lane; j < args.group; j += kWarpSize) {
    gv_row[j] = 0.f;
  }
  if (grad_min_scale == nullptr) return;
  const float ds = WarpSum(sum_s);  // z fixed
  if (!kSym) sum_nz = WarpSum(sum_nz);
  if (lane != 0) return;
  // The scale passed through .to(float16).to(float32): autograd casts the
  // gradient back through float16 there, so it is rounded to fp16 (and can
  // underflow to 0), which sign-SGD sees. Reproduced with HalfRound.
  float dlo, dhi;
  if (kSym) {
    // where(s<0, clamp_max(-thr), clamp_min(thr)) passes the gradient of
    // the branch taken where it did not clamp.
    const bool pass = row.s_pre < 0.f ? row.s_pre <= -args.thr
                                      : row.s_pre >= args.thr;
    const float dpeak = HalfRound(pass ? ds : 0.f) * args.inv_div;
    dlo = row.lo_branch ? -dpeak : 0.f;
    dhi = row.lo_branch ? 0.f : -dpeak;
  } else {
    // z = round_ste(-lo / s): dz/ds = lo / s^2, dz/dlo = -1 / s, and
    // d loss / dz = -s * sum_nz.
    const float ds_total = ds - sum_nz * row.lo / row.s;
    const float ds_raw = HalfRound(row.s_pre >= args.thr ? ds_total : 0.f);
    dhi = ds_raw * args.inv_div;
    dlo = -dhi + sum_nz;
  }
  grad_min_scale[r] = dlo * w_lo;
  grad_max_scale[r] = dhi * w_hi;
}

template <typename T, bool kSym, int kVec>
void LaunchQdqKernel(bool backward, dim3 grid, const KernelArgs& args,
                     const void* weight, const float* v, float* min_scale,
                     float* max_scale, const float* wmin, const float* wmax,
                     void* out_or_null, const void* grad_out, float* grad_v,
                     float* grad_min_scale, float* grad_max_scale,
                     cudaStream_t stream) {
  if (backward) {
    QdqBackwardKernel<T, kSym, kVec><<<grid, kThreads, 0, stream>>>(
        args, static_cast<const T*>(weight), v, min_scale, max_scale, wmin,
        wmax, static_cast<const T*>(grad_out), grad_v, grad_min_scale,
        grad_max_scale);
  } else {
    QdqForwardKernel<T, kSym, kVec><<<grid, kThreads, 0, stream>>>(
        args, static_cast<const T*>(weight), v, min_scale, max_scale, wmin,
        wmax, static_cast<T*>(out_or_null));
  }
}

template <typename T, bool kSym>
cudaError_t LaunchQdqTyped(bool backward, const KernelArgs& args,
                           const void* weight, const float* v,
                           float* min_scale, float* max_scale,
                           const float* wmin, const float* wmax,
                           void* out_or_null, const void* grad_out,
                           float* grad_v, float* grad_min_scale,
                           float* grad_max_scale, cudaStream_t stream) {
  const int64_t rows = args.out * args.ngroups;
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  // Four elements per access when every row segment starts 4-aligned
  // (group and in multiples of 4) and the base pointers are aligned: the
  // summation order changes with it, but it is fixed for a given shape.
  const bool vec4 = args.group % 4 == 0 && args.in % 4 == 0 &&
                    Aligned16(weight) && Aligned16(v) &&
                    Aligned16(backward ? grad_out : out_or_null) &&
                    (!backward || Aligned16(grad_v));
  if (vec4) {
    LaunchQdqKernel<T, kSym, 4>(backward, grid, args, weight, v, min_scale,
                                max_scale, wmin, wmax, out_or_null, grad_out,
                                grad_v, grad_min_scale, grad_max_scale,
                                stream);
  } else {
    LaunchQdqKernel<T, kSym, 1>(backward, grid, args, weight, v, min_scale,
                                max_scale, wmin, wmax, out_or_null, grad_out,
                                grad_v, grad_min_scale, grad_max_scale,
                                stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchQdqDtype(bool sym, bool backward, const KernelArgs& args,
                           const void* weight, const float* v,
                           float* min_scale, float* max_scale,
                           const float* wmin, const float* wmax, void* out,
                           const void* grad_out, float* grad_v,
                           float* grad_min_scale, float* grad_max_scale,
                           cudaStream_t stream) {
  if (sym) {
    return LaunchQdqTyped<T, true>(backward, args, weight, v, min_scale,
                                   max_scale, wmin, wmax, out, grad_out,
                                   grad_v, grad_min_scale, grad_max_scale,
                                   stream);
  }
  return LaunchQdqTyped<T, false>(backward, args, weight, v, min_scale,
                                  max_scale, wmin, wmax, out, grad_out, grad_v,
                                  grad_min_scale, grad_max_scale, stream);
}

cudaError_t LaunchQdq(QdqDtype dtype, const QdqShape& shape,
                      const QdqScheme& scheme, bool backward,
                      const void* weight, const float* v, float* min_scale,
                      float* max_scale, const float* wmin, const float* wmax,
                      void* out, const void* grad_out, float* grad_v,
                      float* grad_min_scale, float* grad_max_scale,
                      cudaStream_t stream) {
  if (scheme.bits < 1 || scheme.bits > 16 || shape.out < 0 || shape.in < 0 ||
      shape.group <= 0 || shape.ngroups < 0 ||
      shape.ngroups * shape.group < shape.in ||
      (min_scale == nullptr) != (max_scale == nullptr) ||
      (backward && min_scale != nullptr &&
       (grad_min_scale == nullptr || grad_max_scale == nullptr))) {
    return cudaErrorInvalidValue;
  }
  KernelArgs args;
  args.out = shape.out;
  args.in = shape.in;
  args.group = shape.group;
  args.ngroups = shape.ngroups;
  args.bits = scheme.bits;
  args.thr = scheme.scale_threshold;
  // The scalar divisor of the scale (m for sym, qmax for asym), as its fp32
  // reciprocal the way libtorch's CUDA division by a scalar forms it.
  const float divisor = scheme.sym
                            ? static_cast<float>(1 << (scheme.bits - 1))
                            : static_cast<float>((1 << scheme.bits) - 1);
  args.inv_div = 1.0f / divisor;
  if (backward && min_scale == nullptr) {
    grad_min_scale = nullptr;
    grad_max_scale = nullptr;
  }
  switch (dtype) {
    case QdqDtype::kFloat32:
      return LaunchQdqDtype<float>(scheme.sym, backward, args, weight, v,
                                   min_scale, max_scale, wmin, wmax, out,
                                   grad_out, grad_v, grad_min_scale,
                                   grad_max_scale, stream);
    case QdqDtype::kBFloat16:
      return LaunchQdqDtype<__nv_bfloat16>(
          scheme.sym, backward, args, weight, v, min_scale, max_scale, wmin,
          wmax, out, grad_out, grad_v, grad_min_scale, grad_max_scale, stream);
    case QdqDtype::kFloat16:
      return LaunchQdqDtype<__half>(scheme.sym, backward, args, weight, v,
                                    min_scale, max_scale, wmin, wmax, out,
                                    grad_out, grad_v, grad_min_scale,
                                    grad_max_scale, stream);
  }
  return cudaErrorInvalidValue;
}

__device__ __forceinline__ float SignOf(float g) {
  // torch.sign on CUDA: (0 < g) - (g < 0), so NaN gives 0.
  return static_cast<float>((0.f < g) - (g < 0.f));
}

__device__ __forceinline__ float StepOne(float p, float g, float alpha) {
  return __fadd_rn(p, __fmul_rn(alpha, SignOf(g)));
}

__global__ void SignStepVec4Kernel(int64_t n4, float4* __restrict__ param,
                                   const float4* __restrict__ grad,
                                   float4* __restrict__ best,
                                   const float* __restrict__ take,
                                   const float* __restrict__ alpha) {
  const bool keep = *take != 0.f;
  const float a = *alpha;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
       i < n4; i += stride) {
    float4 p = param[i];
    const float4 g = grad[i];
    if (keep) best[i] = p;
    p.x = StepOne(p.x, g.x, a);
    p.y = StepOne(p.y, g.y, a);
    p.z = StepOne(p.z, g.z, a);
    p.w = StepOne(p.w, g.w, a);
    param[i] = p;
  }
}

__global__ void SignStepScalarKernel(int64_t n, float* __restrict__ param,
                                     const float* __restrict__ grad,
                                     float* __restrict__ best,
                                     const float* __restrict__ take,
                                     const float* __restrict__ alpha) {
  const bool keep = *take != 0.f;
  const float a = *alpha;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
       i < n; i += stride) {
    const float p = param[i];
    if (keep) best[i] = p;
    param[i] = StepOne(p, grad[i], a);
  }
}

int StepBlocks(int64_t work, int threads) {
  // Grid-stride loops: a few waves of blocks are enough to fill the GPU.
  constexpr int64_t kMaxBlocks = 132 * 16;
  int64_t blocks = (work + threads - 1) / threads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<int>(blocks < 1 ? 1 : blocks);
}

}  // namespace

cudaError_t LaunchQdqForward(QdqDtype dtype, const QdqShape& shape,
                             const QdqScheme& scheme, const void* weight,
                             const float* v, float* min_scale,
                             float* max_scale, const float* wmin,
                             const float* wmax, void* out,
                             cudaStream_t stream) {
  return LaunchQdq(dtype, shape, scheme, /*backward=*/false, weight, v,
                   min_scale, max_scale, wmin, wmax, out, nullptr, nullptr,
                   nullptr, nullptr, stream);
}

cudaError_t LaunchQdqBackward(QdqDtype dtype, const QdqShape& shape,
                              const QdqScheme& scheme, const void* weight,
                              const float* v, const float* min_scale,
                              const float* max_scale, const float* wmin,
                              const float* wmax, const void* grad_out,
                              float* grad_v, float* grad_min_scale,
                              float* grad_max_scale, cudaStream_t stream) {
  // The backward kernel only reads the scales; the shared launcher's
  // pointer is non-const for the forward's in-place clamp.
  return LaunchQdq(dtype, shape, scheme, /*backward=*/true, weight, v,
                   const_cast<float*>(min_scale),
                   const_cast<float*>(max_scale), wmin, wmax, nullptr,
                   grad_out, grad_v, grad_min_scale, grad_max_scale, stream);
}

cudaError_t LaunchSignStep(int64_t n, float* param, const float* grad,
                           float* best, const float* take,
                           const float* alpha, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  constexpr int kStepThreads = 256;
  const auto aligned = [](const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  int64_t done = 0;
  if (aligned(param) && aligned(grad) && aligned(best) && n >= 4) {
    const int64_t n4 = n / 4;
    SignStepVec4Kernel<<<StepBlocks(n4, kStepThreads), kStepThreads, 0,
                         stream>>>(n4, reinterpret_cast<float4*>(param),
                                   reinterpret_cast<const float4*>(grad),
                                   reinterpret_cast<float4*>(best), take,
                                   alpha);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    done = n4 * 4;
  }
  if (done < n) {
    SignStepScalarKernel<<<StepBlocks(n - done, kStepThreads), kStepThreads,
                           0, stream>>>(n - done, param + done, grad + done,
                                        best + done, take, alpha);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace roundhouse::engine::cuda
