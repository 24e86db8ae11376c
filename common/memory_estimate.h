#ifndef ROUNDHOUSE_COMMON_MEMORY_ESTIMATE_H_
#define ROUNDHOUSE_COMMON_MEMORY_ESTIMATE_H_

// Admission estimate of a quantization job's peak device memory, computed
// from the model's config.json and the job's scheme before any tensor is
// allocated. Torch-free so that the coordinator (admission, placement) and
// the engine (`roundhouse-worker estimate`) share one model.
//
// The model follows what the engine allocates (worker/engine/pipeline.cc,
// signround.cc, quantizer.cc, fused_qdq.h, decoder_block.cc, evaluation.cc),
// and reports the peak of one GPU (device 0, the busiest: with several GPUs
// the others hold copies of two chains instead of the pipeline's three to
// five). Phases:
//  - tuning: one block's weights in the compute dtype (the embedding and
//    the LM head stay on the host: tokens are embedded on the CPU); the
//    activation chains [N,T,H] q_in and fp_out (fp_out overwrote fp_in in
//    place, or fp_in is q_in; none in low-memory mode: TuneBlock streams
//    micro-batches from the host); the micro-batch
//    buffers; per quantized weight element the rounding offset v (fp32),
//    its gradient (fp32), the best copy (fp32) and the QDQ weight (compute
//    dtype); with the libtorch QDQ path (CPU, or CUDA without the fused
//    kernels) also two fp32 intermediates autograd keeps for the
//    straight-through backward and the fp32 grouped copy of the weight;
//    per micro-batch token the activations the decoder block saves for
//    backward: with fused attention (CUDA) q, k, v, the output and the
//    log-sum-exp, with eager attention (CPU) also the [B,heads,T,T]
//    probabilities in fp32 and in the compute dtype; with the fused block
//    ops (CUDA builds with the fused kernels) the RMSNorm, SwiGLU and loss
//    steps keep compute-dtype inputs instead of the libtorch chains' fp32
//    copies and SiLU output;
//  - finalize: the end of TuneBlock, when every Linear's final QDQ results
//    (int32 codes, QDQ weight) exist next to the tunables and best copies;
//  - block_forward: the q_next forward after tuning, written chunk by chunk
//    over q_in in place (two chains: q_in and fp_out, plus one chunk's
//    transients) with the quantizers still alive;
//  - evaluation: evaluation.cc keeps the whole original language model
//    (every block, the embedding, an untied LM head) resident on the device
//    in the compute dtype while it runs the evaluation samples.
// Peak = max over the phases plus a fixed runtime allowance (CUDA context,
// cuBLAS workspace) and a slack fraction for the caching allocator.
//
// Upper-bound choices: every block Linear is assumed quantized with the
// global scheme (bits-16 overrides and ignore_layers only lower the real
// figure), nsamples samples of seqlen tokens each. Not counted: the
// allocator cache left by the eager warm-up iterations before a CUDA graph
// capture (reclaimable), NCCL buffers, the ColQwen3 projection head (small),
// kernel workspaces. It is an estimate, not a guarantee.
//
// All functions are pure and thread-safe. Sizes are bytes.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace roundhouse {

// The decoder (text) shape of a checkpoint, as the engine reads it
// (worker/engine/model_config.cc): for qwen3_vl / colqwen3 from
// text_config, otherwise from the top level.
struct ModelShape {
  std::string model_type;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;    // hidden_size / num_heads when absent
  // 0 when absent: the evaluation estimate then leaves out the embedding.
  int64_t vocab_size = 0;
  bool qk_norm = false;    // qwen3, qwen3_vl, colqwen3
  bool attention_bias = false;  // q/k/v biases (qwen2 always)
  bool tie_word_embeddings = false;
  std::string torch_dtype;  // "" when absent
};

// Parses a config.json object. InvalidArgument naming `config.json` and the
// key, e.g. "config.json: text_config.hidden_size is missing".
absl::StatusOr<ModelShape> ModelShapeFromConfig(const nlohmann::json& config);
// Reads <model_dir>/config.json (NotFound / InvalidArgument naming the file).
absl::StatusOr<ModelShape> ReadModelShape(const std::string& model_dir);

// Samples per chunk of the pipeline's no-grad block forwards (the FP
// target and the next quantized chain), shared with the engine so that the
// estimate follows what it allocates. Chunks hold about kForwardChunkTokens
// tokens, never fewer samples than the tuning micro-batch (batch_size) and
// never more than `nsamples`: single-sample forwards of short sequences are
// launch-bound (512 of them per block for 256 x 512 tokens at batch 1).
// Low-memory mode moves one sample at a time. Result >= 1.
inline constexpr int64_t kForwardChunkTokens = 4096;
int64_t ForwardChunkSamples(int64_t nsamples, int64_t seqlen, int batch_size,
                            bool low_memory);

// The spec settings the estimate depends on, with the proto defaults.
struct EstimateInputs {
  int nsamples = 128;
  int seqlen = 2048;
  int batch_size = 8;  // capped to nsamples
  int gradient_accumulate_steps = 1;
  int iters = 200;  // 0 = round-to-nearest (no autograd state)
  int bits = 4;
  int group_size = 128;  // -1 = one group per row
  bool enable_minmax_tuning = true;
  bool enable_quanted_input = true;
  // "auto", "float32", "bfloat16", "float16". "auto" = float32 on the CPU,
  // the checkpoint dtype on CUDA (config.json torch_dtype; float32, the
  // larger, when absent).
  std::string compute_dtype = "auto";
  bool evaluation_enabled = true;
  int eval_samples = 16;
};

struct EstimateOptions {
  std::string device = "cuda";  // "cuda" or "cpu" (host RAM)
  bool low_memory = false;      // QuantizeRequest::low_memory
  // CUDA context, cuBLAS handles and workspace, kernel images: a fixed
  // allowance (not counted on the CPU).
  int64_t cuda_context_bytes = int64_t{600} << 20;
  // Added to the peak phase on CUDA for the caching allocator's block
  // rounding and fragmentation.
  double allocator_slack_fraction = 0.10;
  // Whether the decoder block uses scaled-dot-product attention (no
  // [B,heads,T,T] scores kept). The engine does so on CUDA only.
  bool fused_attention_on_cuda = true;
  // Whether the CUDA build has the fused QDQ kernels (worker/engine/
  // fused_qdq.h): no fp32 STE intermediates and no fp32 grouped weight copy.
  bool fused_kernels_on_cuda = true;
  // GPUs of a data-parallel job (`--gpus`): the micro-batch is split
  // across them; the estimate is the peak of GPU 0. 1 on the CPU.
  int gpus = 1;
};

// Every term in bytes. Phase totals add the terms they hold; total_bytes =
// context_bytes + max(phase) + slack_bytes.
struct MemoryEstimate {
  // Resolved inputs.
  std::string device;
  std::string compute_dtype;  // "float32", "bfloat16", "float16"
  bool fused_attention = false;
  bool fused_kernels = false;
  bool low_memory = false;
  int gpus = 1;
  int64_t samples = 0, seqlen = 0, forward_chunk = 0;
  int64_t micro_batch = 0;  // samples of one backward on GPU 0
  int64_t quantized_elements = 0;  // weight elements of one block's Linears

  int64_t context_bytes = 0;
  int64_t block_weights_bytes = 0;  // one block, compute dtype
  int64_t chain_bytes = 0;          // one [N,T,H] chain, compute dtype
  int chains_tuning = 0;            // chains on the device while tuning
  int chains_forward = 0;           // ... during the q_next forward
  int64_t masks_bytes = 0;          // attention/loss masks [N,T] on device
  int64_t batch_buffers_bytes = 0;  // TuneBlock micro-batch gather buffers
  int64_t tunables_bytes = 0;       // v + min/max scales, fp32
  int64_t gradients_bytes = 0;      // their .grad, fp32
  int64_t best_copy_bytes = 0;      // best-so-far copies, fp32
  int64_t grouped_copy_bytes = 0;   // group min/max (+ fp32 grouped copy)
  int64_t qdq_weights_bytes = 0;    // QDQ weights [out,in], compute dtype
  int64_t qdq_saved_bytes = 0;      // fp32 STE intermediates kept for backward
  int64_t qdq_transient_bytes = 0;  // temporaries of the largest Linear
  int64_t activations_saved_bytes = 0;      // one micro-batch, for backward
  int64_t activations_transient_bytes = 0;  // at the backward peak
  int64_t forward_transient_bytes = 0;      // one no-grad forward chunk
  int64_t evaluation_chain_bytes = 0;       // one eval [E,T,H] chain
  int64_t resident_model_bytes = 0;  // evaluation: the whole text model

  int64_t tuning_bytes = 0;
  int64_t finalize_bytes = 0;  // TuneBlock's final QDQ results
  int64_t block_forward_bytes = 0;
  int64_t evaluation_bytes = 0;
  // "tuning", "finalize", "block_forward" or "evaluation".
  std::string peak_phase;
  int64_t slack_bytes = 0;
  int64_t total_bytes = 0;

  // Every field above, keys as the field names.
  nlohmann::json ToJson() const;
};

// InvalidArgument naming the field when an input is out of range (e.g.
// "scheme.seqlen must be positive, got 0") or the device is unknown.
absl::StatusOr<MemoryEstimate> EstimatePeakMemory(
    const ModelShape& model, const EstimateInputs& inputs,
    const EstimateOptions& options = {});

}  // namespace roundhouse

#endif  // ROUNDHOUSE_COMMON_MEMORY_ESTIMATE_H_
