#include "worker/engine/pipeline.h"

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/memory_estimate.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "worker/engine/checkpoint_store.h"
#include "worker/engine/decoder_block.h"
#include "worker/engine/deliverable.h"
#include "worker/engine/evaluation.h"
#include "worker/engine/exporter.h"
#include "worker/engine/layer_config.h"
#include "worker/engine/manifest.h"
#include "worker/engine/model_config.h"
#include "worker/engine/perplexity.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/signround.h"
#include "worker/engine/tokenizer/calibration.h"
#include "worker/engine/versions.h"

#include <torch/version.h>

#ifdef ROUNDHOUSE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace roundhouse::engine {
namespace {

using nlohmann::json;

void Emit(const QuantizeRequest& r, const json& e) {
  if (r.on_event) r.on_event(e);
}

// SplitMix64 finaliser: a well-mixed 64-bit seed from (seed, block) alone,
// so block k's batches never depend on what earlier blocks drew.
uint64_t BlockSeed(int seed, int block) {
  uint64_t z = (static_cast<uint64_t>(static_cast<uint32_t>(seed)) << 32) |
               static_cast<uint32_t>(block);
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t DeviceMemoryInUse(const std::string& device) {
#ifdef ROUNDHOUSE_WITH_CUDA
  if (device == "cuda") {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      return static_cast<int64_t>(total_bytes - free_bytes);
    }
  }
#endif
  (void)device;
  return 0;
}

// Peak bytes held by libtorch's CUDA caching allocator on device 0 since the
// last ResetPeakDeviceMemory (0 on the CPU): what a block really needed,
// without the allocator's cached slack.
void ResetPeakDeviceMemory(const std::string& device, int gpus) {
#ifdef ROUNDHOUSE_WITH_CUDA
  if (device == "cuda") {
    for (int g = 0; g < gpus; ++g) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(g);
    }
  }
#endif
  (void)device, (void)gpus;
}

int64_t PeakDeviceMemory(const std::string& device) {
#ifdef ROUNDHOUSE_WITH_CUDA
  if (device == "cuda") {
    return c10::cuda::CUDACachingAllocator::getDeviceStats(0)
        .allocated_bytes[0]
        .peak;
  }
#endif
  (void)device;
  return 0;
}

absl::Status OutOfMemory(const std::string& what, const std::string& device) {
  absl::Status s = absl::ResourceExhaustedError(what);
  const int64_t peak = DeviceMemoryInUse(device);
  s.SetPayload(kPeakMemoryPayload, absl::Cord(std::to_string(peak)));
  return s;
}

absl::Status FromTorchError(const c10::Error& e, const std::string& device) {
  const std::string msg = e.what_without_backtrace();
  if (absl::StrContains(msg, "out of memory") ||
      absl::StrContains(msg, "CUDA out of memory") ||
      absl::StrContains(msg, "CUBLAS_STATUS_ALLOC_FAILED")) {
    return OutOfMemory(absl::StrCat("out of memory: ", msg), device);
  }
  return absl::InternalError(absl::StrCat("libtorch: ", msg));
}

absl::StatusOr<c10::ScalarType> ResolveComputeDtype(
    const std::string& name, const std::string& device,
    const Checkpoint& ckpt, const ModelLayout& layout) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  if (device != "cuda") return torch::kFloat32;
  // "auto" on CUDA: the checkpoint's own dtype (that of its embedding).
  ASSIGN_OR_RETURN(const TensorInfo* info, ckpt.Info(layout.embed_tokens));
  return ToTorch(info->dtype);
}

std::string DtypeName(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    default:
      return c10::toString(t);
  }
}

// FP (or, with `over`, QDQ) block forward over x [N,T,H] in chunks of
// `chunk` samples, written into `out` [N,T,H]. `out` may be `x` itself: the
// block mixes tokens within a sample only, and each chunk's input is read
// (on the stream) before its output is copied over it, so the forward
// needs one chain, not two, plus one chunk's transients.
void ForwardBlockInto(const BlockConfig& cfg, const BlockWeights& w,
                      const torch::Tensor& x, const torch::Tensor& mask,
                      const std::map<std::string, torch::Tensor>* over,
                      int64_t chunk, torch::Device device, torch::Tensor& out) {
  torch::NoGradGuard no_grad;
  BlockForwardOptions fo;
  fo.no_padding = mask.ne(0).all().item<bool>();
  const int64_t n = x.size(0);
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t e = std::min(n, s + chunk);
    out.slice(0, s, e).copy_(DecoderBlockForward(cfg, w,
                                                 x.slice(0, s, e).to(device),
                                                 mask.slice(0, s, e), over, fo));
  }
}

// Wall-clock seconds per phase of one block. Each Mark() first waits for
// the device's queued work (CUDA launches return early), so a phase is
// charged for its own kernels: a handful of synchronisations per block.
class PhaseClock {
 public:
  explicit PhaseClock(const std::string& device)
      : device_(device), last_(std::chrono::steady_clock::now()) {}
  void Mark(const std::string& phase) {
#ifdef ROUNDHOUSE_WITH_CUDA
    if (device_ == "cuda") cudaDeviceSynchronize();
#endif
    const auto now = std::chrono::steady_clock::now();
    seconds_[phase] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }
  json ToJson() const {
    json j = json::object();
    for (const auto& [phase, s] : seconds_) j[phase] = s;
    return j;
  }

 private:
  std::string device_;
  std::chrono::steady_clock::time_point last_;
  std::map<std::string, double> seconds_;
};

void ToTensors(const std::vector<calibration::Sample>& samples,
               torch::Tensor* ids, torch::Tensor* mask) {
  const int64_t n = static_cast<int64_t>(samples.size());
  const int64_t t = n > 0 ? static_cast<int64_t>(samples[0].input_ids.size())
                          : 0;
  *ids = torch::empty({n, t}, torch::kInt64);
  *mask = torch::empty({n, t}, torch::kInt64);
  auto id_acc = ids->accessor<int64_t, 2>();
  auto m_acc = mask->accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < t; ++j) {
      id_acc[i][j] = samples[i].input_ids[j];
      m_acc[i][j] = samples[i].attention_mask[j];
    }
  }
}

calibration::CalibrationOptions CalibrationFor(const QuantizeRequest& req,
                                               const std::string& path,
                                               int nsamples, int eval) {
  const JobConfig& c = req.config;
  calibration::CalibrationOptions o;
  o.path = absl::StartsWith(path, "/") ? path : JoinPath(req.model_dir, path);
  o.format = c.calibration.format;
  o.field = c.calibration.field;
  o.selection = c.calibration.selection;
  o.stratify_column = c.calibration.stratify_column;
  o.templ = c.calibration.templ;
  o.query_prefix = c.calibration.query_prefix;
  o.nsamples = nsamples;
  o.seqlen = c.seqlen;
  o.seed = static_cast<uint64_t>(static_cast<uint32_t>(c.tune.seed));
  o.allow_fewer = c.calibration.allow_fewer_samples;
  o.drop_short = c.calibration.drop_short;
  if (PathExists(JoinPath(req.model_dir, "tokenizer.json")) ||
      PathExists(JoinPath(req.model_dir, "tokenizer_config.json"))) {
    o.tokenizer_dir = req.model_dir;
  }
  o.eval_samples = eval;
  return o;
}

// Calibration errors are problems of the job's data: report them as such.
absl::Status AsDataError(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kNotFound ||
      s.code() == absl::StatusCode::kOutOfRange ||
      s.code() == absl::StatusCode::kFailedPrecondition) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration: ", s.message()));
  }
  return s;
}

// Removes the staging directory unless released.
class StagingGuard {
 public:
  explicit StagingGuard(std::string dir) : dir_(std::move(dir)) {}
  ~StagingGuard() {
    if (!dir_.empty()) (void)RemoveTree(dir_);
  }
  void Release() { dir_.clear(); }

 private:
  std::string dir_;
};

std::string ParentDir(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

absl::StatusOr<QuantizeResult> QuantizeImpl(const QuantizeRequest& req) {
  const JobConfig& cfg = req.config;
  QuantizeResult result;
  result.artifact_dir = req.out_dir;
  if (req.out_dir.empty() || req.model_dir.empty()) {
    return absl::InvalidArgumentError("model and output directories needed");
  }
  // Idempotence: a complete artifact is reused as is.
  if (PathExists(req.out_dir)) {
    auto manifest = ReadValidManifest(req.out_dir, /*verify_hashes=*/false);
    if (!manifest.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          req.out_dir, " exists but is not a complete artifact (",
          manifest.status().message(), "); remove it to re-run"));
    }
    result.manifest = *manifest;
    result.reused = true;
    const json& ev = (*manifest)["evaluation"];
    if (ev.is_object() && ev.value("passed", true) == false) {
      result.quality_passed = false;
      result.quality_message = ev.value("message", "quality gate failed");
    }
    Emit(req, {{"event", "stage"}, {"stage", "done"}});
    return result;
  }
  if (req.device != "cpu" && req.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device: must be \"cpu\" or \"cuda\" (got \"", req.device, "\")"));
  }
  if (req.device == "cuda" && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError(
        "--device cuda: no CUDA device is available in this process");
  }
  if (req.gpus < 1 || (req.gpus > 1 && req.device != "cuda")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpus: must be >= 1, and > 1 only with cuda (got ", req.gpus, ")"));
  }
  if (req.gpus > 1 &&
      req.gpus > static_cast<int>(torch::cuda::device_count())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpus ", req.gpus, ": only ", torch::cuda::device_count(),
        " CUDA devices are visible"));
  }
  const torch::Device device =
      req.device == "cuda" ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
  if (req.device == "cuda") {
    // cuBLAS needs this before its first handle for deterministic GEMMs.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  }
  at::globalContext().setDeterministicAlgorithms(cfg.deterministic,
                                                 /*warn_only=*/true);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  // Deterministic mode would also fill every new tensor before use (a NaN
  // guard against kernels that read memory they never wrote): one extra
  // write pass per allocation, 1.1 ms of every 27 ms tuning iteration of
  // the reference configuration on the H200. Every kernel the engine runs
  // writes all of its outputs (the fused QDQ kernels zero padded columns),
  // so the fill buys nothing here.
  at::globalContext().setDeterministicFillUninitializedMemory(false);
#endif

  // ---- loading -----------------------------------------------------------
  Emit(req, {{"event", "stage"}, {"stage", "loading"}});
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt,
                   Checkpoint::Open(req.model_dir));
  ASSIGN_OR_RETURN(ModelLayout layout, DiscoverLayout(req.model_dir, *ckpt));
  const TextConfig& text = layout.text;
  if (text.hidden_act != "silu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: hidden_act \"", text.hidden_act,
        "\" is not supported (only \"silu\")"));
  }
  if (text.mrope_section.empty() && text.rope_type != "default") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: rope_scaling type \"", text.rope_type,
        "\" is not supported (only the default RoPE)"));
  }
  const int num_blocks = text.num_layers;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (int b = 0; b < num_blocks; ++b) {
    for (const std::string& m : layout.BlockLinearNames(b)) {
      ASSIGN_OR_RETURN(const TensorInfo* info, ckpt->Info(m + ".weight"));
      shapes.emplace_back(m, info->shape);
    }
  }
  ASSIGN_OR_RETURN(std::vector<ResolvedLayer> layers,
                   ResolveLayerConfig(shapes, cfg.global, cfg.layer_config,
                                      cfg.ignore_layers));
  std::map<std::string, const ResolvedLayer*> layer_by_name;
  for (const ResolvedLayer& l : layers) layer_by_name[l.name] = &l;
  for (const std::string& f : cfg.export_formats) {
    RETURN_IF_ERROR(PackingForFormat(f, cfg.global, layers).status());
  }
  ASSIGN_OR_RETURN(c10::ScalarType dtype,
                   ResolveComputeDtype(cfg.compute_dtype, req.device, *ckpt,
                                       layout));

  // ---- calibration -------------------------------------------------------
  Emit(req, {{"event", "stage"}, {"stage", "calibration"}});
  const bool eval_on = cfg.evaluation.enabled;
  const bool held_out = eval_on && cfg.evaluation.eval_path.empty();
  std::string eval_source = "held_out";
  auto calib_or = calibration::BuildCalibrationSet(CalibrationFor(
      req, cfg.calibration.path, cfg.nsamples,
      held_out ? cfg.evaluation.eval_samples : 0));
  if (!calib_or.ok() && held_out && !cfg.evaluation.eval_samples_set) {
    // The default held-out split did not fit the data; evaluate on tuning
    // samples instead of failing a spec that never asked for a split.
    auto retry = calibration::BuildCalibrationSet(
        CalibrationFor(req, cfg.calibration.path, cfg.nsamples, 0));
    if (retry.ok()) {
      calib_or = std::move(retry);
      eval_source = "calibration_samples";
    }
  }
  if (!calib_or.ok()) return AsDataError(calib_or.status());
  calibration::CalibrationSet calib = std::move(calib_or).value();
  if (calib.samples.empty()) {
    return absl::InvalidArgumentError("calibration: no usable sample");
  }
  std::vector<calibration::Sample> eval_samples;
  std::string eval_sha;
  if (eval_on && !cfg.evaluation.eval_path.empty()) {
    eval_source = "eval_path";
    auto ev = calibration::BuildCalibrationSet(CalibrationFor(
        req, cfg.evaluation.eval_path, cfg.evaluation.eval_samples, 0));
    if (!ev.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation.eval_path: ", ev.status().message()));
    }
    eval_samples = std::move(ev->samples);
    eval_sha = ev->content_sha256;
  } else if (eval_on && eval_source == "held_out") {
    eval_samples = calib.eval_samples;
  }
  if (eval_on && eval_samples.empty()) {
    eval_source = "calibration_samples";
    const size_t k = std::min<size_t>(calib.samples.size(),
                                      cfg.evaluation.eval_samples);
    eval_samples.assign(calib.samples.begin(), calib.samples.begin() + k);
  }

  // Input hashes and the resume fingerprint.
  json model_files = json::object();
  std::vector<std::string> hashed = {"config.json"};
  if (PathExists(JoinPath(req.model_dir, "model.safetensors.index.json"))) {
    hashed.push_back("model.safetensors.index.json");
  }
  for (const std::string& f : ckpt->files()) {
    hashed.push_back(f.substr(f.find_last_of('/') + 1));
  }
  for (const std::string& f : hashed) {
    ASSIGN_OR_RETURN(std::string sha,
                     Sha256File(JoinPath(req.model_dir, f)));
    model_files[f] = sha;
  }
  const json resolved = ResolvedSpecJson(cfg);
  json fp_input = {{"model_files", model_files},
                   {"calibration_sha256", calib.content_sha256},
                   {"spec", resolved},
                   {"versions", EngineVersions()},
                   {"device", req.device},
                   {"compute_dtype", DtypeName(dtype)}};
  const std::string fingerprint = Sha256Hex(fp_input.dump());

  torch::Tensor ids, mask;
  ToTensors(calib.samples, &ids, &mask);
  const int64_t seq = ids.size(1);
  torch::Tensor loss_mask = mask.clone();
  // The reference always masks the last position (autoround-spec §1.5).
  if (seq > 0) loss_mask.select(1, seq - 1).zero_();
  mask = mask.to(device);
  loss_mask = loss_mask.to(device);

  std::unique_ptr<CheckpointStore> store;
  int resumed = 0;
  if (!req.checkpoint_dir.empty()) {
    ASSIGN_OR_RETURN(store,
                     CheckpointStore::Open(req.checkpoint_dir, fingerprint));
    resumed = std::min(store->resumable_blocks(), num_blocks);
    Emit(req, {{"event", "checkpoint"},
               {"action", resumed > 0 ? "resume" : "fresh"},
               {"resumed_blocks", resumed},
               {"reason", store->open_note()}});
  }

  // ---- tuning ------------------------------------------------------------
  Emit(req, {{"event", "stage"}, {"stage", "tuning"}});
  Emit(req, {{"event", "plan"},
             {"blocks_total", num_blocks},
             {"resumed_blocks", resumed}});
  const WeightLookup source = [&ckpt](const std::string& name) {
    return ckpt->Load(name);
  };
  const std::vector<std::string> names = ckpt->TensorNames();
  const BlockConfig block_cfg = MakeBlockConfig(text);
  const torch::Device chain_device = req.low_memory ? torch::kCPU : device;
  const int64_t fwd_chunk = ForwardChunkSamples(
      ids.size(0), seq, std::max(1, cfg.tune.batch_size), req.low_memory);

  std::map<std::string, QdqResult> results;  // by module name, CPU
  std::vector<BlockReport> reports;
  torch::Tensor fp_in, q_in;
  if (resumed > 0) {
    for (int b = 0; b < resumed; ++b) {
      ASSIGN_OR_RETURN(BlockResult br, store->LoadBlock(b));
      for (auto& [suffix, r] : br.layers) {
        results[layout.BlockName(b) + "." + suffix] = std::move(r);
      }
      reports.push_back({b, br.loss_before, br.loss_after, br.best_iter, 0.0,
                         /*resumed=*/true});
    }
    RETURN_IF_ERROR(store->LoadChains(&fp_in, &q_in));
    fp_in = fp_in.to(chain_device);
    q_in = q_in.defined() ? q_in.to(chain_device) : fp_in;
  } else {
    ForwardOptions fo{chain_device, dtype, static_cast<int>(fwd_chunk)};
    ASSIGN_OR_RETURN(fp_in, EmbedTokens(layout, source, ids, fo));
    q_in = fp_in;
  }

  for (int b = resumed; b < num_blocks; ++b) {
    if (req.should_stop && req.should_stop()) {
      return absl::AbortedError(absl::StrCat(
          "stopped before block ", b, " (blocks 0..", b - 1,
          " are checkpointed)"));
    }
    const auto t0 = std::chrono::steady_clock::now();
    PhaseClock clock(req.device);
    ResetPeakDeviceMemory(req.device, req.gpus);
    ASSIGN_OR_RETURN(BlockWeights w, LoadBlockWeights(layout, b, names,
                                                      source, dtype, device));
    RETURN_IF_ERROR(ValidateBlockWeights(block_cfg, w));
    clock.Mark("load");
    // fp_out overwrites fp_in, which nothing reads afterwards, unless q_in
    // is the same chain (block 0, or no quantized-input chain) and tuning
    // still needs it: then it is a new chain. Either way two chains live
    // through tuning instead of three.
    torch::Tensor fp_out =
        q_in.is_alias_of(fp_in) ? torch::empty_like(fp_in) : fp_in;
    ForwardBlockInto(block_cfg, w, fp_in, mask, nullptr, fwd_chunk, device,
                     fp_out);
    fp_in = torch::Tensor();
    clock.Mark("fp_forward");

    std::map<std::string, LinearQuantizer> quantizers;
    for (const std::string& suffix : BlockLinearSuffixes()) {
      const ResolvedLayer* l = layer_by_name.at(layout.BlockName(b) + "." +
                                                suffix);
      if (!l->quantize) continue;
      ASSIGN_OR_RETURN(LinearQuantizer q,
                       LinearQuantizer::Create(w.at(suffix + ".weight"),
                                               l->params,
                                               cfg.tune.enable_minmax_tuning));
      quantizers.emplace(suffix, std::move(q));
    }
    clock.Mark("quantizer_setup");
    BlockResult br;
    br.block_index = b;
    bool used_graph = false;
    std::map<std::string, torch::Tensor> qdq_weights;
    if (!quantizers.empty()) {
      TuneOptions to;
      to.iters = cfg.tune.iters;
      to.lr = cfg.tune.lr_set ? cfg.tune.lr : -1;
      to.minmax_lr = cfg.tune.minmax_lr_set ? cfg.tune.minmax_lr : -1;
      to.batch_size = cfg.tune.batch_size;
      to.gradient_accumulate_steps = cfg.tune.gradient_accumulate_steps;
      to.enable_minmax_tuning = cfg.tune.enable_minmax_tuning;
      to.not_use_best_mse = cfg.tune.not_use_best_mse;
      to.seed = BlockSeed(cfg.tune.seed, b);
      if (req.device == "cuda" && req.gpus > 1) {
        for (int g = 0; g < req.gpus; ++g) {
          to.devices.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(g));
        }
      }
      // The chains stay where they are (the CPU in low-memory mode): the
      // tuner streams each micro-batch to the device.
      ASSIGN_OR_RETURN(TuneResult tr,
                       TuneBlock(block_cfg, w, quantizers, q_in, fp_out,
                                 mask, loss_mask, to));
      clock.Mark("tune");
      used_graph = tr.used_cuda_graph;
      br.loss_before = tr.loss_before;
      br.loss_after = tr.loss_after;
      br.best_iter = tr.best_iter;
      for (auto& [suffix, r] : tr.layers) {
        qdq_weights[suffix] = r.weight_qdq;
        // Host copies for the export: the codes travel as uint8 (bits <= 8;
        // packing and the checkpoint store read any integer dtype), the QDQ
        // weight only when the checkpoint store keeps it. Moving all of it
        // as int32 codes plus the bf16 weight was 0.6 GB per ColQwen3 block,
        // 0.1-0.4 s of pageable copies, and 22 GB of host memory for 36
        // blocks.
        QdqResult cpu{store ? r.weight_qdq.cpu() : torch::Tensor(),
                      r.scale.cpu(), r.zero.cpu(),
                      r.codes.to(torch::kUInt8).cpu()};
        br.layers.emplace(suffix, std::move(cpu));
      }
    }
    clock.Mark("finalize");
    // The next quantized chain overwrites q_in in place: nothing else reads
    // it (fp_in was released above, or fp_out is a separate chain).
    if (cfg.tune.enable_quanted_input) {
      torch::Tensor q_next =
          q_in.is_alias_of(fp_out) ? torch::empty_like(q_in) : q_in;
      ForwardBlockInto(block_cfg, w, q_in, mask, &qdq_weights, fwd_chunk,
                       device, q_next);
      q_in = q_next;
    } else {
      q_in = fp_out;
    }
    fp_in = fp_out;
    clock.Mark("q_forward");
    const double seconds = std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - t0)
                               .count();
    if (store) RETURN_IF_ERROR(store->WriteBlock(br, fp_in, q_in));
    for (auto& [suffix, r] : br.layers) {
      results[layout.BlockName(b) + "." + suffix] = r;
    }
    reports.push_back({b, br.loss_before, br.loss_after, br.best_iter,
                       seconds, false});
    Emit(req, {{"event", "block"},
               {"block_index", b},
               {"blocks_total", num_blocks},
               {"loss_before", br.loss_before},
               {"loss_after", br.loss_after},
               {"seconds", seconds},
               {"peak_device_bytes", PeakDeviceMemory(req.device)},
               {"phase_seconds", clock.ToJson()},
               {"cuda_graph", used_graph}});
    if (req.should_stop && req.should_stop() && b + 1 < num_blocks) {
      return absl::AbortedError(absl::StrCat(
          "stopped after block ", b,
          store ? " (checkpointed)" : " (no checkpoint directory)"));
    }
  }
  fp_in = torch::Tensor();
  q_in = torch::Tensor();

  // ---- export ------------------------------------------------------------
  Emit(req, {{"event", "stage"}, {"stage", "export"}});
  RETURN_IF_ERROR(MakeDirs(ParentDir(req.out_dir)));
  const std::string staging =
      absl::StrCat(req.out_dir, ".staging-", ::getpid());
  RETURN_IF_ERROR(RemoveTree(staging));
  StagingGuard guard(staging);
  RETURN_IF_ERROR(MakeDirs(staging));
  ExportInput ex;
  ex.model_dir = req.model_dir;
  ex.checkpoint = ckpt.get();
  ex.layout = &layout;
  ex.layers = &layers;
  ex.results = &results;
  ex.config = &cfg;
  ex.max_shard_bytes = req.max_shard_bytes;
  json formats = json::object();
  for (const std::string& f : cfg.export_formats) {
    const std::string sub = cfg.export_formats.size() == 1 ? "" : f;
    const std::string dir = sub.empty() ? staging : JoinPath(staging, sub);
    RETURN_IF_ERROR(ExportFormat(ex, f, dir).status());
    ASSIGN_OR_RETURN(Packing p, PackingForFormat(f, cfg.global, layers));
    formats[f] = {{"directory", sub}, {"packing_format", std::string(PackingName(p))}};
  }

  // ---- evaluation --------------------------------------------------------
  // The EXPORTED checkpoint is reloaded and dequantized from its packed
  // tensors (evaluation.h), so the figures describe the artifact itself.
  json evaluation = {{"enabled", eval_on}, {"passed", true}};
  const std::string& eval_format = cfg.export_formats.front();
  json configuration = {
      {"scheme", resolved["scheme"]},
      {"resolved_spec", resolved},
      {"calibration",
       {{"recipe", resolved["calibration"]},
        {"samples", static_cast<int64_t>(calib.samples.size())},
        {"seqlen", cfg.seqlen},
        {"sha256", calib.content_sha256}}},
      {"evaluation",
       {{"source", eval_source},
        {"samples", static_cast<int64_t>(eval_samples.size())},
        {"eval_path", cfg.evaluation.eval_path}}},
      {"seed", cfg.tune.seed},
      {"export_formats", cfg.export_formats},
      {"evaluated_format", eval_on ? eval_format : ""},
      {"device", req.device},
      {"compute_dtype", DtypeName(dtype)},
      {"model_family", std::string(ModelFamilyName(layout.family))}};
  if (!eval_sha.empty()) {
    configuration["evaluation"]["sha256"] = eval_sha;
  }
  if (!eval_on) configuration["evaluation"] = {{"enabled", false}};
  json test_results = {{"schema_version", 1},
                       {"verdict", "not_evaluated"},
                       {"evaluation", {{"enabled", false}}},
                       {"configuration", configuration},
                       {"versions", EngineVersions()}};
  if (eval_on) {
    Emit(req, {{"event", "stage"}, {"stage", "evaluation"}});
    const std::string sub = formats[eval_format]["directory"];
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> exported,
                     Checkpoint::Open(sub.empty() ? staging
                                                  : JoinPath(staging, sub)));
    EvaluationInput in;
    in.layout = &layout;
    in.original = ckpt.get();
    in.quantized.checkpoint = exported.get();
    in.quantized.format = eval_format;
    ASSIGN_OR_RETURN(in.quantized.packing,
                     PackingForFormat(eval_format, cfg.global, layers));
    for (const ResolvedLayer& l : layers) {
      if (l.quantize) in.quantized.params_by_module[l.name] = l.params;
    }
    ToTensors(eval_samples, &in.ids, &in.mask);
    // The same token-sized chunks as the tuning forwards: single-sample
    // forwards at batch size 1 are latency-bound.
    in.forward = ForwardOptions{
        device, dtype,
        static_cast<int>(ForwardChunkSamples(
            in.ids.size(0), in.ids.size(1), std::max(1, cfg.tune.batch_size),
            req.low_memory))};
    in.device_name = req.device;
    EvaluationThresholds thresholds;
    thresholds.min_token_cosine_similarity =
        cfg.evaluation.min_token_cosine_similarity;
    thresholds.min_recall_at_1 = cfg.evaluation.min_recall_at_1;
    ASSIGN_OR_RETURN(EvaluationOutcome o,
                     EvaluateQuantizedModel(in, thresholds));
    const json& g = o.gate;
    evaluation = {{"enabled", true},
                  {"source", eval_source},
                  {"format", eval_format},
                  {"samples", static_cast<int64_t>(eval_samples.size())},
                  {"tokens", g["tokens"]},
                  {"gated_outputs", g["gated_outputs"]},
                  {"mean_token_cosine_similarity",
                   g["mean_token_cosine_similarity"]},
                  {"min_token_cosine_similarity",
                   g["min_token_cosine_similarity"]},
                  {"non_finite_quantized", g["non_finite_quantized"]},
                  {"threshold", thresholds.min_token_cosine_similarity},
                  {"passed", o.passed},
                  {"test_results", "test_results.json"}};
    if (o.metrics.contains("perplexity")) {
      evaluation["perplexity_fp"] = o.metrics["perplexity"]["fp"];
      evaluation["perplexity_quantized"] =
          o.metrics["perplexity"]["quantized"];
    }
    if (o.metrics.contains("retrieval")) {
      evaluation["recall_at_1"] = o.metrics["retrieval"]["recall_at_1"];
      evaluation["recall_at_5"] = o.metrics["retrieval"]["recall_at_5"];
    }
    if (!o.passed) {
      result.quality_passed = false;
      result.quality_message = o.message;
      evaluation["message"] = o.message;
    }
    json ev_summary = o.info;
    ev_summary["enabled"] = true;
    ev_summary["passed"] = o.passed;
    ev_summary["source"] = eval_source;
    if (!o.passed) ev_summary["message"] = o.message;
    ev_summary["gate"] = g;
    test_results = {
        {"schema_version", 1},
        {"verdict", o.passed ? "passed" : "failed_quality"},
        {"evaluation", ev_summary},
        {"thresholds",
         {{"min_token_cosine_similarity",
           thresholds.min_token_cosine_similarity},
          {"min_recall_at_1", thresholds.min_recall_at_1}}},
        {"metrics", o.metrics},
        {"notes", o.notes},
        {"configuration", configuration},
        {"versions", EngineVersions()}};
  }
  RETURN_IF_ERROR(WriteFileAtomically(JoinPath(staging, kTestResultsFile),
                                      test_results.dump(2) + "\n"));

  // ---- manifest, then the atomic rename ------------------------------------
  json blocks = json::array();
  for (const BlockReport& r : reports) {
    blocks.push_back({{"block_index", r.block_index},
                      {"loss_before", r.loss_before},
                      {"loss_after", r.loss_after},
                      {"best_iter", r.best_iter}});
  }
  json layer_list = json::array();
  for (const ResolvedLayer& l : layers) {
    json e = {{"name", l.name}, {"quantized", l.quantize}};
    if (l.quantize) {
      e["bits"] = l.params.bits;
      e["group_size"] = l.params.group_size;
      e["sym"] = l.params.sym;
    } else {
      e["reason"] = l.reason;
    }
    layer_list.push_back(e);
  }
  json inputs = {{"model_files", model_files},
                 {"calibration_sha256", calib.content_sha256},
                 {"calibration_samples",
                  static_cast<int64_t>(calib.samples.size())},
                 {"fingerprint", fingerprint}};
  if (!eval_sha.empty()) inputs["eval_sha256"] = eval_sha;
  json body = {{"spec", cfg.raw},
               {"resolved_spec", resolved},
               {"versions", EngineVersions()},
               {"seed", cfg.tune.seed},
               {"device", req.device},
               {"compute_dtype", DtypeName(dtype)},
               {"model_family", std::string(ModelFamilyName(layout.family))},
               {"inputs", inputs},
               {"blocks", blocks},
               {"layers", layer_list},
               {"formats", formats},
               {"evaluation", evaluation}};
  {
    // The model card names the base model; a spec run directly through the
    // engine (no coordinator) may not carry "model": name the directory.
    json card = body;
    if (!card["spec"].is_object()) card["spec"] = json::object();
    if (!card["spec"].contains("model")) card["spec"]["model"] = req.model_dir;
    RETURN_IF_ERROR(WriteDeliverable(staging, card, test_results));
  }
  ASSIGN_OR_RETURN(json manifest, WriteManifest(staging, std::move(body)));
  RETURN_IF_ERROR(FsyncPath(staging));
  RETURN_IF_ERROR(RenameDurably(staging, req.out_dir));
  guard.Release();
  result.manifest = std::move(manifest);
  result.blocks = std::move(reports);
  Emit(req, {{"event", "stage"}, {"stage", "done"}});
  return result;
}

}  // namespace

absl::StatusOr<QuantizeResult> Quantize(const QuantizeRequest& request) {
  try {
    return QuantizeImpl(request);
  } catch (const c10::Error& e) {
    return FromTorchError(e, request.device);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("out of host memory (std::bad_alloc)", request.device);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("unexpected exception: ",
                                            e.what()));
  }
}

}  // namespace roundhouse::engine
