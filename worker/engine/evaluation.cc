#include "worker/engine/evaluation.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

#ifdef ROUNDHOUSE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/cuda.h>
#endif

namespace roundhouse::engine {
namespace {

using nlohmann::json;

absl::Status TorchError(const c10::Error& e) {
  return absl::InternalError(
      absl::StrCat("evaluation: libtorch: ", e.what_without_backtrace()));
}

std::vector<double> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.reshape({-1}).to(torch::kCPU, torch::kFloat64)
                        .contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

// Average ranks (1-based) with ties sharing the mean of their positions.
std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&v](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double avg = (static_cast<double>(i) + static_cast<double>(j)) / 2 +
                       1;
    for (size_t k = i; k <= j; ++k) r[order[k]] = avg;
    i = j + 1;
  }
  return r;
}

// Position of document `doc` in row `row` of `scores` [Q,N] (0 = best),
// counting every other document with a score >= its own ahead of it.
int64_t PessimisticRank(const torch::Tensor& scores, int64_t row,
                        int64_t doc) {
  torch::Tensor r = scores[row];
  const double own = r[doc].item<double>();
  return (r >= own).sum().item<int64_t>() - 1;
}

// ---- the two models, resident on the device ---------------------------------

// Tensors kept on the device for a whole evaluation pass, and the lookup the
// forward functions read them through.
struct ResidentModel {
  std::map<std::string, torch::Tensor> tensors;
  std::vector<std::string> names;  // original tensor names it serves
  uint64_t resident_bytes = 0;     // sum of tensors' bytes
  WeightLookup lookup;
};

bool ForwardNeeds(const ModelLayout& layout, const std::string& name) {
  if (absl::StartsWith(name, layout.block_prefix + ".")) return true;
  if (name == layout.embed_tokens || name == layout.final_norm) return true;
  if (layout.lm_head && name == *layout.lm_head) return true;
  if (layout.projection_weight && name == *layout.projection_weight) {
    return true;
  }
  if (layout.projection_bias && name == *layout.projection_bias) return true;
  return false;
}

absl::StatusOr<ResidentModel> MakeResidentOriginal(
    const ModelLayout& layout, const Checkpoint& ckpt,
    const ForwardOptions& fo) {
  ResidentModel model;
  for (const std::string& n : ckpt.TensorNames()) {
    if (!ForwardNeeds(layout, n)) continue;
    ASSIGN_OR_RETURN(torch::Tensor t, ckpt.Load(n));
    t = t.to(fo.device, fo.dtype);
    model.resident_bytes += t.nbytes();
    model.tensors.emplace(n, std::move(t));
    model.names.push_back(n);
  }
  return model;
}

bool IsPackedPart(const std::string& name, std::string* module) {
  for (const char* k : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
    if (absl::EndsWith(name, k)) {
      *module = name.substr(0, name.size() - std::string(k).size());
      return true;
    }
  }
  return false;
}

// The exported checkpoint with its packed tensors resident as stored (int32
// codes, fp16 scales) and everything else in the compute dtype; "<m>.weight"
// of a packed module is dequantized from them on every lookup.
absl::StatusOr<std::set<std::string>> LoadResidentQuantized(
    const ModelLayout& layout, const QuantizedArtifact& art,
    const ForwardOptions& fo, ResidentModel* model) {
  std::set<std::string> packed;
  for (const std::string& n : art.checkpoint->TensorNames()) {
    if (absl::EndsWith(n, ".qweight")) packed.insert(n.substr(0, n.size() - 8));
  }
  for (const std::string& m : packed) {
    if (!art.params_by_module.count(m)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "evaluation: packed module ", m, " has no quantization params"));
    }
  }
  for (const std::string& n : art.checkpoint->TensorNames()) {
    std::string module;
    const bool part = IsPackedPart(n, &module) && packed.count(module);
    if (part) {
      if (absl::EndsWith(n, ".qweight")) model->names.push_back(module +
                                                                ".weight");
    } else {
      if (!ForwardNeeds(layout, n)) continue;
      model->names.push_back(n);
    }
    ASSIGN_OR_RETURN(torch::Tensor t, art.checkpoint->Load(n));
    t = part ? t.to(fo.device) : t.to(fo.device, fo.dtype);
    model->resident_bytes += t.nbytes();
    model->tensors.emplace(n, std::move(t));
  }
  std::sort(model->names.begin(), model->names.end());
  return packed;
}

absl::StatusOr<torch::Tensor> FromMap(
    const std::map<std::string, torch::Tensor>& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) {
    return absl::NotFoundError(
        absl::StrCat("evaluation: tensor ", name, " is not resident"));
  }
  return it->second;
}

// ---- device memory ------------------------------------------------------------

void ResetPeakMemory(const ForwardOptions& fo) {
#ifdef ROUNDHOUSE_WITH_CUDA
  if (fo.device.is_cuda()) {
    torch::cuda::synchronize();
    const c10::DeviceIndex idx =
        fo.device.has_index() ? fo.device.index() : c10::cuda::current_device();
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(idx);
  }
#endif
  (void)fo;
}

// Peak bytes allocated by the CUDA caching allocator since the last reset;
// -1 when not on CUDA.
int64_t PeakMemory(const ForwardOptions& fo) {
#ifdef ROUNDHOUSE_WITH_CUDA
  if (fo.device.is_cuda()) {
    torch::cuda::synchronize();
    const c10::DeviceIndex idx =
        fo.device.has_index() ? fo.device.index() : c10::cuda::current_device();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(idx);
    // Index 0 is StatType::AGGREGATE.
    return stats.allocated_bytes[0].peak;
  }
#endif
  (void)fo;
  return -1;
}

// ---- one model's pass -----------------------------------------------------------

struct Pool {
  torch::Tensor doc_ids, doc_mask, query_ids, query_mask;
  bool usable = false;
  std::string skipped_reason;
};

// Documents: the first half of each sample's real tokens; queries: up to 32
// tokens that follow it, run as their own sequences (docs/evaluation.md).
// Every document and every query has the same length, so no padding enters.
Pool MakePool(const torch::Tensor& ids, const torch::Tensor& mask) {
  Pool p;
  const int64_t n = ids.size(0);
  if (n < 2) {
    p.skipped_reason = "fewer than 2 evaluation samples";
    return p;
  }
  torch::Tensor m = mask.to(torch::kBool);
  int64_t lmin = m.sum(1).min().item<int64_t>();
  if (lmin < 4) {
    p.skipped_reason = "a sample has fewer than 4 real tokens";
    return p;
  }
  const int64_t ld = lmin / 2;
  const int64_t lq = std::min<int64_t>(lmin - ld, 32);
  std::vector<torch::Tensor> docs, queries;
  for (int64_t i = 0; i < n; ++i) {
    torch::Tensor real = ids[i].masked_select(m[i]);
    docs.push_back(real.slice(0, 0, ld));
    queries.push_back(real.slice(0, ld, ld + lq));
  }
  p.doc_ids = torch::stack(docs);
  p.query_ids = torch::stack(queries);
  p.doc_mask = torch::ones_like(p.doc_ids);
  p.query_mask = torch::ones_like(p.query_ids);
  p.usable = true;
  return p;
}

struct ModelRun {
  torch::Tensor hidden;      // [N,T,H]
  torch::Tensor embeddings;  // ColQwen3 only
  torch::Tensor query_emb, doc_emb;
  std::optional<double> perplexity;
  std::string perplexity_error;
  double seconds = 0;
  int64_t peak_bytes = -1;
  uint64_t resident_bytes = 0;
};

absl::StatusOr<ModelRun> RunModel(const ModelLayout& layout,
                                  const ResidentModel& model,
                                  const EvaluationInput& in,
                                  const Pool& pool) {
  ModelRun r;
  r.resident_bytes = model.resident_bytes;
  const ForwardOptions& fo = in.forward;
  // Warm-up on one sample (library initialisation, kernel selection) so the
  // first model timed does not pay it alone.
  RETURN_IF_ERROR(FinalHiddenStates(layout, model.names, model.lookup,
                                    in.ids.slice(0, 0, 1),
                                    in.mask.slice(0, 0, 1), fo)
                      .status());
  ResetPeakMemory(fo);
  const auto t0 = std::chrono::steady_clock::now();
  // Returns on the CPU: the copy synchronises a CUDA device.
  ASSIGN_OR_RETURN(r.hidden, FinalHiddenStates(layout, model.names,
                                               model.lookup, in.ids, in.mask,
                                               fo));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                            t0)
                  .count();
  r.peak_bytes = PeakMemory(fo);
  if (layout.projection_weight) {
    ASSIGN_OR_RETURN(r.embeddings, ProjectTokenEmbeddings(
                                       layout, model.lookup, r.hidden,
                                       in.mask));
    if (pool.usable) {
      ASSIGN_OR_RETURN(r.doc_emb,
                       TokenOutputs(layout, model.names, model.lookup,
                                    pool.doc_ids, pool.doc_mask, fo));
      ASSIGN_OR_RETURN(r.query_emb,
                       TokenOutputs(layout, model.names, model.lookup,
                                    pool.query_ids, pool.query_mask, fo));
    }
  } else if (layout.lm_head || layout.text.tie_word_embeddings) {
    auto p = PerplexityFromHidden(layout, model.lookup, r.hidden, in.ids,
                                  in.mask);
    if (p.ok()) {
      r.perplexity = *p;
    } else {
      r.perplexity_error = std::string(p.status().message());
    }
  }
  return r;
}

json SimilarityJson(const TokenSimilarity& s) {
  return {{"mean", s.mean}, {"min", s.min}, {"p5", s.p5},
          {"tokens", s.tokens}};
}

// Sizes from the tensor tables: which bytes belong to the quantized
// Linears, to the vision tower / projection head, and to the rest.
json SizeReport(const ModelLayout& layout, const Checkpoint& original,
                const Checkpoint& exported,
                const std::set<std::string>& packed) {
  auto category = [&](const std::string& name) -> std::string {
    std::string module;
    if (IsPackedPart(name, &module) && packed.count(module)) {
      return "quantized_linears";
    }
    for (const char* k : {".weight", ".bias"}) {
      if (absl::EndsWith(name, k) &&
          packed.count(name.substr(0, name.size() - std::string(k).size()))) {
        return "quantized_linears";
      }
    }
    if ((!layout.vision_prefix.empty() &&
         absl::StartsWith(name, layout.vision_prefix)) ||
        (layout.projection_weight && name == *layout.projection_weight) ||
        (layout.projection_bias && name == *layout.projection_bias)) {
      return "vision_and_projection";
    }
    return "other_unquantized";
  };
  std::map<std::string, std::pair<uint64_t, uint64_t>> bytes;
  for (const char* c :
       {"quantized_linears", "vision_and_projection", "other_unquantized"}) {
    bytes[c] = {0, 0};
  }
  for (const std::string& n : original.TensorNames()) {
    auto info = original.Info(n);
    if (info.ok()) bytes[category(n)].first += (*info)->NumBytes();
  }
  for (const std::string& n : exported.TensorNames()) {
    auto info = exported.Info(n);
    if (info.ok()) bytes[category(n)].second += (*info)->NumBytes();
  }
  json parts = json::object();
  for (const auto& [c, b] : bytes) {
    json e = {{"original_bytes", b.first}, {"exported_bytes", b.second}};
    if (b.second > 0) {
      e["compression_ratio"] =
          static_cast<double>(b.first) / static_cast<double>(b.second);
    }
    parts[c] = e;
  }
  json out = {{"tensor_bytes_by_part", parts}};
  auto of = TotalFileBytes(original.files());
  auto ef = TotalFileBytes(exported.files());
  if (of.ok() && ef.ok()) {
    out["original_weight_file_bytes"] = *of;
    out["exported_weight_file_bytes"] = *ef;
    if (*ef > 0) {
      out["compression_ratio"] =
          static_cast<double>(*of) / static_cast<double>(*ef);
    }
  }
  return out;
}

}  // namespace

// ---- metrics -----------------------------------------------------------------

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double h = (static_cast<double>(values.size()) - 1) *
                   std::clamp(q, 0.0, 1.0);
  const size_t lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

TokenSimilarity CompareTokens(const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& mask) {
  torch::NoGradGuard no_grad;
  torch::Tensor a64 = a.to(torch::kCPU, torch::kFloat64);
  torch::Tensor b64 = b.to(torch::kCPU, torch::kFloat64);
  // cos = <a,b> / max(|a||b|, eps): NaN inputs stay NaN (cosine_similarity
  // would clamp them away on some versions).
  torch::Tensor dot = (a64 * b64).sum(-1);
  torch::Tensor den = (a64.norm(2, -1) * b64.norm(2, -1)).clamp_min(1e-12);
  torch::Tensor cos = dot / den;
  std::vector<double> v =
      ToVector(cos.masked_select(mask.cpu().to(torch::kBool)));
  TokenSimilarity s;
  s.tokens = static_cast<int64_t>(v.size());
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) /
           static_cast<double>(v.size());
  s.min = v[0];
  bool nan = false;
  for (double x : v) {
    nan = nan || std::isnan(x);
    s.min = std::min(s.min, x);
  }
  s.p5 = Percentile(v, 0.05);
  if (nan) s.min = s.p5 = std::nan("");
  return s;
}

double MaskedMse(const torch::Tensor& a, const torch::Tensor& b,
                 const torch::Tensor& mask) {
  torch::NoGradGuard no_grad;
  torch::Tensor d = a.to(torch::kCPU, torch::kFloat64) -
                    b.to(torch::kCPU, torch::kFloat64);
  torch::Tensor m = mask.cpu().to(torch::kFloat64);
  const double count = m.sum().item<double>() * static_cast<double>(d.size(-1));
  if (count == 0) return 0;
  return ((d * d).sum(-1) * m).sum().item<double>() / count;
}

int64_t CountNonFinite(const torch::Tensor& t) {
  torch::NoGradGuard no_grad;
  if (!t.defined() || t.numel() == 0) return 0;
  if (!t.is_floating_point()) return 0;
  return t.isfinite().logical_not().sum().item<int64_t>();
}

double Pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 2) return 0;
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return 0;
  return sxy / std::sqrt(sxx * syy);
}

double Spearman(const std::vector<double>& x, const std::vector<double>& y) {
  return Pearson(Ranks(x), Ranks(y));
}

torch::Tensor MaxSimScores(const torch::Tensor& queries,
                           const torch::Tensor& query_mask,
                           const torch::Tensor& documents,
                           const torch::Tensor& document_mask) {
  torch::NoGradGuard no_grad;
  torch::Tensor q = queries.to(torch::kCPU, torch::kFloat64);
  torch::Tensor d = documents.to(torch::kCPU, torch::kFloat64);
  torch::Tensor qm = query_mask.cpu().to(torch::kBool);
  torch::Tensor dm = document_mask.cpu().to(torch::kBool);
  // sim[i,j,t,u] = <q[i,t], d[j,u]>; padded document tokens never win the
  // max, padded query tokens add nothing.
  torch::Tensor sim = torch::einsum("itd,jud->ijtu", {q, d});
  sim = sim.masked_fill(dm.logical_not().view({1, dm.size(0), 1, dm.size(1)}),
                        -std::numeric_limits<double>::infinity());
  torch::Tensor best = std::get<0>(sim.max(-1));  // [Q,N,Tq]
  best = best.masked_fill(qm.logical_not().unsqueeze(1), 0.0);
  return best.sum(-1);
}

ScoreAgreement CompareScores(const torch::Tensor& fp,
                             const torch::Tensor& quantized) {
  ScoreAgreement a;
  std::vector<double> x = ToVector(fp), y = ToVector(quantized);
  a.pairs = static_cast<int64_t>(std::min(x.size(), y.size()));
  if (a.pairs == 0) return a;
  double sum = 0;
  for (int64_t i = 0; i < a.pairs; ++i) {
    const double d = std::fabs(x[i] - y[i]);
    sum += d;
    a.max_abs_diff = std::max(a.max_abs_diff, d);
  }
  a.mean_abs_diff = sum / static_cast<double>(a.pairs);
  a.pearson = Pearson(x, y);
  a.spearman = Spearman(x, y);
  return a;
}

RetrievalAgreement CompareRankings(const torch::Tensor& fp,
                                   const torch::Tensor& quantized) {
  RetrievalAgreement r;
  torch::Tensor f = fp.to(torch::kCPU, torch::kFloat64);
  torch::Tensor q = quantized.to(torch::kCPU, torch::kFloat64);
  r.queries = f.size(0);
  r.documents = f.size(1);
  if (r.queries == 0 || r.documents == 0) return r;
  int64_t hit1 = 0, hit5 = 0, self_fp = 0, self_q = 0;
  for (int64_t i = 0; i < r.queries; ++i) {
    // argmax returns the first maximal index.
    const int64_t top = f[i].argmax().item<int64_t>();
    const int64_t rank = PessimisticRank(q, i, top);
    hit1 += rank < 1;
    hit5 += rank < 5;
    if (i < r.documents) {
      self_fp += top == i;
      self_q += PessimisticRank(q, i, i) == 0;
    }
  }
  const double nq = static_cast<double>(r.queries);
  r.recall_at_1 = hit1 / nq;
  r.recall_at_5 = hit5 / nq;
  r.fp_self_recall_at_1 = self_fp / nq;
  r.quantized_self_recall_at_1 = self_q / nq;
  return r;
}

absl::StatusOr<uint64_t> TotalFileBytes(
    const std::vector<std::string>& paths) {
  uint64_t total = 0;
  for (const std::string& p : paths) {
    struct stat st;
    if (::stat(p.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot stat ", p));
    }
    total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

// ---- the evaluation stage ----------------------------------------------------

absl::StatusOr<EvaluationOutcome> EvaluateQuantizedModel(
    const EvaluationInput& in, const EvaluationThresholds& thresholds) {
  if (in.layout == nullptr || in.original == nullptr ||
      in.quantized.checkpoint == nullptr) {
    return absl::InvalidArgumentError(
        "evaluation: layout, original and quantized checkpoint are required");
  }
  if (!in.ids.defined() || in.ids.dim() != 2 || in.ids.size(0) == 0 ||
      in.ids.size(1) == 0 || !in.mask.defined() ||
      in.mask.sizes() != in.ids.sizes()) {
    return absl::InvalidArgumentError(
        "evaluation: no evaluation samples (ids/mask must be [N,T], N > 0)");
  }
  const ModelLayout& layout = *in.layout;
  const bool colqwen = layout.projection_weight.has_value();
  const Pool pool = colqwen ? MakePool(in.ids, in.mask) : Pool{};
  const int64_t tokens = in.mask.sum().item<int64_t>();
  try {
    torch::NoGradGuard no_grad;
    ModelRun fp, q;
    std::set<std::string> packed;
    {
      ASSIGN_OR_RETURN(ResidentModel m,
                       MakeResidentOriginal(layout, *in.original, in.forward));
      const auto* tensors = &m.tensors;
      m.lookup = [tensors](const std::string& name) {
        return FromMap(*tensors, name);
      };
      ASSIGN_OR_RETURN(fp, RunModel(layout, m, in, pool));
    }  // the original's weights are released before the quantized load
    {
      ResidentModel m;
      ASSIGN_OR_RETURN(packed, LoadResidentQuantized(layout, in.quantized,
                                                     in.forward, &m));
      const auto* tensors = &m.tensors;
      const QuantizedArtifact* art = &in.quantized;
      const ForwardOptions fo = in.forward;
      const bool awq = in.quantized.packing == Packing::kAutoRoundAwq ||
                       in.quantized.packing == Packing::kAutoAwq;
      const std::set<std::string>* packed_set = &packed;
      m.lookup = [tensors, art, fo, awq, packed_set](const std::string& name)
          -> absl::StatusOr<torch::Tensor> {
        if (absl::EndsWith(name, ".weight")) {
          const std::string mod = name.substr(0, name.size() - 7);
          if (packed_set->count(mod)) {
            // Dequantized on the packed tensors' device (3-bit layouts
            // unpack through the host).
            std::map<std::string, torch::Tensor> t;
            for (const char* k : {"qweight", "qzeros", "scales", "g_idx"}) {
              auto it = tensors->find(mod + "." + k);
              if (it != tensors->end()) t[k] = it->second;
            }
            if (!t.count("qweight") || !t.count("scales")) {
              return absl::InvalidArgumentError(
                  absl::StrCat(mod, ": packed tensors incomplete"));
            }
            const QuantParams& p = art->params_by_module.at(mod);
            const int64_t out = t["scales"].size(1);
            const int64_t in_features =
                awq ? t["qweight"].size(0) : t["qweight"].size(0) * 32 / p.bits;
            ASSIGN_OR_RETURN(torch::Tensor w,
                             DequantizePacked(art->packing, t, p, out,
                                              in_features));
            return w.to(fo.device, fo.dtype);
          }
        }
        return FromMap(*tensors, name);
      };
      ASSIGN_OR_RETURN(q, RunModel(layout, m, in, pool));
    }

    // Metrics: numbers only (the model card tabulates every numeric leaf;
    // {"fp": x, "quantized": y} pairs become one row).
    json info = {{"format", in.quantized.format},
                 {"samples", in.ids.size(0)},
                 {"sequence_length", in.ids.size(1)},
                 {"tokens", tokens},
                 {"device", in.device_name},
                 {"compute_dtype", std::string(c10::toString(
                                       in.forward.dtype))}};
    json metrics = json::object();
    json notes = json::object();

    const TokenSimilarity hs = CompareTokens(fp.hidden, q.hidden, in.mask);
    const int64_t nf_q_hidden = CountNonFinite(q.hidden);
    metrics["hidden_states"] = {
        {"token_cosine_similarity", SimilarityJson(hs)},
        {"mse", MaskedMse(fp.hidden, q.hidden, in.mask)},
        {"non_finite_values", {{"fp", CountNonFinite(fp.hidden)},
                               {"quantized", nf_q_hidden}}}};
    TokenSimilarity gated = hs;
    std::string gated_name = "hidden_states";
    int64_t nf_q = nf_q_hidden;
    if (colqwen) {
      const TokenSimilarity es =
          CompareTokens(fp.embeddings, q.embeddings, in.mask);
      const int64_t nf_e = CountNonFinite(q.embeddings);
      nf_q += nf_e;
      metrics["embeddings"] = {
          {"dim", fp.embeddings.size(-1)},
          {"token_cosine_similarity", SimilarityJson(es)},
          {"mse", MaskedMse(fp.embeddings, q.embeddings, in.mask)},
          {"non_finite_values", {{"fp", CountNonFinite(fp.embeddings)},
                                 {"quantized", nf_e}}}};
      gated = es;
      gated_name = "embeddings";
      if (pool.usable) {
        torch::Tensor s_fp = MaxSimScores(fp.query_emb, pool.query_mask,
                                          fp.doc_emb, pool.doc_mask);
        torch::Tensor s_q = MaxSimScores(q.query_emb, pool.query_mask,
                                         q.doc_emb, pool.doc_mask);
        nf_q += CountNonFinite(q.query_emb) + CountNonFinite(q.doc_emb);
        const ScoreAgreement sa = CompareScores(s_fp, s_q);
        const RetrievalAgreement ra = CompareRankings(s_fp, s_q);
        metrics["retrieval"] = {
            {"documents", ra.documents},
            {"queries", ra.queries},
            {"document_tokens", pool.doc_ids.size(1)},
            {"query_tokens", pool.query_ids.size(1)},
            {"maxsim_mean_abs_diff", sa.mean_abs_diff},
            {"maxsim_max_abs_diff", sa.max_abs_diff},
            {"maxsim_pearson", sa.pearson},
            {"maxsim_spearman", sa.spearman},
            {"recall_at_1", ra.recall_at_1},
            {"recall_at_5", ra.recall_at_5},
            {"self_recall_at_1", {{"fp", ra.fp_self_recall_at_1},
                                  {"quantized",
                                   ra.quantized_self_recall_at_1}}}};
        notes["retrieval"] =
            "documents: the first half of each evaluation sample's real "
            "tokens; queries: up to 32 following tokens, run as separate "
            "sequences; recall_at_k: fraction of queries whose fp top-1 "
            "document is in the quantized model's top k";
      } else {
        notes["retrieval"] = absl::StrCat("skipped: ", pool.skipped_reason);
      }
    }
    if (fp.perplexity && q.perplexity) {
      metrics["perplexity"] = {{"fp", *fp.perplexity},
                               {"quantized", *q.perplexity}};
      metrics["perplexity_relative_change"] =
          (*q.perplexity - *fp.perplexity) / *fp.perplexity;
      if (!std::isfinite(*q.perplexity)) ++nf_q;
    } else if (!fp.perplexity_error.empty() || !q.perplexity_error.empty()) {
      notes["perplexity"] = fp.perplexity_error.empty() ? q.perplexity_error
                                                        : fp.perplexity_error;
    }
    metrics["size"] = SizeReport(layout, *in.original,
                                 *in.quantized.checkpoint, packed);
    json perf = {
        {"seconds", {{"fp", fp.seconds}, {"quantized", q.seconds}}},
        {"tokens_per_second",
         {{"fp", fp.seconds > 0 ? tokens / fp.seconds : 0.0},
          {"quantized", q.seconds > 0 ? tokens / q.seconds : 0.0}}},
        {"resident_weight_bytes",
         {{"fp", fp.resident_bytes}, {"quantized", q.resident_bytes}}}};
    if (q.resident_bytes > 0) {
      perf["resident_weight_ratio"] = static_cast<double>(fp.resident_bytes) /
                                      static_cast<double>(q.resident_bytes);
    }
    if (fp.peak_bytes >= 0 && q.peak_bytes >= 0) {
      perf["peak_device_allocated_bytes"] = {{"fp", fp.peak_bytes},
                                             {"quantized", q.peak_bytes}};
      if (fp.peak_bytes > 0) {
        perf["peak_memory_reduction"] =
            1.0 - static_cast<double>(q.peak_bytes) /
                      static_cast<double>(fp.peak_bytes);
      }
    }
    if (q.seconds > 0) perf["speedup"] = fp.seconds / q.seconds;
    metrics["performance"] = perf;
    notes["performance"] = absl::StrCat(
        "one forward of each model over the same ", in.ids.size(0),
        " samples on ", in.device_name,
        " after a one-sample warm-up, wall time; ",
        in.forward.device.is_cuda()
            ? "peak_device_allocated_bytes: CUDA caching allocator peak, "
              "reset before each model"
            : "no allocator peak on the CPU: resident_weight_bytes is the "
              "bytes of the weights each model keeps in memory",
        "; quantized path: packed tensors resident, each block's Linear "
        "weights dequantized on the host just before use (no fused "
        "low-bit kernel)");

    // The gate.
    std::vector<std::string> failures;
    if (gated.tokens == 0) failures.push_back("no token was evaluated");
    if (nf_q > 0) {
      failures.push_back(absl::StrCat("the quantized model produced ", nf_q,
                                      " NaN/Inf output values"));
    }
    if (!(gated.mean >= thresholds.min_token_cosine_similarity)) {
      failures.push_back(absl::StrCat(
          "mean token cosine similarity of the ", gated_name, " ", gated.mean,
          " < ", thresholds.min_token_cosine_similarity, " over ",
          gated.tokens, " tokens"));
    }
    if (colqwen && thresholds.min_recall_at_1 > 0) {
      if (!metrics.contains("retrieval")) {
        failures.push_back(absl::StrCat(
            "min_recall_at_1 is set but the retrieval pool was ",
            notes.value("retrieval", std::string("not built"))));
      } else {
        const double r1 = metrics["retrieval"]["recall_at_1"];
        if (r1 < thresholds.min_recall_at_1) {
          failures.push_back(absl::StrCat("retrieval recall@1 ", r1, " < ",
                                          thresholds.min_recall_at_1));
        }
      }
    }
    EvaluationOutcome out;
    out.passed = failures.empty();
    out.message = absl::StrJoin(failures, "; ");
    out.gate = {{"gated_outputs", gated_name},
                {"min_recall_at_1", thresholds.min_recall_at_1},
                {"mean_token_cosine_similarity", gated.mean},
                {"min_token_cosine_similarity", gated.min},
                {"tokens", gated.tokens},
                {"non_finite_quantized", nf_q},
                {"passed", out.passed},
                {"failures", failures}};
    out.info = std::move(info);
    out.metrics = std::move(metrics);
    out.notes = std::move(notes);
    return out;
  } catch (const c10::Error& e) {
    return TorchError(e);
  }
}

}  // namespace roundhouse::engine
