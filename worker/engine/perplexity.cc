#include "worker/engine/perplexity.h"

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

absl::Status TorchError(const c10::Error& e) {
  return absl::InternalError(absl::StrCat("libtorch: ", e.what_without_backtrace()));
}

absl::StatusOr<torch::Tensor> Load(const WeightLookup& lookup,
                                   const std::string& name,
                                   c10::ScalarType dtype,
                                   torch::Device device) {
  ASSIGN_OR_RETURN(torch::Tensor t, lookup(name));
  return t.to(device, dtype);
}

// Runs every block over `hidden` in chunks of options.batch_size.
absl::StatusOr<torch::Tensor> RunBlocks(const ModelLayout& layout,
                                        const std::vector<std::string>& names,
                                        const WeightLookup& lookup,
                                        torch::Tensor hidden,
                                        const torch::Tensor& mask,
                                        const ForwardOptions& options) {
  const BlockConfig cfg = MakeBlockConfig(layout.text);
  const int64_t n = hidden.size(0);
  const int64_t bs = std::max(1, options.batch_size);
  for (int b = 0; b < layout.text.num_layers; ++b) {
    ASSIGN_OR_RETURN(BlockWeights w,
                     LoadBlockWeights(layout, b, names, lookup, options.dtype,
                                      options.device));
    RETURN_IF_ERROR(ValidateBlockWeights(cfg, w));
    std::vector<torch::Tensor> outs;
    for (int64_t s = 0; s < n; s += bs) {
      const int64_t e = std::min(n, s + bs);
      outs.push_back(DecoderBlockForward(cfg, w, hidden.slice(0, s, e),
                                         mask.slice(0, s, e)));
    }
    hidden = torch::cat(outs, 0);
  }
  return hidden;
}

}  // namespace

BlockConfig MakeBlockConfig(const TextConfig& text) {
  BlockConfig c;
  c.hidden_size = text.hidden_size;
  c.num_heads = text.num_heads;
  c.num_kv_heads = text.num_kv_heads;
  c.head_dim = text.head_dim;
  c.intermediate_size = text.intermediate_size;
  c.rms_norm_eps = text.rms_norm_eps;
  c.rope_theta = text.rope_theta;
  c.qk_norm = text.qk_norm;
  c.qkv_bias = text.attention_bias;
  return c;
}

absl::StatusOr<BlockWeights> LoadBlockWeights(
    const ModelLayout& layout, int block, const std::vector<std::string>& names,
    const WeightLookup& lookup, c10::ScalarType dtype, torch::Device device) {
  const std::string prefix = layout.BlockName(block) + ".";
  BlockWeights w;
  try {
    for (const std::string& name : names) {
      if (!absl::StartsWith(name, prefix)) continue;
      ASSIGN_OR_RETURN(torch::Tensor t, Load(lookup, name, dtype, device));
      w.emplace(name.substr(prefix.size()), std::move(t));
    }
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
  if (w.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no tensors found for block ", prefix));
  }
  return w;
}

absl::StatusOr<torch::Tensor> EmbedTokens(const ModelLayout& layout,
                                          const WeightLookup& lookup,
                                          const torch::Tensor& ids,
                                          const ForwardOptions& options) {
  ASSIGN_OR_RETURN(torch::Tensor emb, lookup(layout.embed_tokens));
  try {
    const int64_t vocab = emb.size(0);
    torch::Tensor flat = ids.reshape({-1}).to(torch::kInt64).cpu();
    if (flat.numel() > 0) {
      const int64_t lo = flat.min().item<int64_t>();
      const int64_t hi = flat.max().item<int64_t>();
      if (lo < 0 || hi >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", lo < 0 ? lo : hi, " is outside the vocabulary of ",
            layout.embed_tokens, " (", vocab, " rows)"));
      }
    }
    // Gather on the CPU copy first: the embedding of a large vocabulary need
    // not be moved to the device.
    torch::Tensor rows = emb.index_select(0, flat.to(emb.device()));
    return rows.reshape({ids.size(0), ids.size(1), emb.size(1)})
        .to(options.device, options.dtype);
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
}

absl::StatusOr<torch::Tensor> FinalHiddenStates(
    const ModelLayout& layout, const std::vector<std::string>& names,
    const WeightLookup& lookup, const torch::Tensor& ids,
    const torch::Tensor& attention_mask, const ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  ASSIGN_OR_RETURN(torch::Tensor hidden,
                   EmbedTokens(layout, lookup, ids, options));
  try {
    torch::Tensor mask = attention_mask.to(options.device);
    ASSIGN_OR_RETURN(hidden,
                     RunBlocks(layout, names, lookup, hidden, mask, options));
    ASSIGN_OR_RETURN(torch::Tensor norm,
                     Load(lookup, layout.final_norm, options.dtype,
                          options.device));
    return RmsNorm(hidden, norm, layout.text.rms_norm_eps)
        .to(torch::kCPU, torch::kFloat32);
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
}

absl::StatusOr<torch::Tensor> ProjectTokenEmbeddings(
    const ModelLayout& layout, const WeightLookup& lookup,
    const torch::Tensor& h, const torch::Tensor& attention_mask) {
  if (!layout.projection_weight) {
    return absl::InvalidArgumentError(
        "embeddings: the model has no projection head");
  }
  torch::NoGradGuard no_grad;
  try {
    ASSIGN_OR_RETURN(torch::Tensor w, lookup(*layout.projection_weight));
    torch::Tensor e =
        torch::matmul(h.to(torch::kFloat32), w.cpu().to(torch::kFloat32).t());
    if (layout.projection_bias) {
      ASSIGN_OR_RETURN(torch::Tensor b, lookup(*layout.projection_bias));
      e = e + b.cpu().to(torch::kFloat32);
    }
    const double eps = std::numeric_limits<float>::epsilon();
    e = e / e.norm(2, -1, /*keepdim=*/true).clamp_min(eps);
    return e * attention_mask.cpu().to(torch::kFloat32).unsqueeze(-1);
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
}

absl::StatusOr<torch::Tensor> TokenOutputs(
    const ModelLayout& layout, const std::vector<std::string>& names,
    const WeightLookup& lookup, const torch::Tensor& ids,
    const torch::Tensor& attention_mask, const ForwardOptions& options) {
  ASSIGN_OR_RETURN(torch::Tensor h,
                   FinalHiddenStates(layout, names, lookup, ids,
                                     attention_mask, options));
  if (!layout.projection_weight) return h;
  return ProjectTokenEmbeddings(layout, lookup, h, attention_mask);
}

absl::StatusOr<double> Perplexity(const ModelLayout& layout,
                                  const std::vector<std::string>& names,
                                  const WeightLookup& lookup,
                                  const torch::Tensor& ids,
                                  const torch::Tensor& attention_mask,
                                  const ForwardOptions& options) {
  if (!layout.lm_head && !layout.text.tie_word_embeddings) {
    return absl::InvalidArgumentError(
        "perplexity: the model has no LM head (no lm_head tensor and "
        "tie_word_embeddings is false)");
  }
  ASSIGN_OR_RETURN(torch::Tensor h,
                   FinalHiddenStates(layout, names, lookup, ids,
                                     attention_mask, options));
  return PerplexityFromHidden(layout, lookup, h, ids, attention_mask);
}

absl::StatusOr<double> PerplexityFromHidden(const ModelLayout& layout,
                                            const WeightLookup& lookup,
                                            const torch::Tensor& h,
                                            const torch::Tensor& ids,
                                            const torch::Tensor& attention_mask) {
  std::string head;
  if (layout.lm_head) {
    head = *layout.lm_head;
  } else if (layout.text.tie_word_embeddings) {
    head = layout.embed_tokens;
  } else {
    return absl::InvalidArgumentError(
        "perplexity: the model has no LM head (no lm_head tensor and "
        "tie_word_embeddings is false)");
  }
  torch::NoGradGuard no_grad;
  try {
    ASSIGN_OR_RETURN(torch::Tensor w, lookup(head));
    w = w.cpu().to(torch::kFloat32);
    torch::Tensor hc = h.cpu().to(torch::kFloat32);
    torch::Tensor ids64 = ids.to(torch::kInt64).cpu();
    torch::Tensor m = attention_mask.to(torch::kInt64).cpu();
    double nll = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < hc.size(0); ++i) {
      torch::Tensor logits = torch::matmul(hc[i], w.t());  // [T,V]
      torch::Tensor logp = torch::log_softmax(logits, -1);
      const int64_t t = hc.size(1);
      torch::Tensor target = ids64[i].slice(0, 1, t);
      torch::Tensor valid = (m[i].slice(0, 0, t - 1) * m[i].slice(0, 1, t))
                                .to(torch::kBool);
      torch::Tensor lp =
          logp.slice(0, 0, t - 1).gather(1, target.unsqueeze(1)).squeeze(1);
      nll -= lp.masked_select(valid).to(torch::kFloat64).sum().item<double>();
      count += valid.sum().item<int64_t>();
    }
    if (count == 0) {
      return absl::InvalidArgumentError(
          "perplexity: no position with a real next token");
    }
    return std::exp(nll / static_cast<double>(count));
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
}

CosineStats TokenCosine(const torch::Tensor& a, const torch::Tensor& b,
                        const torch::Tensor& attention_mask) {
  torch::NoGradGuard no_grad;
  torch::Tensor cos = torch::cosine_similarity(
      a.to(torch::kFloat64), b.to(torch::kFloat64), /*dim=*/-1, /*eps=*/1e-12);
  torch::Tensor valid = attention_mask.cpu().to(torch::kBool);
  torch::Tensor sel = cos.cpu().masked_select(valid);
  CosineStats s;
  s.tokens = sel.numel();
  if (s.tokens > 0) {
    s.mean = sel.mean().item<double>();
    s.min = sel.min().item<double>();
  }
  return s;
}

}  // namespace roundhouse::engine
