#ifndef ROUNDHOUSE_WORKER_ENGINE_EVALUATION_H_
#define ROUNDHOUSE_WORKER_ENGINE_EVALUATION_H_

// The evaluation stage of a job (issue 6): the original model against the
// EXPORTED quantized checkpoint, on the same held-out token ids, on the same
// device. docs/evaluation.md describes every metric, how it is measured and
// the quality gate.
//
// Two layers:
//   * pure metric functions over CPU tensors (token cosine / MSE, NaN/Inf
//     counts, MaxSim scores, score and ranking agreement, percentiles), each
//     with a closed-form definition so that tests can check known answers;
//   * EvaluateQuantizedModel, which runs both models and assembles the
//     "evaluation" object of test_results.json plus the gate verdict.
//
// Thread-compatible: pure functions, except that EvaluateQuantizedModel
// resets the CUDA caching allocator's peak statistics of the device it runs
// on (so run one evaluation per process at a time).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model_config.h"
#include "worker/engine/packing.h"
#include "worker/engine/perplexity.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/safetensors.h"
#include <torch/torch.h>

namespace roundhouse::engine {

// The report file the pipeline writes at the top of the artifact directory.
inline constexpr char kTestResultsFile[] = "test_results.json";

// ---- metrics --------------------------------------------------------------

// Per-token cosine similarity of a [N,T,D] and b [N,T,D] over the positions
// with mask [N,T] == 1, in float64. p5 is the 5th percentile (Percentile,
// linear interpolation). All zero when no position is selected. A NaN in
// either input makes the affected token's similarity NaN (and so the mean).
struct TokenSimilarity {
  double mean = 0;
  double min = 0;
  double p5 = 0;
  int64_t tokens = 0;
};
TokenSimilarity CompareTokens(const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& mask);

// Mean of (a - b)^2 over every element of the positions with mask 1
// (i.e. divided by tokens * D). 0 when no position is selected.
double MaskedMse(const torch::Tensor& a, const torch::Tensor& b,
                 const torch::Tensor& mask);

// Number of NaN / +-Inf elements of `t` (any dtype, any device).
int64_t CountNonFinite(const torch::Tensor& t);

// The q-quantile (q in [0, 1]) of `values` with linear interpolation
// between closest ranks (numpy's default): sorted v, h = (n-1) q,
// v[floor h] + (h - floor h)(v[floor h + 1] - v[floor h]). 0 when empty.
double Percentile(std::vector<double> values, double q);

// Pearson's r of x and y (same length >= 2). 0 when either is constant.
double Pearson(const std::vector<double>& x, const std::vector<double>& y);
// Spearman's rho: Pearson of the ranks, ties getting their average rank.
double Spearman(const std::vector<double>& x, const std::vector<double>& y);

// Late-interaction (ColBERT / ColPali MaxSim) scores: s[i][j] = sum over the
// real tokens t of query i of max over the real tokens u of document j of
// <q[i,t], d[j,u]>. queries [Q,Tq,D], documents [N,Td,D], masks [Q,Tq] and
// [N,Td]. Returns [Q,N] float64 on the CPU.
torch::Tensor MaxSimScores(const torch::Tensor& queries,
                           const torch::Tensor& query_mask,
                           const torch::Tensor& documents,
                           const torch::Tensor& document_mask);

// How well the quantized scores [Q,N] reproduce the fp scores [Q,N] over
// all Q*N pairs.
struct ScoreAgreement {
  double mean_abs_diff = 0;
  double max_abs_diff = 0;
  double pearson = 0;
  double spearman = 0;
  int64_t pairs = 0;
};
ScoreAgreement CompareScores(const torch::Tensor& fp,
                             const torch::Tensor& quantized);

// Retrieval agreement: for each query (row), the fp model's own top-1
// document (argmax of the fp row; the lowest index on ties) is looked up in
// the quantized model's ranking of that row. recall_at_k = fraction of
// queries whose fp top-1 is among the quantized top-k (ties in the
// quantized row counted pessimistically: a document ranks after every
// document with a strictly higher score and every other document with an
// equal score). self_recall_at_1 of each model: fraction of queries i whose
// top-1 is document i (meaningful when query i was derived from
// document i).
struct RetrievalAgreement {
  double recall_at_1 = 0;
  double recall_at_5 = 0;
  double fp_self_recall_at_1 = 0;
  double quantized_self_recall_at_1 = 0;
  int64_t queries = 0;
  int64_t documents = 0;
};
RetrievalAgreement CompareRankings(const torch::Tensor& fp,
                                   const torch::Tensor& quantized);

// ---- the evaluation stage ---------------------------------------------------

// The exported checkpoint to evaluate, with what is needed to dequantize its
// packed Linears: every module whose "<module>.qweight" is present is
// dequantized from its packed tensors with `packing` and params_by_module
// (a module missing there is an error naming it).
struct QuantizedArtifact {
  const Checkpoint* checkpoint = nullptr;  // the exported directory, opened
  Packing packing = Packing::kAutoRoundGptq;
  std::map<std::string, QuantParams> params_by_module;
  std::string format;  // export format name, recorded in the report
};

struct EvaluationInput {
  const ModelLayout* layout = nullptr;
  const Checkpoint* original = nullptr;  // the source checkpoint
  QuantizedArtifact quantized;
  // Held-out token ids and attention mask [N,T] (int64, CPU).
  torch::Tensor ids;
  torch::Tensor mask;
  ForwardOptions forward;  // device, compute dtype, chunk size
  std::string device_name = "cpu";  // "cpu" or "cuda" (labels, CUDA stats)
};

struct EvaluationThresholds {
  double min_token_cosine_similarity = 0.95;
  // ColQwen3 only: minimum RetrievalAgreement::recall_at_1 on the pool;
  // 0 = off. With a threshold set, a pool that cannot be built (fewer than
  // 2 samples or 4 real tokens) fails the gate.
  double min_recall_at_1 = 0;
};

// What EvaluateQuantizedModel measured (docs/evaluation.md lists every key).
struct EvaluationOutcome {
  // What was evaluated: format, samples, sequence_length, tokens, device,
  // compute_dtype.
  nlohmann::json info;
  // Numbers only (nested objects; {"fp": x, "quantized": y} pairs):
  // hidden_states, embeddings + retrieval (ColQwen3), perplexity (+
  // perplexity_relative_change), size, performance.
  nlohmann::json metrics;
  // How figures were measured, skipped parts (strings).
  nlohmann::json notes;
  // The verdict: gated_outputs ("hidden_states" / "embeddings"),
  // mean_token_cosine_similarity, min_token_cosine_similarity, tokens,
  // non_finite_quantized, passed, failures (array of strings).
  nlohmann::json gate;
  bool passed = false;
  // Every failed gate condition, "; "-joined ("" when passed).
  std::string message;
};

// Runs the original and the quantized model over input.ids and returns the
// metrics and the gate verdict. Both models are made resident on the device
// first (the original in the compute dtype; the quantized one as its packed
// tensors, dequantized block by block just before use), then timed over the
// same samples. Gate: at least one evaluated token, no NaN/Inf in the
// quantized outputs (hidden states, embeddings, perplexity), and mean token
// cosine similarity of the model's outputs (ColQwen3: the embeddings;
// others: the final hidden states) >= thresholds.min_token_cosine_similarity,
// and for ColQwen3 recall_at_1 >= thresholds.min_recall_at_1 when set.
// Errors: InvalidArgument for unusable inputs (empty ids, a packed module
// without params), Internal for libtorch failures.
absl::StatusOr<EvaluationOutcome> EvaluateQuantizedModel(
    const EvaluationInput& input, const EvaluationThresholds& thresholds);

// Sum of the sizes of the files `paths` (absolute). NotFound naming a file
// that cannot be stat'ed.
absl::StatusOr<uint64_t> TotalFileBytes(const std::vector<std::string>& paths);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_EVALUATION_H_
