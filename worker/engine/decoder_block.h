#ifndef ROUNDHOUSE_WORKER_ENGINE_DECODER_BLOCK_H_
#define ROUNDHOUSE_WORKER_ENGINE_DECODER_BLOCK_H_

// One Llama / Qwen2 / Qwen3 (and Qwen3-VL text, text-only inputs) decoder
// layer in libtorch, following Hugging Face transformers' eager path
// (models.md §2): pre-norm, two residuals, GQA attention with 1-D
// rotate-half RoPE, optional per-head q/k RMSNorm (Qwen3), SwiGLU MLP.
//
// Stateless functions; thread-safe as long as the tensors passed in are not
// mutated concurrently. Generic in device and dtype (fp32 / bf16 / fp16):
// every op runs on the device of `hidden`.

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace roundhouse::engine {

struct BlockConfig {
  int hidden_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool qk_norm = false;   // Qwen3: self_attn.q_norm / k_norm weights [D]
  bool qkv_bias = false;  // Qwen2: q/k/v_proj biases required
};

// Weights of one block keyed by the tensor-name suffix after
// "<block_prefix>.<i>.", e.g. "input_layernorm.weight",
// "self_attn.q_proj.weight", "self_attn.q_proj.bias" (qwen2),
// "self_attn.q_norm.weight" (qwen3), "post_attention_layernorm.weight",
// "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight".
// A "<linear>.bias" present in the map is always applied (Llama
// attention_bias / mlp_bias); with qkv_bias it is required for q/k/v.
using BlockWeights = std::map<std::string, torch::Tensor>;

// The 7 Linear module suffixes (without ".weight"), in this fixed order:
// self_attn.q_proj, k_proj, v_proj, o_proj, mlp.gate_proj, up_proj,
// down_proj. These are the keys of `linear_override` and of the SignRound
// quantizer maps.
const std::vector<std::string>& BlockLinearSuffixes();

// Checks that every tensor DecoderBlockForward needs is present with the
// right shape (and that all share one device): InvalidArgument naming the
// tensor suffix and the expected / actual shape.
absl::Status ValidateBlockWeights(const BlockConfig& config,
                                  const BlockWeights& weights);

// hidden [B,T,H]; attention_mask [B,T] (1 = real token, 0 = pad; any
// integer or bool dtype). Position ids come from the mask: pos =
// cumsum(mask) - 1, and 1 where mask == 0 (models.md §2.6); keys are
// visible iff causal and not padding (fully masked query rows produce
// finite garbage, never NaN). RMSNorm in fp32 cast back before the weight
// multiply; cos/sin in fp32 cast to the model dtype; scores
// (q k^T) * D^-0.5 in the model dtype, softmax in fp32 cast back.
//
// `linear_override`: optional replacement weights [out, in] keyed by Linear
// suffix (e.g. "self_attn.q_proj" -> QDQ weight during tuning; gradients
// flow into them). Biases still come from `weights`.
//
// Attention: on CUDA tensors with libtorch >= 2.0 the block calls
// scaled_dot_product_attention (flash / memory-efficient kernels; no
// [B,nH,T,T] score tensor is kept for backward) unless
// options.fused_attention is false; elsewhere, and always on the CPU, the
// eager path above (so CPU results do not depend on the libtorch build).
// With options.no_padding the caller promises attention_mask is all ones,
// which lets the fused path use its causal-only kernel (no mask tensor, no
// host synchronisation). Padding query rows are left finite but differ
// between the two paths; they are masked out of every loss and never seen
// as keys. Env RH_DISABLE_FUSED_ATTENTION=1 forces the eager path
// (benchmarks).
//
// Precondition: ValidateBlockWeights(config, weights) is OK; otherwise
// throws c10::Error (callers at the engine edge convert it to a Status).
// Returns [B,T,H] in the dtype of hidden.
struct BlockForwardOptions {
  bool fused_attention = true;  // see above; false forces the eager path
  bool no_padding = false;      // attention_mask is all ones (caller's promise)
  // RMSNorm, RoPE and the SwiGLU gate as the fused CUDA ops of
  // fused_block_ops.h where FusedBlockOpsUsable(hidden) (CUDA builds, CUDA
  // tensors, RH_DISABLE_FUSED_BLOCK_OPS unset); values as the libtorch ops
  // up to fp32 summation order. false forces the libtorch ops.
  bool fused_elementwise = true;
};

// True when this build can run fused attention on `device` (CUDA device and
// libtorch >= 2.0).
bool FusedAttentionAvailable(const c10::Device& device);

torch::Tensor DecoderBlockForward(
    const BlockConfig& config, const BlockWeights& weights,
    const torch::Tensor& hidden, const torch::Tensor& attention_mask,
    const std::map<std::string, torch::Tensor>* linear_override = nullptr,
    const BlockForwardOptions& options = {});

// HF RMSNorm over the last dim: x.float() * rsqrt(mean(x^2) + eps), cast
// back to x's dtype, then multiplied by weight.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                      double eps);

// Position ids [B,T] int64 from a [B,T] attention mask (see above).
torch::Tensor PositionIdsFromMask(const torch::Tensor& attention_mask);

// cos, sin [B,T,D] in `dtype` for 1-D rotate-half RoPE at `positions`
// [B,T]: inv_freq[i] = 1 / theta^(2i/D) in fp32, emb = cat(f, f).
std::pair<torch::Tensor, torch::Tensor> RopeCosSin(
    const torch::Tensor& positions, int head_dim, double theta,
    c10::ScalarType dtype);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_DECODER_BLOCK_H_
