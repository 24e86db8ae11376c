#include "worker/engine/fused_block_ops.h"

#include "common/env_switch.h"
#include "worker/engine/fused_qdq.h"
#ifdef ROUNDHOUSE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "worker/engine/cuda/block_kernels.h"
#include "worker/engine/cuda/torch_interop.h"
#endif

namespace roundhouse::engine {

bool FusedBlockOpsUsable(const torch::Tensor& like) {
  static const bool off = EnvSwitchOn("RH_DISABLE_FUSED_BLOCK_OPS");
  if (off || !FusedKernelsCompiled() || !like.defined() || !like.is_cuda()) {
    return false;
  }
  const auto t = like.scalar_type();
  return t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16;
}

#ifdef ROUNDHOUSE_WITH_CUDA
namespace {

using cuda::CheckLaunch;
using cuda::KernelDtypeOf;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void CheckLike(const torch::Tensor& t, const torch::Tensor& like,
               const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ",
              t.device(), ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name,
              " has dtype ", t.scalar_type(), ", expected ",
              like.scalar_type());
}

cudaStream_t Stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor weight, double eps) {
    TORCH_CHECK(x.is_cuda(), "FusedRmsNorm: x must be a CUDA tensor");
    CheckLike(weight, x, "FusedRmsNorm", "weight");
    const int64_t dim = x.size(-1);
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == dim,
                "FusedRmsNorm: weight must be [", dim, "], got ",
                weight.sizes());
    c10::cuda::CUDAGuard guard(x.device());
    torch::Tensor xc = x.contiguous();
    torch::Tensor wc = weight.contiguous();
    const int64_t rows = dim > 0 ? xc.numel() / dim : 0;
    torch::Tensor out = torch::empty_like(xc);
    torch::Tensor rstd =
        torch::empty({rows}, xc.options().dtype(torch::kFloat32));
    CheckLaunch(cuda::LaunchRmsNormForward(
                    KernelDtypeOf(xc, "FusedRmsNorm", "x"), rows, dim,
                    xc.data_ptr(), wc.data_ptr(), static_cast<float>(eps),
                    out.data_ptr(), rstd.data_ptr<float>(), Stream()),
                "FusedRmsNorm forward launch");
    ctx->save_for_backward({xc, wc, rstd});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& w = saved[1];
    const torch::Tensor& rstd = saved[2];
    c10::cuda::CUDAGuard guard(x.device());
    const torch::Tensor g = grads[0].to(x.scalar_type()).contiguous();
    torch::Tensor dx = torch::empty_like(x);
    const int64_t dim = x.size(-1);
    CheckLaunch(cuda::LaunchRmsNormBackward(
                    KernelDtypeOf(x, "FusedRmsNorm", "x"), rstd.numel(), dim,
                    x.data_ptr(), w.data_ptr(), rstd.data_ptr<float>(),
                    g.data_ptr(), dx.data_ptr(), Stream()),
                "FusedRmsNorm backward launch");
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor gate,
                               torch::Tensor up) {
    TORCH_CHECK(gate.is_cuda(), "FusedSwiGlu: gate must be a CUDA tensor");
    CheckLike(up, gate, "FusedSwiGlu", "up");
    TORCH_CHECK(up.sizes() == gate.sizes(), "FusedSwiGlu: up has shape ",
                up.sizes(), ", gate ", gate.sizes());
    c10::cuda::CUDAGuard guard(gate.device());
    torch::Tensor g = gate.contiguous(), u = up.contiguous();
    torch::Tensor out = torch::empty_like(g);
    CheckLaunch(cuda::LaunchSwiGluForward(
                    KernelDtypeOf(g, "FusedSwiGlu", "gate"), g.numel(),
                    g.data_ptr(), u.data_ptr(), out.data_ptr(), Stream()),
                "FusedSwiGlu forward launch");
    ctx->save_for_backward({g, u});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& g = saved[0];
    const torch::Tensor& u = saved[1];
    c10::cuda::CUDAGuard guard(g.device());
    const torch::Tensor d = grads[0].to(g.scalar_type()).contiguous();
    torch::Tensor dg = torch::empty_like(g), du = torch::empty_like(u);
    CheckLaunch(
        cuda::LaunchSwiGluBackward(
            KernelDtypeOf(g, "FusedSwiGlu", "gate"), g.numel(), g.data_ptr(),
            u.data_ptr(), d.data_ptr(), dg.data_ptr(), du.data_ptr(), Stream()),
        "FusedSwiGlu backward launch");
    return {dg, du};
  }
};

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor cos, torch::Tensor sin) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4,
                "FusedRope: x must be a [B,T,H,D] CUDA tensor, got ",
                x.sizes());
    CheckLike(cos, x, "FusedRope", "cos");
    CheckLike(sin, x, "FusedRope", "sin");
    const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
    TORCH_CHECK(d % 2 == 0, "FusedRope: head dim must be even, got ", d);
    const std::vector<int64_t> cs = {b, t, d};
    TORCH_CHECK(cos.sizes() == c10::IntArrayRef(cs) &&
                    sin.sizes() == c10::IntArrayRef(cs),
                "FusedRope: cos and sin must be [", b, ",", t, ",", d,
                "], got ", cos.sizes(), " and ", sin.sizes());
    c10::cuda::CUDAGuard guard(x.device());
    torch::Tensor xc = x.contiguous(), cc = cos.contiguous(),
                  sc = sin.contiguous();
    torch::Tensor out = torch::empty_like(xc);
    CheckLaunch(
        cuda::LaunchRopeForward(KernelDtypeOf(xc, "FusedRope", "x"), b * t, h,
                                d, xc.data_ptr(), cc.data_ptr(), sc.data_ptr(),
                                out.data_ptr(), Stream()),
        "FusedRope forward launch");
    ctx->save_for_backward({cc, sc});
    ctx->saved_data["heads"] = h;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& cc = saved[0];
    const torch::Tensor& sc = saved[1];
    const int64_t h = ctx->saved_data["heads"].toInt();
    c10::cuda::CUDAGuard guard(cc.device());
    const torch::Tensor g = grads[0].to(cc.scalar_type()).contiguous();
    torch::Tensor dx = torch::empty_like(g);
    const int64_t d = g.size(3);
    CheckLaunch(cuda::LaunchRopeBackward(KernelDtypeOf(g, "FusedRope", "x"),
                                         g.size(0) * g.size(1), h, d,
                                         cc.data_ptr(), sc.data_ptr(),
                                         g.data_ptr(), dx.data_ptr(), Stream()),
                "FusedRope backward launch");
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

class MaskedMseFunction : public torch::autograd::Function<MaskedMseFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor pred,
                               torch::Tensor ref, torch::Tensor mask,
                               double scale) {
    TORCH_CHECK(pred.is_cuda() && pred.dim() == 3,
                "FusedMaskedMse: pred must be a [B,T,H] CUDA tensor, got ",
                pred.sizes());
    CheckLike(ref, pred, "FusedMaskedMse", "ref");
    TORCH_CHECK(ref.sizes() == pred.sizes(), "FusedMaskedMse: ref has shape ",
                ref.sizes(), ", pred ", pred.sizes());
    TORCH_CHECK(mask.defined() && mask.scalar_type() == torch::kFloat32 &&
                    mask.device() == pred.device() &&
                    mask.sizes() == pred.sizes().slice(0, 2),
                "FusedMaskedMse: mask must be float32 [", pred.size(0), ",",
                pred.size(1), "] on ", pred.device());
    c10::cuda::CUDAGuard guard(pred.device());
    torch::Tensor p = pred.contiguous(), r = ref.contiguous(),
                  m = mask.contiguous();
    auto f32 = p.options().dtype(torch::kFloat32);
    torch::Tensor partials = torch::empty({cuda::kMseMaxPartials}, f32);
    torch::Tensor loss = torch::empty({}, f32);
    const int64_t tokens = p.size(0) * p.size(1), width = p.size(2);
    CheckLaunch(cuda::LaunchMaskedMseForward(
                    KernelDtypeOf(p, "FusedMaskedMse", "pred"), tokens, width,
                    p.data_ptr(), r.data_ptr(), m.data_ptr<float>(),
                    static_cast<float>(scale), partials.data_ptr<float>(),
                    loss.data_ptr<float>(), Stream()),
                "FusedMaskedMse forward launch");
    ctx->save_for_backward({p, r, m});
    ctx->saved_data["scale"] = scale;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& p = saved[0];
    const torch::Tensor& r = saved[1];
    const torch::Tensor& m = saved[2];
    const double scale = ctx->saved_data["scale"].toDouble();
    c10::cuda::CUDAGuard guard(p.device());
    const torch::Tensor g = grads[0].to(torch::kFloat32).contiguous();
    torch::Tensor dp = torch::empty_like(p);
    CheckLaunch(
        cuda::LaunchMaskedMseBackward(
            KernelDtypeOf(p, "FusedMaskedMse", "pred"), p.size(0) * p.size(1),
            p.size(2), p.data_ptr(), r.data_ptr(), m.data_ptr<float>(),
            static_cast<float>(scale), g.data_ptr<float>(), dp.data_ptr(),
            Stream()),
        "FusedMaskedMse backward launch");
    return {dp, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor FusedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                           double eps) {
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor FusedSwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
  return SwiGluFunction::apply(gate, up);
}

torch::Tensor FusedRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
  return RopeFunction::apply(x, cos, sin);
}

torch::Tensor FusedMaskedMse(const torch::Tensor& pred,
                             const torch::Tensor& ref,
                             const torch::Tensor& mask, double scale) {
  return MaskedMseFunction::apply(pred, ref, mask, scale);
}

#else  // !ROUNDHOUSE_WITH_CUDA

torch::Tensor FusedRmsNorm(const torch::Tensor&, const torch::Tensor&, double) {
  TORCH_CHECK(false, "FusedRmsNorm needs a CUDA build");
}
torch::Tensor FusedSwiGlu(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "FusedSwiGlu needs a CUDA build");
}
torch::Tensor FusedRope(const torch::Tensor&, const torch::Tensor&,
                        const torch::Tensor&) {
  TORCH_CHECK(false, "FusedRope needs a CUDA build");
}
torch::Tensor FusedMaskedMse(const torch::Tensor&, const torch::Tensor&,
                             const torch::Tensor&, double) {
  TORCH_CHECK(false, "FusedMaskedMse needs a CUDA build");
}

#endif  // ROUNDHOUSE_WITH_CUDA

}  // namespace roundhouse::engine
