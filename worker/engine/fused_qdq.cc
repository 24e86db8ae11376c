#include "worker/engine/fused_qdq.h"

#include <c10/util/Half.h>

#include <cstdlib>
#include <cstring>

#include "common/env_switch.h"
#ifdef ROUNDHOUSE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "worker/engine/cuda/qdq_kernels.h"
#include "worker/engine/cuda/torch_interop.h"
#endif

namespace roundhouse::engine {

bool FusedKernelsCompiled() {
#ifdef ROUNDHOUSE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool FusedQdqEnabledByEnv() {
  if (!FusedKernelsCompiled()) return false;
  return !EnvSwitchOn("RH_DISABLE_FUSED_QDQ");
}

#ifdef ROUNDHOUSE_WITH_CUDA
namespace {

using cuda::CheckLaunch;
using cuda::KernelDtypeOf;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void CheckF32(const torch::Tensor& t, const char* name,
              const torch::Tensor& weight, at::IntArrayRef shape) {
  TORCH_CHECK(t.defined(), "FusedQdq: ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "FusedQdq: ", name,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == weight.device(), "FusedQdq: ", name,
              " must be on ", weight.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "FusedQdq: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, "FusedQdq: ", name, " must have shape ",
              shape, ", got ", t.sizes());
}

struct Geometry {
  cuda::QdqShape shape;
  cuda::QdqScheme scheme;
};

Geometry CheckAndDescribe(const torch::Tensor& weight, const torch::Tensor& v,
                          const torch::Tensor& min_s,
                          const torch::Tensor& max_s,
                          const torch::Tensor& wmin, const torch::Tensor& wmax,
                          int64_t bits, bool sym) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2,
              "FusedQdq: weight must be a 2-D tensor [out, in]");
  TORCH_CHECK(weight.is_cuda(), "FusedQdq: weight must be a CUDA tensor, got ",
              weight.device());
  TORCH_CHECK(weight.is_contiguous(), "FusedQdq: weight must be contiguous");
  KernelDtypeOf(weight, "FusedQdq", "weight");
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8,
              "FusedQdq: bits must be 2, 3, 4 or 8, got ", bits);
  TORCH_CHECK(v.defined() && v.dim() == 2 && v.size(1) > 0,
              "FusedQdq: v must be a 2-D tensor [rows, group]");
  Geometry geo;
  geo.shape.out = weight.size(0);
  geo.shape.in = weight.size(1);
  geo.shape.group = v.size(1);
  geo.shape.ngroups = (geo.shape.in + geo.shape.group - 1) / geo.shape.group;
  const int64_t rows = geo.shape.out * geo.shape.ngroups;
  CheckF32(v, "v", weight, {rows, geo.shape.group});
  CheckF32(wmin, "wmin", weight, {rows});
  CheckF32(wmax, "wmax", weight, {rows});
  TORCH_CHECK(min_s.defined() == max_s.defined(),
              "FusedQdq: min_scale and max_scale must both be defined or "
              "both undefined");
  if (min_s.defined()) {
    CheckF32(min_s, "min_scale", weight, {rows});
    CheckF32(max_s, "max_scale", weight, {rows});
  }
  geo.scheme.bits = static_cast<int>(bits);
  geo.scheme.sym = sym;
  // q_scale_thresh as the fp16 value the reference compares against.
  geo.scheme.scale_threshold = static_cast<float>(c10::Half(1e-5f));
  return geo;
}

float* OptionalData(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

class FusedQdqFunction : public torch::autograd::Function<FusedQdqFunction> {
 public:
  // min/max scales are optional arguments (nullopt when min/max tuning is
  // off): custom Functions reject undefined tensor arguments.
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor weight,
                               torch::Tensor v,
                               c10::optional<torch::Tensor> min_opt,
                               c10::optional<torch::Tensor> max_opt,
                               torch::Tensor wmin, torch::Tensor wmax,
                               int64_t bits, bool sym) {
    const torch::Tensor min_s = min_opt.value_or(torch::Tensor());
    const torch::Tensor max_s = max_opt.value_or(torch::Tensor());
    const Geometry geo =
        CheckAndDescribe(weight, v, min_s, max_s, wmin, wmax, bits, sym);
    c10::cuda::CUDAGuard guard(weight.device());
    torch::Tensor out = torch::empty_like(weight);
    CheckLaunch(
        cuda::LaunchQdqForward(
            KernelDtypeOf(weight, "FusedQdq", "weight"), geo.shape, geo.scheme,
            weight.data_ptr(), v.data_ptr<float>(), OptionalData(min_s),
            OptionalData(max_s), wmin.data_ptr<float>(), wmax.data_ptr<float>(),
            out.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
        "FusedQdq forward launch");
    // The backward recomputes the per-element quantities from the inputs
    // instead of keeping a mask: no extra memory between the passes.
    if (min_s.defined()) {
      ctx->save_for_backward({weight, v, wmin, wmax, min_s, max_s});
    } else {
      ctx->save_for_backward({weight, v, wmin, wmax});
    }
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["sym"] = sym;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& weight = saved[0];
    const torch::Tensor& v = saved[1];
    const torch::Tensor& wmin = saved[2];
    const torch::Tensor& wmax = saved[3];
    const torch::Tensor min_s = saved.size() > 4 ? saved[4] : torch::Tensor();
    const torch::Tensor max_s = saved.size() > 5 ? saved[5] : torch::Tensor();
    const int64_t bits = ctx->saved_data["bits"].toInt();
    const bool sym = ctx->saved_data["sym"].toBool();
    const Geometry geo =
        CheckAndDescribe(weight, v, min_s, max_s, wmin, wmax, bits, sym);
    TORCH_CHECK(grads.size() == 1 && grads[0].defined(),
                "FusedQdq backward: expected one gradient");
    TORCH_CHECK(grads[0].scalar_type() == weight.scalar_type() &&
                    grads[0].sizes() == weight.sizes() &&
                    grads[0].device() == weight.device(),
                "FusedQdq backward: the gradient must match the weight's "
                "shape, dtype and device");
    c10::cuda::CUDAGuard guard(weight.device());
    const torch::Tensor grad_out = grads[0].contiguous();
    torch::Tensor grad_v = torch::empty_like(v);
    torch::Tensor grad_min, grad_max;
    if (min_s.defined()) {
      grad_min = torch::empty_like(min_s);
      grad_max = torch::empty_like(max_s);
    }
    CheckLaunch(
        cuda::LaunchQdqBackward(
            KernelDtypeOf(weight, "FusedQdq", "weight"), geo.shape, geo.scheme,
            weight.data_ptr(), v.data_ptr<float>(), OptionalData(min_s),
            OptionalData(max_s), wmin.data_ptr<float>(), wmax.data_ptr<float>(),
            grad_out.data_ptr(), grad_v.data_ptr<float>(),
            OptionalData(grad_min), OptionalData(grad_max),
            c10::cuda::getCurrentCUDAStream().stream()),
        "FusedQdq backward launch");
    // One entry per forward argument: weight, v, min_s, max_s, wmin, wmax,
    // bits, sym.
    return {torch::Tensor(), grad_v,          grad_min,        grad_max,
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void CheckStepTensor(const torch::Tensor& t, const char* name,
                     const torch::Tensor& param) {
  TORCH_CHECK(t.defined(), "FusedSignStep: ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "FusedSignStep: ", name,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == param.device(), "FusedSignStep: ", name,
              " must be on ", param.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "FusedSignStep: ", name,
              " must be contiguous");
}

}  // namespace
#endif  // ROUNDHOUSE_WITH_CUDA

torch::Tensor FusedQdq(const torch::Tensor& weight, const torch::Tensor& v,
                       const torch::Tensor& min_scale,
                       const torch::Tensor& max_scale,
                       const torch::Tensor& wmin, const torch::Tensor& wmax,
                       int bits, bool sym) {
#ifdef ROUNDHOUSE_WITH_CUDA
  TORCH_CHECK(min_scale.defined() == max_scale.defined(),
              "FusedQdq: min_scale and max_scale must both be defined or "
              "both undefined");
  const auto optional = [](const torch::Tensor& t) {
    return t.defined() ? c10::optional<torch::Tensor>(t) : c10::nullopt;
  };
  return FusedQdqFunction::apply(weight.detach(), v, optional(min_scale),
                                 optional(max_scale), wmin.detach(),
                                 wmax.detach(), static_cast<int64_t>(bits),
                                 sym);
#else
  (void)weight, (void)v, (void)min_scale, (void)max_scale, (void)wmin,
      (void)wmax, (void)bits, (void)sym;
  TORCH_CHECK(false,
              "FusedQdq: this build has no CUDA kernels (configure with "
              "-DROUNDHOUSE_ENABLE_CUDA=ON)");
#endif
}

void FusedSignStep(torch::Tensor param, const torch::Tensor& grad,
                   torch::Tensor best, const torch::Tensor& take,
                   const torch::Tensor& alpha) {
#ifdef ROUNDHOUSE_WITH_CUDA
  TORCH_CHECK(param.defined() && param.is_cuda(),
              "FusedSignStep: param must be a CUDA tensor");
  CheckStepTensor(param, "param", param);
  CheckStepTensor(grad, "grad", param);
  CheckStepTensor(best, "best", param);
  CheckStepTensor(take, "take", param);
  CheckStepTensor(alpha, "alpha", param);
  TORCH_CHECK(grad.sizes() == param.sizes() && best.sizes() == param.sizes(),
              "FusedSignStep: param ", param.sizes(), ", grad ", grad.sizes(),
              " and best ", best.sizes(), " must have the same shape");
  TORCH_CHECK(take.numel() == 1 && alpha.numel() == 1,
              "FusedSignStep: take and alpha must hold one element each");
  c10::cuda::CUDAGuard guard(param.device());
  // In-place update of tensors autograd may track (a leaf's data): the
  // kernel writes raw memory, exactly like the NoGradGuard'ed torch ops.
  CheckLaunch(cuda::LaunchSignStep(
                  param.numel(), param.data_ptr<float>(),
                  grad.data_ptr<float>(), best.data_ptr<float>(),
                  take.data_ptr<float>(), alpha.data_ptr<float>(),
                  c10::cuda::getCurrentCUDAStream().stream()),
              "FusedSignStep launch");
#else
  (void)param, (void)grad, (void)best, (void)take, (void)alpha;
  TORCH_CHECK(false,
              "FusedSignStep: this build has no CUDA kernels (configure with "
              "-DROUNDHOUSE_ENABLE_CUDA=ON)");
#endif
}

}  // namespace roundhouse::engine
