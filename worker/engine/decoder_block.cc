#include "worker/engine/decoder_block.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/env_switch.h"
#include "worker/engine/fused_block_ops.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace roundhouse::engine {
namespace {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status CheckTensor(const BlockWeights& weights, const std::string& name,
                         std::vector<int64_t> shape, bool required,
                         const c10::Device& device) {
  auto it = weights.find(name);
  if (it == weights.end() || !it->second.defined()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("block weight ", name, " is missing"));
  }
  const torch::Tensor& t = it->second;
  if (t.sizes() != c10::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block weight ", name, " has shape ", ShapeString(t.sizes()),
        ", expected ", ShapeString(shape)));
  }
  if (!t.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("block weight ", name, " is not floating point"));
  }
  if (t.device() != device) {
    return absl::InvalidArgumentError(
        absl::StrCat("block weight ", name, " is on ", t.device().str(),
                     " but input_layernorm.weight is on ", device.str()));
  }
  return absl::OkStatus();
}

const torch::Tensor* FindOrNull(const BlockWeights& weights,
                                const std::string& name) {
  auto it = weights.find(name);
  if (it == weights.end() || !it->second.defined()) return nullptr;
  return &it->second;
}

torch::Tensor Linear(const BlockWeights& weights,
                     const std::map<std::string, torch::Tensor>* overrides,
                     const std::string& suffix, const torch::Tensor& x) {
  const torch::Tensor* w = nullptr;
  if (overrides != nullptr) {
    auto it = overrides->find(suffix);
    if (it != overrides->end()) w = &it->second;
  }
  if (w == nullptr) w = &weights.at(suffix + ".weight");
  const torch::Tensor* b = FindOrNull(weights, suffix + ".bias");
  return torch::linear(x, *w, b != nullptr ? *b : torch::Tensor());
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

double LowestValue(c10::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case torch::kFloat16:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kFloat64:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

// [B,nKV,T,D] -> [B,nH,T,D]: query head j uses kv head j / rep.
torch::Tensor RepeatKv(const torch::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const int64_t b = x.size(0), nkv = x.size(1), t = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, nkv, rep, t, d}).reshape({b, nkv * rep, t, d});
}

// Key j is visible to query i iff j <= i and key j is a real token.
torch::Tensor AllowedKeys(const torch::Tensor& mask, int64_t seq) {
  const int64_t batch = mask.size(0);
  auto bool_opts =
      torch::TensorOptions().dtype(torch::kBool).device(mask.device());
  torch::Tensor causal = torch::ones({seq, seq}, bool_opts).tril();
  return causal.view({1, 1, seq, seq}) & (mask != 0).view({batch, 1, 1, seq});
}

// q [B,nH,T,D], k/v [B,nKV,T,D] -> [B,nH,T,D]; HF's eager attention.
torch::Tensor EagerAttention(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const torch::Tensor& mask,
                             int64_t rep) {
  const int64_t d = q.size(3), seq = q.size(2);
  torch::Tensor kr = RepeatKv(k, rep), vr = RepeatKv(v, rep);
  torch::Tensor scores =
      torch::matmul(q, kr.transpose(2, 3)) * std::pow(double(d), -0.5);
  // finfo(dtype).min, as in the eager path's additive mask: fully masked
  // rows stay finite (uniform weights) instead of NaN.
  scores = scores.masked_fill(AllowedKeys(mask, seq).logical_not(),
                              LowestValue(q.scalar_type()));
  torch::Tensor probs =
      torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  return torch::matmul(probs, vr);
}

// The same function through scaled_dot_product_attention.
torch::Tensor FusedAttention(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const torch::Tensor& mask,
                             bool no_padding, int64_t rep) {
#if TORCH_VERSION_MAJOR >= 2
  const int64_t seq = q.size(2);
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
  // The kernels read the shared kv heads directly (no repeat copy).
  const bool gqa = rep > 1;
  const torch::Tensor& kk = k;
  const torch::Tensor& vv = v;
#else
  const bool gqa = false;
  torch::Tensor kk = RepeatKv(k, rep), vv = RepeatKv(v, rep);
#endif
  if (no_padding) {
    return at::scaled_dot_product_attention(q, kk, vv, {}, 0.0,
                                            /*is_causal=*/true, c10::nullopt
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
                                            , gqa
#endif
    );
  }
  // Padding query rows would see no key at all (NaN in some kernels): let
  // them see every key instead. Their outputs are masked out of the loss
  // and, as keys, stay invisible to real tokens.
  torch::Tensor allowed = AllowedKeys(mask, seq) |
                          (mask == 0).view({mask.size(0), 1, seq, 1});
  return at::scaled_dot_product_attention(q, kk, vv, allowed, 0.0,
                                          /*is_causal=*/false, c10::nullopt
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
                                          , gqa
#endif
  );
#else
  (void)q, (void)k, (void)v, (void)mask, (void)no_padding, (void)rep;
  TORCH_CHECK(false, "fused attention needs libtorch >= 2.0");
#endif
}

}  // namespace

const std::vector<std::string>& BlockLinearSuffixes() {
  static const auto* const kSuffixes = new std::vector<std::string>{
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
      "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
      "mlp.down_proj"};
  return *kSuffixes;
}

absl::Status ValidateBlockWeights(const BlockConfig& c,
                                  const BlockWeights& weights) {
  if (c.hidden_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.head_dim <= 0 || c.intermediate_size <= 0) {
    return absl::InvalidArgumentError(
        "block config: hidden_size, num_heads, num_kv_heads, head_dim and "
        "intermediate_size must be positive");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block config: num_heads (", c.num_heads,
        ") is not a multiple of num_kv_heads (", c.num_kv_heads, ")"));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block config: head_dim must be even for RoPE, got ", c.head_dim));
  }
  const torch::Tensor* ln = FindOrNull(weights, "input_layernorm.weight");
  if (ln == nullptr) {
    return absl::InvalidArgumentError(
        "block weight input_layernorm.weight is missing");
  }
  const c10::Device dev = ln->device();
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim,
                inter = c.intermediate_size;
  struct Spec {
    const char* name;
    std::vector<int64_t> shape;
    bool required;
  };
  const std::vector<Spec> specs = {
      {"input_layernorm.weight", {h}, true},
      {"post_attention_layernorm.weight", {h}, true},
      {"self_attn.q_proj.weight", {q, h}, true},
      {"self_attn.k_proj.weight", {kv, h}, true},
      {"self_attn.v_proj.weight", {kv, h}, true},
      {"self_attn.o_proj.weight", {h, q}, true},
      {"mlp.gate_proj.weight", {inter, h}, true},
      {"mlp.up_proj.weight", {inter, h}, true},
      {"mlp.down_proj.weight", {h, inter}, true},
      {"self_attn.q_norm.weight", {c.head_dim}, c.qk_norm},
      {"self_attn.k_norm.weight", {c.head_dim}, c.qk_norm},
      {"self_attn.q_proj.bias", {q}, c.qkv_bias},
      {"self_attn.k_proj.bias", {kv}, c.qkv_bias},
      {"self_attn.v_proj.bias", {kv}, c.qkv_bias},
      {"self_attn.o_proj.bias", {h}, false},
      {"mlp.gate_proj.bias", {inter}, false},
      {"mlp.up_proj.bias", {inter}, false},
      {"mlp.down_proj.bias", {h}, false},
  };
  for (const Spec& s : specs) {
    if (auto st = CheckTensor(weights, s.name, s.shape, s.required, dev);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                      double eps) {
  torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * torch::rsqrt(var + eps);
  // The cast back happens before the weight multiply (HF semantics).
  return weight * xf.to(x.scalar_type());
}

torch::Tensor PositionIdsFromMask(const torch::Tensor& attention_mask) {
  torch::Tensor m = attention_mask.to(torch::kInt64);
  torch::Tensor pos = m.cumsum(1) - 1;
  return pos.masked_fill(m == 0, 1);
}

std::pair<torch::Tensor, torch::Tensor> RopeCosSin(
    const torch::Tensor& positions, int head_dim, double theta,
    c10::ScalarType dtype) {
  auto f32 =
      torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  torch::Tensor exponent = torch::arange(0, head_dim, 2,
                                         torch::TensorOptions()
                                             .dtype(torch::kInt64)
                                             .device(positions.device()))
                               .to(torch::kFloat32) /
                           static_cast<double>(head_dim);
  torch::Tensor inv_freq =
      torch::reciprocal(torch::pow(torch::scalar_tensor(theta, f32), exponent));
  torch::Tensor freqs =
      positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [B,T,D/2]
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

bool FusedAttentionAvailable(const c10::Device& device) {
#if TORCH_VERSION_MAJOR >= 2
  return device.is_cuda();
#else
  (void)device;
  return false;
#endif
}

torch::Tensor DecoderBlockForward(
    const BlockConfig& c, const BlockWeights& weights,
    const torch::Tensor& hidden, const torch::Tensor& attention_mask,
    const std::map<std::string, torch::Tensor>* linear_override,
    const BlockForwardOptions& options) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(2) == c.hidden_size,
              "DecoderBlockForward: hidden must be [B,T,", c.hidden_size, "]");
  TORCH_CHECK(attention_mask.dim() == 2 &&
                  attention_mask.size(0) == hidden.size(0) &&
                  attention_mask.size(1) == hidden.size(1),
              "DecoderBlockForward: attention_mask must be [B,T]");
  const int64_t batch = hidden.size(0), seq = hidden.size(1);
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, d = c.head_dim;
  const torch::Tensor mask = attention_mask.to(hidden.device());

  const bool fused_ops =
      options.fused_elementwise && FusedBlockOpsUsable(hidden);
  auto norm = [&](const torch::Tensor& x, const std::string& name) {
    const torch::Tensor& w = weights.at(name);
    if (fused_ops && w.scalar_type() == x.scalar_type()) {
      return FusedRmsNorm(x, w, c.rms_norm_eps);
    }
    return RmsNorm(x, w, c.rms_norm_eps);
  };

  // --- self attention ---
  torch::Tensor h = norm(hidden, "input_layernorm.weight");
  torch::Tensor q = Linear(weights, linear_override, "self_attn.q_proj", h)
                        .view({batch, seq, nh, d});
  torch::Tensor k = Linear(weights, linear_override, "self_attn.k_proj", h)
                        .view({batch, seq, nkv, d});
  torch::Tensor v = Linear(weights, linear_override, "self_attn.v_proj", h)
                        .view({batch, seq, nkv, d});
  if (c.qk_norm) {
    q = norm(q, "self_attn.q_norm.weight");
    k = norm(k, "self_attn.k_norm.weight");
  }
  auto [cos, sin] = RopeCosSin(PositionIdsFromMask(mask), c.head_dim,
                               c.rope_theta, q.scalar_type());  // [B,T,D]
  if (fused_ops) {
    // On [B,T,H,D], before the transpose: heads of a token share cos/sin.
    q = FusedRope(q, cos, sin).transpose(1, 2);  // [B,nH,T,D]
    k = FusedRope(k, cos, sin).transpose(1, 2);
    v = v.transpose(1, 2);
  } else {
    q = q.transpose(1, 2);  // [B,nH,T,D]
    k = k.transpose(1, 2);
    v = v.transpose(1, 2);
    cos = cos.unsqueeze(1);  // [B,1,T,D]
    sin = sin.unsqueeze(1);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
  }

  // Benchmarks compare against the eager path with this switch.
  static const bool fused_off = EnvSwitchOn("RH_DISABLE_FUSED_ATTENTION");
  torch::Tensor attn;
  if (options.fused_attention && !fused_off &&
      FusedAttentionAvailable(hidden.device())) {
    attn = FusedAttention(q, k, v, mask, options.no_padding, nh / nkv)
               .transpose(1, 2)
               .reshape({batch, seq, nh * d});
  } else {
    attn = EagerAttention(q, k, v, mask, nh / nkv)
               .transpose(1, 2)
               .reshape({batch, seq, nh * d});
  }
  attn = Linear(weights, linear_override, "self_attn.o_proj", attn);
  torch::Tensor x = hidden + attn;

  // --- MLP (SwiGLU) ---
  torch::Tensor h2 = norm(x, "post_attention_layernorm.weight");
  torch::Tensor gate = Linear(weights, linear_override, "mlp.gate_proj", h2);
  torch::Tensor up = Linear(weights, linear_override, "mlp.up_proj", h2);
  torch::Tensor act = fused_ops && gate.scalar_type() == up.scalar_type()
                          ? FusedSwiGlu(gate, up)
                          : torch::silu(gate) * up;
  torch::Tensor mlp = Linear(weights, linear_override, "mlp.down_proj", act);
  return x + mlp;
}

}  // namespace roundhouse::engine
