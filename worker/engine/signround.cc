#include "worker/engine/signround.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace roundhouse::engine {
namespace {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// Uniform integer in [0, n) by rejection, so the sequence does not depend on
// the standard library's distribution implementation.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                         std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

// The reference's IndexSampler: a shuffled permutation per epoch; each call
// takes the next `batch` indices; when fewer remain it reshuffles (the tail
// of the previous permutation is dropped).
class IndexSampler {
 public:
  IndexSampler(int64_t n, uint64_t seed) : rng_(seed), perm_(n) {
    for (int64_t i = 0; i < n; ++i) perm_[i] = i;
    Shuffle();
  }
  std::vector<int64_t> Next(int64_t batch) {
    if (pos_ + batch > static_cast<int64_t>(perm_.size())) Shuffle();
    std::vector<int64_t> out(perm_.begin() + pos_,
                             perm_.begin() + pos_ + batch);
    pos_ += batch;
    return out;
  }

 private:
  void Shuffle() {
    for (size_t i = perm_.size(); i > 1; --i) {
      std::swap(perm_[i - 1], perm_[UniformBelow(rng_, i)]);
    }
    pos_ = 0;
  }
  std::mt19937_64 rng_;
  std::vector<int64_t> perm_;
  int64_t pos_ = 0;
};

struct Tunable {
  torch::Tensor param;
  torch::Tensor best;  // copy of the kept value
  double lr = 0;
};

absl::Status CheckInputs(const BlockConfig& config, const BlockWeights& weights,
                         std::map<std::string, LinearQuantizer>& quantizers,
                         const torch::Tensor& q_in, const torch::Tensor& fp_out,
                         const torch::Tensor& attention_mask,
                         const torch::Tensor& loss_mask, const TuneOptions& o) {
  if (o.iters < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("iters must be >= 0, got ", o.iters));
  }
  if (o.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be >= 1, got ", o.batch_size));
  }
  if (o.gradient_accumulate_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient_accumulate_steps must be >= 1, got ",
                     o.gradient_accumulate_steps));
  }
  if (!(o.lr == -1 || o.lr > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr must be -1 (auto) or positive, got ", o.lr));
  }
  if (!(o.minmax_lr == -1 || o.minmax_lr > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "minmax_lr must be -1 (auto) or positive, got ", o.minmax_lr));
  }
  if (auto s = ValidateBlockWeights(config, weights); !s.ok()) return s;
  if (!q_in.defined() || q_in.dim() != 3 || q_in.size(0) == 0 ||
      q_in.size(2) != config.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q_in must be [N,T,", config.hidden_size, "] with N > 0, got ",
        q_in.defined() ? ShapeString(q_in.sizes()) : "undefined"));
  }
  if (!fp_out.defined() || fp_out.sizes() != q_in.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp_out must have the shape of q_in ", ShapeString(q_in.sizes()),
        ", got ", fp_out.defined() ? ShapeString(fp_out.sizes()) : "none"));
  }
  const std::vector<int64_t> nt = {q_in.size(0), q_in.size(1)};
  if (!attention_mask.defined() ||
      attention_mask.sizes() != c10::IntArrayRef(nt)) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention_mask must be ", ShapeString(nt)));
  }
  if (!loss_mask.defined() || loss_mask.sizes() != c10::IntArrayRef(nt)) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss_mask must be ", ShapeString(nt)));
  }
  const auto& suffixes = BlockLinearSuffixes();
  for (auto& [name, quantizer] : quantizers) {
    if (std::find(suffixes.begin(), suffixes.end(), name) == suffixes.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quantizer key ", name, " is not a block Linear suffix"));
    }
    const torch::Tensor& w = weights.at(name + ".weight");
    if (quantizer.weight().sizes() != w.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("quantizer ", name, " has weight shape ",
                       ShapeString(quantizer.weight().sizes()),
                       " but the block has ", ShapeString(w.sizes())));
    }
  }
  return absl::OkStatus();
}

}  // namespace

double DefaultLearningRate(int iters, int bits) {
  if (iters <= 0) return 0;
  return (iters >= 1000 && bits <= 3 ? 2.0 : 1.0) / iters;
}

absl::StatusOr<TuneResult> TuneBlock(
    const BlockConfig& config, const BlockWeights& weights,
    std::map<std::string, LinearQuantizer>& quantizers,
    const torch::Tensor& q_in, const torch::Tensor& fp_out,
    const torch::Tensor& attention_mask, const torch::Tensor& loss_mask,
    const TuneOptions& o) {
  if (auto s = CheckInputs(config, weights, quantizers, q_in, fp_out,
                           attention_mask, loss_mask, o);
      !s.ok()) {
    return s;
  }
  try {
    const c10::Device dev = weights.at("input_layernorm.weight").device();
    const int64_t n = q_in.size(0), seq = q_in.size(1), hid = q_in.size(2);
    const int64_t global_bs = std::min<int64_t>(
        n, int64_t{o.batch_size} * o.gradient_accumulate_steps);
    const int64_t mb_size = std::min<int64_t>(o.batch_size, global_bs);
    const bool sum_reduction = o.gradient_accumulate_steps > 1;
    const int evals = std::max(o.iters, 1);

    // All batch indices up front: one host-to-device transfer.
    IndexSampler sampler(n, o.seed);
    std::vector<int64_t> all_idx;
    all_idx.reserve(static_cast<size_t>(evals) * global_bs);
    for (int i = 0; i < evals; ++i) {
      std::vector<int64_t> b = sampler.Next(global_bs);
      all_idx.insert(all_idx.end(), b.begin(), b.end());
    }
    torch::Tensor idx_cpu =
        torch::from_blob(all_idx.data(), {evals, global_bs}, torch::kInt64)
            .clone();

    // Reused micro-batch buffers on the compute device.
    auto dev_opts = torch::TensorOptions().device(dev);
    torch::Tensor in_buf =
        torch::empty({mb_size, seq, hid}, dev_opts.dtype(q_in.dtype()));
    torch::Tensor ref_buf =
        torch::empty({mb_size, seq, hid}, dev_opts.dtype(fp_out.dtype()));
    torch::Tensor am_buf =
        torch::empty({mb_size, seq}, dev_opts.dtype(attention_mask.dtype()));
    torch::Tensor lm_buf =
        torch::empty({mb_size, seq}, dev_opts.dtype(torch::kFloat32));
    const torch::Tensor lm_src = loss_mask.to(torch::kFloat32);

    auto gather = [&](const torch::Tensor& src, torch::Tensor& buf,
                      const torch::Tensor& idx_row, int64_t start,
                      int64_t len) {
      torch::Tensor view = buf.narrow(0, 0, len);
      torch::Tensor idx = idx_row.narrow(0, start, len);
      if (src.device() == dev) {
        torch::index_select_out(view, src, 0, idx.to(dev));
      } else {
        view.copy_(src.index_select(0, idx.to(src.device())),
                   /*non_blocking=*/true);
      }
      return view;
    };

    // Tunables with their per-layer learning rates (§1.4).
    std::vector<Tunable> tunables;
    for (auto& [name, qz] : quantizers) {
      const double lr =
          o.lr > 0 ? o.lr : DefaultLearningRate(o.iters, qz.params().bits);
      const double mm_lr = o.minmax_lr > 0 ? o.minmax_lr : lr;
      tunables.push_back({qz.v(), qz.v().detach().clone(), lr});
      for (torch::Tensor& t : qz.minmax_tunables()) {
        tunables.push_back({t, t.detach().clone(), mm_lr});
      }
    }

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
    torch::Tensor best_loss =
        torch::full({}, std::numeric_limits<float>::infinity(), f32);
    torch::Tensor best_iter = torch::zeros({}, f32.dtype(torch::kInt64));
    torch::Tensor loss_before;

    for (int i = 0; i < evals; ++i) {
      const bool train = o.iters > 0;
      torch::Tensor idx_row = idx_cpu[i];
      torch::Tensor total = torch::zeros({}, f32);
      torch::Tensor valid = torch::zeros({}, f32);
      for (int64_t start = 0; start < global_bs; start += mb_size) {
        const int64_t len = std::min(mb_size, global_bs - start);
        torch::Tensor x = gather(q_in, in_buf, idx_row, start, len);
        torch::Tensor ref = gather(fp_out, ref_buf, idx_row, start, len);
        torch::Tensor am = gather(attention_mask, am_buf, idx_row, start, len);
        torch::Tensor lm = gather(lm_src, lm_buf, idx_row, start, len);
        std::unique_ptr<torch::NoGradGuard> no_grad;
        if (!train) no_grad = std::make_unique<torch::NoGradGuard>();
        std::map<std::string, torch::Tensor> overrides;
        for (auto& [name, qz] : quantizers) {
          overrides.emplace(name, qz.QdqForward());
        }
        torch::Tensor pred =
            DecoderBlockForward(config, weights, x, am, &overrides)
                .to(torch::kFloat32);
        torch::Tensor m = lm.unsqueeze(-1);
        torch::Tensor diff = pred * m - ref.to(torch::kFloat32) * m;
        torch::Tensor loss =
            sum_reduction ? diff.pow(2).sum() : diff.pow(2).mean();
        if (train) (loss * 1000.0).backward();
        total += loss.detach();
        valid += lm.sum();
      }
      torch::Tensor cur = total / valid.clamp_min(1.0);
      if (i == 0) loss_before = cur.clone();

      torch::NoGradGuard no_grad;
      const bool keep_last = o.not_use_best_mse && i == evals - 1;
      // Best tracking on the device: no host synchronisation per step.
      torch::Tensor take = keep_last ? torch::ones({}, f32)
                                     : (cur < best_loss).to(torch::kFloat32);
      torch::Tensor keep = 1.0 - take;
      best_loss.copy_(torch::where(take > 0, cur, best_loss));
      best_iter.copy_(torch::where(
          take > 0, torch::full({}, int64_t{i}, f32.dtype(torch::kInt64)),
          best_iter));
      // best = best*keep + param*take: exact for 0/1 weights, no new
      // parameter-sized buffers.
      for (Tunable& t : tunables) {
        t.best.mul_(keep).addcmul_(t.param.detach(), take);
      }
      if (!train) break;

      // Signed SGD with LinearLR(1 -> 0 over iters), stepped after use.
      const double factor = 1.0 - static_cast<double>(i) / o.iters;
      for (Tunable& t : tunables) {
        torch::Tensor& g = t.param.mutable_grad();
        if (!g.defined()) continue;
        g.sign_();
        t.param.add_(g, -t.lr * factor);
        g.zero_();
      }
    }

    torch::NoGradGuard no_grad;
    for (Tunable& t : tunables) t.param.copy_(t.best);
    TuneResult result;
    result.loss_before = loss_before.item<double>();
    result.loss_after = best_loss.item<double>();
    result.best_iter = static_cast<int>(best_iter.item<int64_t>());
    for (auto& [name, qz] : quantizers) {
      result.layers.emplace(name, qz.Finalize());
    }
    return result;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("SignRound tuning failed: ", e.what_without_backtrace()));
  }
}

}  // namespace roundhouse::engine
