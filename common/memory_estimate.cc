#include "common/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace roundhouse {
namespace {

using nlohmann::json;

// Typed config.json fields, errors worded like the engine's model_config.cc
// ("config.json: text_config.hidden_size is missing").
class Fields {
 public:
  Fields(const json& obj, std::string path)
      : obj_(obj), path_(std::move(path)) {}

  bool Has(const std::string& key) const {
    return obj_.is_object() && obj_.contains(key) && !obj_.at(key).is_null();
  }
  absl::Status Error(const std::string& key, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: ", path_, key, " ", what));
  }
  absl::StatusOr<int64_t> Int(const std::string& key) const {
    if (!Has(key)) return Error(key, "is missing");
    const json& v = obj_.at(key);
    if (!v.is_number_integer()) return Error(key, "is not an integer");
    const int64_t x = v.get<int64_t>();
    if (x <= 0 || x > (int64_t{1} << 30)) {
      return Error(key, absl::StrCat("must be a positive integer, got ", x));
    }
    return x;
  }
  absl::StatusOr<int64_t> IntOr(const std::string& key, int64_t def) const {
    if (!Has(key)) return def;
    return Int(key);
  }
  absl::StatusOr<bool> BoolOr(const std::string& key, bool def) const {
    if (!Has(key)) return def;
    const json& v = obj_.at(key);
    if (!v.is_boolean()) return Error(key, "is not a boolean");
    return v.get<bool>();
  }
  absl::StatusOr<std::string> StringOr(const std::string& key,
                                       std::string def) const {
    if (!Has(key)) return def;
    const json& v = obj_.at(key);
    if (!v.is_string()) return Error(key, "is not a string");
    return v.get<std::string>();
  }

 private:
  const json& obj_;
  std::string path_;
};

// worker/engine/model_config.cc DetectFamily, as a model_type string.
absl::StatusOr<std::string> Family(const json& config) {
  if (config.contains("model_type") && config["model_type"].is_string()) {
    const std::string mt = config["model_type"].get<std::string>();
    if (mt == "llama" || mt == "qwen2" || mt == "qwen3" || mt == "qwen3_vl" ||
        mt == "colqwen3") {
      return mt;
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: model_type \"", mt,
        "\" is not supported (llama, qwen2, qwen3, qwen3_vl, colqwen3)"));
  }
  if (config.contains("architectures") && config["architectures"].is_array()) {
    for (const json& a : config["architectures"]) {
      if (!a.is_string()) continue;
      const std::string s = a.get<std::string>();
      if (s == "LlamaForCausalLM") return std::string("llama");
      if (s == "Qwen2ForCausalLM") return std::string("qwen2");
      if (s == "Qwen3ForCausalLM") return std::string("qwen3");
      if (s == "Qwen3VLForConditionalGeneration") return std::string("qwen3_vl");
      if (s == "ColQwen3") return std::string("colqwen3");
    }
  }
  return absl::InvalidArgumentError(
      "config.json: model_type is missing (and architectures names no "
      "supported model)");
}

int DtypeBytes(const std::string& dtype) {
  return dtype == "float32" ? 4 : 2;
}

// One Linear [out, in] under the global group size: padded elements of the
// grouped view [rows, G] and its row count (quantizer.h GroupLayout).
struct LinearGeometry {
  int64_t out = 0, in = 0, rows = 0, padded = 0;
};
LinearGeometry Geometry(int64_t out, int64_t in, int group_size) {
  LinearGeometry g;
  g.out = out;
  g.in = in;
  const int64_t group =
      (group_size <= 0 || in < group_size) ? in : int64_t{group_size};
  const int64_t ngroups = (in + group - 1) / group;
  g.rows = out * ngroups;
  g.padded = g.rows * group;
  return g;
}

}  // namespace

int64_t ForwardChunkSamples(int64_t nsamples, int64_t seqlen, int batch_size,
                            bool low_memory) {
  if (low_memory || nsamples <= 1) return 1;
  const int64_t by_tokens =
      std::max<int64_t>(1, kForwardChunkTokens / std::max<int64_t>(1, seqlen));
  return std::min(nsamples, std::max<int64_t>(by_tokens, batch_size));
}

absl::StatusOr<ModelShape> ModelShapeFromConfig(const json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        "config.json: top level is not a JSON object");
  }
  ModelShape m;
  Fields top(config, "");
  ASSIGN_OR_RETURN(const std::string family, Family(config));
  m.model_type = family;
  const bool mm = family == "qwen3_vl" || family == "colqwen3";
  const json* text = &config;
  if (mm) {
    auto it = config.find("text_config");
    if (it == config.end() || !it->is_object()) {
      return absl::InvalidArgumentError("config.json: text_config is missing");
    }
    text = &*it;
  }
  Fields t(*text, mm ? "text_config." : "");
  ASSIGN_OR_RETURN(m.hidden_size, t.Int("hidden_size"));
  ASSIGN_OR_RETURN(m.intermediate_size, t.Int("intermediate_size"));
  ASSIGN_OR_RETURN(m.num_layers, t.Int("num_hidden_layers"));
  ASSIGN_OR_RETURN(m.num_heads, t.Int("num_attention_heads"));
  ASSIGN_OR_RETURN(m.num_kv_heads, t.IntOr("num_key_value_heads", m.num_heads));
  if (m.num_heads % m.num_kv_heads != 0) {
    return t.Error("num_key_value_heads",
                   absl::StrCat("(", m.num_kv_heads,
                                ") must divide num_attention_heads (",
                                m.num_heads, ")"));
  }
  if (t.Has("head_dim")) {
    ASSIGN_OR_RETURN(m.head_dim, t.Int("head_dim"));
  } else {
    if (m.hidden_size % m.num_heads != 0) {
      return t.Error("head_dim", "is missing and hidden_size is not a "
                                 "multiple of num_attention_heads");
    }
    m.head_dim = m.hidden_size / m.num_heads;
  }
  ASSIGN_OR_RETURN(m.vocab_size, t.IntOr("vocab_size", 0));
  m.qk_norm = family == "qwen3" || mm;
  if (family == "qwen2") {
    m.attention_bias = true;
  } else {
    ASSIGN_OR_RETURN(m.attention_bias, t.BoolOr("attention_bias", false));
  }
  bool tie_top = false, tie_text = false;
  ASSIGN_OR_RETURN(tie_top, top.BoolOr("tie_word_embeddings", false));
  if (mm) {
    ASSIGN_OR_RETURN(tie_text, t.BoolOr("tie_word_embeddings", false));
  }
  m.tie_word_embeddings = tie_top || tie_text;
  for (const Fields* f : {&top, &t}) {
    for (const char* key : {"torch_dtype", "dtype"}) {
      if (m.torch_dtype.empty() && f->Has(key)) {
        ASSIGN_OR_RETURN(m.torch_dtype, f->StringOr(key, ""));
      }
    }
  }
  return m;
}

absl::StatusOr<ModelShape> ReadModelShape(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  json config = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON"));
  }
  auto shape = ModelShapeFromConfig(config);
  if (!shape.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, "/", shape.status().message()));
  }
  return shape;
}

json MemoryEstimate::ToJson() const {
  return json{
      {"device", device},
      {"compute_dtype", compute_dtype},
      {"fused_attention", fused_attention},
      {"fused_kernels", fused_kernels},
      {"low_memory", low_memory},
      {"gpus", gpus},
      {"samples", samples},
      {"seqlen", seqlen},
      {"micro_batch", micro_batch},
      {"forward_chunk", forward_chunk},
      {"quantized_elements", quantized_elements},
      {"context_bytes", context_bytes},
      {"block_weights_bytes", block_weights_bytes},
      {"chain_bytes", chain_bytes},
      {"chains_tuning", chains_tuning},
      {"chains_forward", chains_forward},
      {"masks_bytes", masks_bytes},
      {"batch_buffers_bytes", batch_buffers_bytes},
      {"tunables_bytes", tunables_bytes},
      {"gradients_bytes", gradients_bytes},
      {"best_copy_bytes", best_copy_bytes},
      {"grouped_copy_bytes", grouped_copy_bytes},
      {"qdq_weights_bytes", qdq_weights_bytes},
      {"qdq_saved_bytes", qdq_saved_bytes},
      {"qdq_transient_bytes", qdq_transient_bytes},
      {"activations_saved_bytes", activations_saved_bytes},
      {"activations_transient_bytes", activations_transient_bytes},
      {"forward_transient_bytes", forward_transient_bytes},
      {"evaluation_chain_bytes", evaluation_chain_bytes},
      {"resident_model_bytes", resident_model_bytes},
      {"tuning_bytes", tuning_bytes},
      {"finalize_bytes", finalize_bytes},
      {"block_forward_bytes", block_forward_bytes},
      {"evaluation_bytes", evaluation_bytes},
      {"peak_phase", peak_phase},
      {"slack_bytes", slack_bytes},
      {"total_bytes", total_bytes},
  };
}

absl::StatusOr<MemoryEstimate> EstimatePeakMemory(
    const ModelShape& model, const EstimateInputs& in,
    const EstimateOptions& options) {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be positive, got ", v));
  };
  for (auto [name, v] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"hidden_size", model.hidden_size},
           {"intermediate_size", model.intermediate_size},
           {"num_layers", model.num_layers},
           {"num_heads", model.num_heads},
           {"num_kv_heads", model.num_kv_heads},
           {"head_dim", model.head_dim},
           {"scheme.nsamples", in.nsamples},
           {"scheme.seqlen", in.seqlen},
           {"scheme.batch_size", in.batch_size},
           {"scheme.gradient_accumulate_steps",
            in.gradient_accumulate_steps}}) {
    if (auto s = positive(name, v); !s.ok()) return s;
  }
  if (in.iters < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme.iters must be >= 0, got ", in.iters));
  }
  if (in.group_size == 0 || in.group_size < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheme.group_size must be -1 or positive, got ", in.group_size));
  }
  if (in.evaluation_enabled && in.eval_samples <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "evaluation.eval_samples must be positive, got ", in.eval_samples));
  }
  if (options.device != "cuda" && options.device != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "device must be \"cpu\" or \"cuda\", got \"", options.device, "\""));
  }
  const bool cuda = options.device == "cuda";
  if (options.gpus < 1 || (options.gpus > 1 && !cuda)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gpus must be >= 1, and > 1 only on cuda, got ", options.gpus));
  }

  MemoryEstimate e;
  e.device = options.device;
  e.low_memory = options.low_memory;
  if (in.compute_dtype == "float32" || in.compute_dtype == "bfloat16" ||
      in.compute_dtype == "float16") {
    e.compute_dtype = in.compute_dtype;
  } else if (in.compute_dtype == "auto" || in.compute_dtype.empty()) {
    const std::string& d = model.torch_dtype;
    e.compute_dtype = !cuda ? "float32"
                      : (d == "bfloat16" || d == "float16") ? d
                                                             : "float32";
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheme.compute_dtype must be \"auto\", \"float32\", \"bfloat16\" or "
        "\"float16\", got \"", in.compute_dtype, "\""));
  }
  const int64_t eb = DtypeBytes(e.compute_dtype);
  e.fused_attention = cuda && options.fused_attention_on_cuda;
  e.fused_kernels = cuda && options.fused_kernels_on_cuda;
  e.gpus = options.gpus;

  const int64_t hid = model.hidden_size, inter = model.intermediate_size;
  const int64_t nh = model.num_heads, nkv = model.num_kv_heads;
  const int64_t d = model.head_dim;
  const int64_t qdim = nh * d, kvdim = nkv * d;
  const int64_t n = in.nsamples, t = in.seqlen;
  const bool train = in.iters > 0;
  e.samples = n;
  e.seqlen = t;
  // signround.cc: global batch = min(N, bs * gas), micro-batch = min(bs,
  // it), split across the replicas (replica 0 takes the first share).
  const int64_t global_bs = std::min<int64_t>(
      n, int64_t{in.batch_size} * in.gradient_accumulate_steps);
  const int64_t whole_mb = std::min<int64_t>(in.batch_size, global_bs);
  e.micro_batch = (whole_mb + options.gpus - 1) / options.gpus;
  // pipeline.cc: chunk of the no-grad block forwards.
  e.forward_chunk =
      ForwardChunkSamples(n, t, in.batch_size, options.low_memory);

  e.context_bytes = cuda ? options.cuda_context_bytes : 0;

  // ---- weights and quantizer state (one block) ---------------------------
  const std::vector<std::pair<int64_t, int64_t>> linears = {
      {qdim, hid},  {kvdim, hid}, {kvdim, hid}, {hid, qdim},
      {inter, hid}, {inter, hid}, {hid, inter}};
  int64_t weight_elems = 2 * hid;  // the two RMSNorm weights
  if (model.qk_norm) weight_elems += 2 * d;
  if (model.attention_bias) weight_elems += qdim + 2 * kvdim;
  int64_t largest_padded = 0, total_rows = 0;
  for (auto [out, inn] : linears) {
    const LinearGeometry g = Geometry(out, inn, in.group_size);
    weight_elems += out * inn;
    e.quantized_elements += out * inn;
    largest_padded = std::max(largest_padded, g.padded);
    total_rows += g.rows;
    // v [rows, G] plus min/max scales [rows], fp32.
    const int64_t tun = 4 * g.padded + (in.enable_minmax_tuning ? 8 * g.rows : 0);
    e.tunables_bytes += tun;
    if (train) e.gradients_bytes += tun;
    e.best_copy_bytes += tun;
    // wmin/wmax [rows] always; the fp32 grouped copy for the libtorch path.
    e.grouped_copy_bytes += 8 * g.rows + (e.fused_kernels ? 0 : 4 * g.padded);
    e.qdq_weights_bytes += eb * out * inn;
    // libtorch path: clamp input and clamp output of the STE, fp32
    // [rows, G]. The fused kernel keeps only its inputs.
    if (train && !e.fused_kernels) e.qdq_saved_bytes += 8 * g.padded;
  }
  e.block_weights_bytes = eb * weight_elems;
  // libtorch path: up to three fp32 [rows, G] temporaries of one Linear's
  // QDQ at a time; the fused kernels allocate nothing beyond their outputs.
  e.qdq_transient_bytes = e.fused_kernels ? 0 : 12 * largest_padded;
  // Every block of the text model, for the resident evaluation model.
  const int64_t block_elems = weight_elems;

  // ---- chains and buffers --------------------------------------------------
  e.chain_bytes = n * t * hid * eb;
  if (options.low_memory) {
    // Host chains; TuneBlock streams micro-batches, the block forwards
    // move one sample at a time.
    e.chains_tuning = 0;
    e.chains_forward = 0;
  } else {
    // pipeline.cc: fp_out overwrites fp_in in place (or fp_in is q_in and
    // fp_out is new), q_next overwrites q_in: two chains at every phase;
    // a chunk's output is in forward_transient_bytes.
    e.chains_tuning = 2;   // q_in, fp_out
    e.chains_forward = 2;  // q_in (becoming q_next), fp_out
  }
  // attention mask and loss mask int64 [N,T], loss mask as fp32 [N,T].
  e.masks_bytes = n * t * (8 + 8 + 4);
  e.batch_buffers_bytes = e.micro_batch * t * (2 * hid * eb + 8 + 4);

  // ---- activations, per token ----------------------------------------------
  // Attention: what autograd keeps, and the temporaries of its backward.
  int64_t attn_saved, attn_back, attn_fwd;
  if (e.fused_attention) {
    // q, k, v, output, log-sum-exp; a bool [B,1,T,T] mask for padding.
    attn_saved = (2 * qdim + 2 * kvdim) * eb + nh * 4 + t;
    attn_back = (2 * qdim + 2 * kvdim) * eb;  // dq, dk, dv, dout
    attn_fwd = (2 * qdim + 2 * kvdim) * eb;
  } else {
    // q, repeated k and v, fp32 and compute-dtype probabilities, the mask.
    attn_saved = 3 * qdim * eb + nh * t * (4 + eb) + 2 * t;
    attn_back = nh * t * (8 + eb);
    attn_fwd = (qdim + 2 * kvdim) * eb + nh * t * (4 + 2 * eb);
  }
  int64_t saved = hid * eb                 // input-norm output (q/k/v input)
                  + 2 * d * eb             // RoPE cos/sin
                  + attn_saved + qdim * eb  // o_proj input
                  + hid * eb;              // gate/up input
  if (e.fused_kernels) {
    // fused_block_ops.h (same CUDA build as the QDQ kernels): RMSNorm keeps
    // its input in the compute dtype and one fp32 per row, SwiGLU keeps
    // gate and up (not the SiLU output), the loss keeps the block output.
    saved += 4                   // input-norm rsqrt
             + hid * eb + 4      // post-norm input, rsqrt
             + 3 * inter * eb    // gate, up, down input
             + hid * eb;         // loss: block output
    if (model.qk_norm) saved += (qdim + kvdim) * eb + (nh + nkv) * 4;
  } else {
    saved += hid * 4 + 4         // post-norm fp32 input, rsqrt
             + 4 * inter * eb    // gate, silu, up, down input
             + hid * 4 + 4;      // loss diff, loss mask
    if (model.qk_norm) saved += (qdim + kvdim) * 4 + (nh + nkv) * 4;
  }
  const int64_t back_tmp =
      std::max({3 * inter * eb, attn_back, 2 * hid * 4}) + 2 * hid * 4;
  const int64_t fwd_tmp = std::max(4 * inter * eb, attn_fwd + qdim * eb) +
                          2 * hid * eb + hid * 4;
  const int64_t mb_tokens = e.micro_batch * t;
  if (train) {
    e.activations_saved_bytes = mb_tokens * saved;
    e.activations_transient_bytes = mb_tokens * back_tmp;
  } else {
    e.activations_transient_bytes = mb_tokens * fwd_tmp;
  }
  e.forward_transient_bytes = e.forward_chunk * t * fwd_tmp;
  // Low-memory: the chunk's input and output copies on the device.
  if (options.low_memory) e.forward_transient_bytes += 2 * t * hid * eb;

  // ---- phases ----------------------------------------------------------------
  e.tuning_bytes = e.block_weights_bytes + e.chains_tuning * e.chain_bytes +
                   e.masks_bytes + e.batch_buffers_bytes + e.tunables_bytes +
                   e.gradients_bytes + e.best_copy_bytes +
                   e.grouped_copy_bytes + e.qdq_weights_bytes +
                   e.qdq_saved_bytes + e.qdq_transient_bytes +
                   e.activations_saved_bytes + e.activations_transient_bytes;
  // TuneBlock's end: every Linear's final QDQ results (int32 codes, QDQ
  // weight, fp16 scales, int32 zeros) while the tunables and best copies
  // live; the QDQ of one Linear at a time needs its fp32 grouped weight
  // (built for the call with the fused kernels) and three temporaries.
  e.finalize_bytes = e.block_weights_bytes + e.chains_tuning * e.chain_bytes +
                     e.masks_bytes + e.batch_buffers_bytes + e.tunables_bytes +
                     e.best_copy_bytes + e.grouped_copy_bytes +
                     (4 + eb) * e.quantized_elements + 6 * total_rows +
                     (e.fused_kernels ? 16 : 12) * largest_padded;
  // The q_next forward: the quantizers (v) and the QDQ weights are still
  // alive; TuneBlock's best copies, gradients and graph are gone.
  e.block_forward_bytes = e.block_weights_bytes +
                          e.chains_forward * e.chain_bytes + e.masks_bytes +
                          e.tunables_bytes +
                          e.grouped_copy_bytes + e.qdq_weights_bytes +
                          e.forward_transient_bytes;
  if (in.evaluation_enabled) {
    // evaluation.cc: the original text model resident in the compute
    // dtype (every block, the embedding, an untied LM head, the final
    // norm); the quantized pass afterwards holds less (packed codes).
    const int64_t vocab = model.vocab_size;
    e.resident_model_bytes =
        eb * (model.num_layers * block_elems + vocab * hid +
              (model.tie_word_embeddings ? 0 : vocab * hid) + hid);
    const int64_t ev = in.eval_samples;
    e.evaluation_chain_bytes = ev * t * hid * eb;
    // RunBlocks: hidden, its chunk outputs and their cat; the final norm
    // then holds hidden plus two fp32 copies.
    const int64_t chains = std::max(3 * e.evaluation_chain_bytes,
                                    ev * t * hid * (eb + 8));
    const int64_t chunk =
        ForwardChunkSamples(ev, t, in.batch_size, options.low_memory);
    e.evaluation_bytes = e.resident_model_bytes + chains + e.masks_bytes +
                         chunk * t * fwd_tmp;
  }

  e.peak_phase = "tuning";
  int64_t peak = e.tuning_bytes;
  if (e.finalize_bytes > peak) {
    peak = e.finalize_bytes;
    e.peak_phase = "finalize";
  }
  if (e.block_forward_bytes > peak) {
    peak = e.block_forward_bytes;
    e.peak_phase = "block_forward";
  }
  if (e.evaluation_bytes > peak) {
    peak = e.evaluation_bytes;
    e.peak_phase = "evaluation";
  }
  e.slack_bytes =
      cuda ? static_cast<int64_t>(std::llround(
                 static_cast<double>(peak) * options.allocator_slack_fraction))
           : 0;
  e.total_bytes = e.context_bytes + peak + e.slack_bytes;
  return e;
}

}  // namespace roundhouse
