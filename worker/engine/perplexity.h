#ifndef ROUNDHOUSE_WORKER_ENGINE_PERPLEXITY_H_
#define ROUNDHOUSE_WORKER_ENGINE_PERPLEXITY_H_

// Whole-model forward passes of the text tower, block by block (only one
// block's weights are materialised at a time): final hidden states, the
// ColQwen3 multi-vector embeddings, token cosine similarity between two
// weight sets, and language-model perplexity. Used by the evaluation stage
// of the pipeline and by the quality tests.
//
// Thread-compatible; every function is a pure function of its inputs.
// libtorch errors (c10::Error) are caught and returned as Internal.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/decoder_block.h"
#include "worker/engine/model_config.h"
#include <torch/torch.h>

namespace roundhouse::engine {

// Returns the tensor stored under a checkpoint name (original naming, e.g.
// "model.layers.0.self_attn.q_proj.weight"), in any dtype, on any device.
using WeightLookup =
    std::function<absl::StatusOr<torch::Tensor>(const std::string& name)>;

struct ForwardOptions {
  torch::Device device = torch::kCPU;
  c10::ScalarType dtype = torch::kFloat32;  // compute dtype
  int batch_size = 8;  // samples per forward chunk (bounds memory)
};

// The decoder-block hyper-parameters of `text`.
BlockConfig MakeBlockConfig(const TextConfig& text);

// The weights of block `block` keyed by suffix (every name of `names`
// starting with "<BlockName(block)>."), cast to `dtype` on `device`.
absl::StatusOr<BlockWeights> LoadBlockWeights(
    const ModelLayout& layout, int block, const std::vector<std::string>& names,
    const WeightLookup& lookup, c10::ScalarType dtype, torch::Device device);

// Embedding rows of `ids` [N,T] (int64): [N,T,H] in options.dtype on
// options.device. InvalidArgument when an id is outside the vocabulary.
absl::StatusOr<torch::Tensor> EmbedTokens(const ModelLayout& layout,
                                          const WeightLookup& lookup,
                                          const torch::Tensor& ids,
                                          const ForwardOptions& options);

// Final-norm output [N,T,H] (fp32, CPU) for ids/mask [N,T].
absl::StatusOr<torch::Tensor> FinalHiddenStates(
    const ModelLayout& layout, const std::vector<std::string>& names,
    const WeightLookup& lookup, const torch::Tensor& ids,
    const torch::Tensor& attention_mask, const ForwardOptions& options);

// What the model outputs per token: for ColQwen3 the L2-normalised
// projection of the final hidden state (models.md §1.6), otherwise the
// final hidden state itself. [N,T,D] fp32 on CPU.
absl::StatusOr<torch::Tensor> TokenOutputs(
    const ModelLayout& layout, const std::vector<std::string>& names,
    const WeightLookup& lookup, const torch::Tensor& ids,
    const torch::Tensor& attention_mask, const ForwardOptions& options);

// The ColQwen3 head over final hidden states h [N,T,H] (fp32, CPU):
// L2-normalised projection masked by attention_mask [N,T]. [N,T,D] fp32 CPU.
// InvalidArgument when the layout has no projection head.
absl::StatusOr<torch::Tensor> ProjectTokenEmbeddings(
    const ModelLayout& layout, const WeightLookup& lookup,
    const torch::Tensor& h, const torch::Tensor& attention_mask);

// Perplexity (definition below) from already computed final hidden states
// h [N,T,H] (fp32, CPU). Same errors as Perplexity.
absl::StatusOr<double> PerplexityFromHidden(const ModelLayout& layout,
                                            const WeightLookup& lookup,
                                            const torch::Tensor& h,
                                            const torch::Tensor& ids,
                                            const torch::Tensor& attention_mask);

// exp(mean negative log-likelihood) of next-token prediction over every
// position t whose token and successor are real (mask 1), with the LM head
// (lm_head, or the embedding when tied). InvalidArgument when the model has
// no LM head.
absl::StatusOr<double> Perplexity(const ModelLayout& layout,
                                  const std::vector<std::string>& names,
                                  const WeightLookup& lookup,
                                  const torch::Tensor& ids,
                                  const torch::Tensor& attention_mask,
                                  const ForwardOptions& options);

// Per-token cosine similarity of a [N,T,D] and b [N,T,D] over positions
// with mask 1: {"mean", "min", "tokens"}.
struct CosineStats {
  double mean = 0;
  double min = 0;
  int64_t tokens = 0;
};
CosineStats TokenCosine(const torch::Tensor& a, const torch::Tensor& b,
                        const torch::Tensor& attention_mask);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_PERPLEXITY_H_
