#include "worker/engine/quantizer.h"

#include <c10/util/Half.h>

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/engine/fused_qdq.h"

namespace roundhouse::engine {
namespace {

// q_scale_thresh of the reference (1e-5 for fp16 scales), as the fp16 value
// the reference's clamp on an fp16 tensor actually compares against.
float ScaleThreshold() { return static_cast<float>(c10::Half(1e-5f)); }

// Forward: round-half-to-even; backward: identity.
torch::Tensor RoundSte(const torch::Tensor& x) {
  return x + (torch::round(x) - x).detach();
}

}  // namespace

absl::Status ValidateQuantParams(const QuantParams& params) {
  if (params.bits != 2 && params.bits != 3 && params.bits != 4 &&
      params.bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bits must be 2, 3, 4 or 8 for a quantized layer, got ", params.bits));
  }
  if (params.group_size != -1 && params.group_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group_size must be -1 or positive, got ", params.group_size));
  }
  return absl::OkStatus();
}

GroupLayout MakeGroupLayout(int64_t out, int64_t in, const QuantParams& p) {
  GroupLayout l;
  l.out = out;
  l.in = in;
  l.group = (p.group_size <= 0 || in < p.group_size) ? in : p.group_size;
  l.ngroups = l.group > 0 ? (in + l.group - 1) / l.group : 0;
  return l;
}

LinearQuantizer::LinearQuantizer(torch::Tensor weight, QuantParams params,
                                 bool enable_minmax_tuning)
    : weight_(weight.detach()),
      params_(params),
      enable_minmax_tuning_(enable_minmax_tuning) {
  TORCH_CHECK(weight_.dim() == 2, "LinearQuantizer: weight must be 2-D");
  TORCH_CHECK(weight_.is_floating_point(),
              "LinearQuantizer: weight must be floating point");
  TORCH_CHECK(ValidateQuantParams(params).ok(),
              "LinearQuantizer: invalid quantization parameters");
  torch::NoGradGuard no_grad;
  layout_ = MakeGroupLayout(weight_.size(0), weight_.size(1), params_);
  // The range always contains 0 and is fixed for the whole tuning run. It
  // is taken in the weight's own dtype (converting to fp32 is exact and
  // monotonic, so the values are those of the fp32 padded copy) to avoid
  // an fp32 copy of the weight the fused path never needs.
  torch::Tensor w = weight_;
  const int64_t pad = layout_.padded_in() - layout_.in;
  if (pad > 0) w = torch::constant_pad_nd(w, {0, pad}, 0);
  w = w.reshape({layout_.rows(), layout_.group});
  wmin_ = std::get<0>(w.min(1)).to(torch::kFloat32).clamp_max(0);
  wmax_ = std::get<0>(w.max(1)).to(torch::kFloat32).clamp_min(0);
  auto opts =
      torch::TensorOptions().dtype(torch::kFloat32).device(weight_.device());
  v_ = torch::zeros({layout_.rows(), layout_.group}, opts)
           .set_requires_grad(true);
  if (enable_minmax_tuning_) {
    min_scale_ = torch::ones({layout_.rows()}, opts).set_requires_grad(true);
    max_scale_ = torch::ones({layout_.rows()}, opts).set_requires_grad(true);
  }
}

absl::StatusOr<LinearQuantizer> LinearQuantizer::Create(
    torch::Tensor weight, QuantParams params, bool enable_minmax_tuning) {
  if (!weight.defined() || weight.dim() != 2 || weight.numel() == 0) {
    return absl::InvalidArgumentError(
        "weight must be a non-empty 2-D tensor [out, in]");
  }
  if (!weight.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight must be floating point, got ",
                     std::string(c10::toString(weight.scalar_type()))));
  }
  if (auto s = ValidateQuantParams(params); !s.ok()) return s;
  try {
    return LinearQuantizer(std::move(weight), params, enable_minmax_tuning);
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
}

torch::Tensor LinearQuantizer::BuildGrouped() const {
  torch::NoGradGuard no_grad;
  torch::Tensor w = weight_.to(torch::kFloat32);
  const int64_t pad = layout_.padded_in() - layout_.in;
  if (pad > 0) w = torch::constant_pad_nd(w, {0, pad}, 0);
  return w.reshape({layout_.rows(), layout_.group}).contiguous();
}

bool LinearQuantizer::fused_active() const {
  const auto dtype = weight_.scalar_type();
  return fused_ && FusedQdqEnabledByEnv() && weight_.is_cuda() &&
         weight_.is_contiguous() &&
         (dtype == torch::kFloat32 || dtype == torch::kBFloat16 ||
          dtype == torch::kFloat16);
}

LinearQuantizer::Parts LinearQuantizer::Compute(
    const torch::Tensor& grouped, const torch::Tensor& min_s,
    const torch::Tensor& max_s) const {
  const float thr = ScaleThreshold();
  Parts parts;
  torch::Tensor lo = min_s.defined() ? wmin_ * min_s : wmin_;
  torch::Tensor hi = max_s.defined() ? wmax_ * max_s : wmax_;
  if (params_.sym) {
    const double m = std::ldexp(1.0, params_.bits - 1);
    torch::Tensor a = -lo;  // >= 0
    // The larger magnitude wins; on a tie the negative branch (-hi) does.
    torch::Tensor peak = torch::where(hi < a, a, -hi);
    torch::Tensor s = (peak / m).to(torch::kFloat16).to(torch::kFloat32);
    s = torch::where(s < 0, s.clamp_max(-thr), s.clamp_min(thr));
    torch::Tensor s2 = s.unsqueeze(1);
    torch::Tensor q = torch::clamp(RoundSte(grouped / s2 + v_), -m, m - 1);
    parts.qdq = s2 * q;
    parts.scale = s;
    parts.q = q + m;  // unsigned codes
  } else {
    const double qmax = std::ldexp(1.0, params_.bits) - 1;
    torch::Tensor s =
        ((hi - lo) / qmax).to(torch::kFloat16).to(torch::kFloat32);
    s = s.clamp_min(thr);
    torch::Tensor z = RoundSte(-lo / s);
    torch::Tensor s2 = s.unsqueeze(1);
    torch::Tensor z2 = z.unsqueeze(1);
    torch::Tensor q =
        torch::clamp(RoundSte(grouped / s2 + v_) + z2, 0.0, qmax);
    parts.qdq = s2 * (q - z2);
    parts.scale = s;
    parts.zero = z;
    parts.q = q;
  }
  return parts;
}

torch::Tensor LinearQuantizer::QdqForward() {
  if (fused_active()) {
    // Clamps the scales in place inside the kernel.
    return FusedQdq(weight_, v_, min_scale_, max_scale_, wmin_, wmax_,
                    params_.bits, params_.sym);
  }
  if (!grouped_.defined()) grouped_ = BuildGrouped();
  if (enable_minmax_tuning_) {
    torch::NoGradGuard no_grad;
    min_scale_.clamp_(0.0, 1.0);
    max_scale_.clamp_(0.0, 1.0);
  }
  Parts parts = Compute(grouped_, min_scale_, max_scale_);
  return parts.qdq.reshape({layout_.out, layout_.padded_in()})
      .narrow(1, 0, layout_.in)
      .to(weight_.scalar_type());
}

QdqResult LinearQuantizer::Finalize() const {
  torch::NoGradGuard no_grad;
  torch::Tensor min_c, max_c;
  if (enable_minmax_tuning_) {
    min_c = min_scale_.detach().clamp(0.0, 1.0);
    max_c = max_scale_.detach().clamp(0.0, 1.0);
  }
  Parts parts =
      Compute(grouped_.defined() ? grouped_ : BuildGrouped(), min_c, max_c);
  const GroupLayout& l = layout_;
  QdqResult r;
  r.weight_qdq = parts.qdq.reshape({l.out, l.padded_in()})
                     .narrow(1, 0, l.in)
                     .to(weight_.scalar_type())
                     .contiguous();
  r.scale = parts.scale.reshape({l.out, l.ngroups}).to(torch::kFloat16);
  if (params_.sym) {
    r.zero = torch::full(
        {l.out, l.ngroups}, static_cast<int64_t>(1) << (params_.bits - 1),
        torch::TensorOptions().dtype(torch::kInt32).device(weight_.device()));
  } else {
    r.zero = parts.zero.reshape({l.out, l.ngroups}).to(torch::kInt32);
  }
  r.codes = parts.q.reshape({l.out, l.padded_in()})
                .narrow(1, 0, l.in)
                .to(torch::kInt32)
                .contiguous();
  return r;
}

std::vector<torch::Tensor> LinearQuantizer::tunables() {
  if (!enable_minmax_tuning_) return {v_};
  return {v_, min_scale_, max_scale_};
}

std::vector<torch::Tensor> LinearQuantizer::minmax_tunables() {
  if (!enable_minmax_tuning_) return {};
  return {min_scale_, max_scale_};
}

std::vector<torch::Tensor> LinearQuantizer::SaveState() const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> state = {v_.detach().clone()};
  if (enable_minmax_tuning_) {
    state.push_back(min_scale_.detach().clone());
    state.push_back(max_scale_.detach().clone());
  }
  return state;
}

void LinearQuantizer::LoadState(const std::vector<torch::Tensor>& state) {
  TORCH_CHECK(state.size() == (enable_minmax_tuning_ ? 3u : 1u),
              "LinearQuantizer::LoadState: wrong number of tensors");
  torch::NoGradGuard no_grad;
  v_.copy_(state[0]);
  if (enable_minmax_tuning_) {
    min_scale_.copy_(state[1]);
    max_scale_.copy_(state[2]);
  }
}

QdqResult QuantizeRtn(const torch::Tensor& weight, const QuantParams& params) {
  // With min/max tuning off the scales are not applied at all, which is
  // what the reference's RTN path does (and equal to scales of exactly 1).
  return LinearQuantizer(weight, params, /*enable_minmax_tuning=*/false)
      .Finalize();
}

}  // namespace roundhouse::engine
