#include "worker/engine/signround.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/env_switch.h"
#include "worker/engine/fused_block_ops.h"
#include "worker/engine/fused_qdq.h"
#include "worker/engine/grad_reducer.h"

#ifdef ROUNDHOUSE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

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

// One data-parallel replica: the block, its quantizers and its views of the
// calibration data on one device. Replica 0 uses the caller's objects.
struct Replica {
  c10::Device device = c10::Device(c10::kCPU);
  const BlockWeights* weights = nullptr;
  std::map<std::string, LinearQuantizer>* quantizers = nullptr;
  BlockWeights owned_weights;                          // replicas > 0
  std::map<std::string, LinearQuantizer> owned_quantizers;
  // Sources: on `device`, or on the CPU (low-memory mode: streamed).
  torch::Tensor q_in, fp_out, attention_mask, loss_mask;
  torch::Tensor in_buf, ref_buf, am_buf, lm_buf;  // micro-batch buffers
  torch::Tensor idx;  // [evals, global_bs] int64 on `device`
  std::vector<Tunable> tunables;
  // Per lr group: alpha_i = -lr * (1 - i/iters) for every iteration i, as
  // float32 on the device, so the step reads it without a host value.
  std::vector<torch::Tensor> alpha_tables;
  std::vector<int> alpha_group;  // tunable -> index into alpha_tables
  torch::Tensor total, valid;    // [1] float32 loss sums of an iteration
};

#ifdef ROUNDHOUSE_WITH_CUDA
// The side stream of the captured tuning loop: one per device for the whole
// process. cuBLAS keeps a workspace per (handle, stream) for the life of the
// process, so taking a fresh pool stream for every block left one more pair
// of workspaces allocated after each block (measured on the H200: +64 MB
// of allocated memory per block, up to the pool's 32 streams).
c10::cuda::CUDAStream TuningStream(c10::DeviceIndex index) {
  static std::mutex mu;
  static auto* streams = new std::map<c10::DeviceIndex, c10::cuda::CUDAStream>;
  std::lock_guard<std::mutex> lock(mu);
  auto it = streams->find(index);
  if (it == streams->end()) {
    it = streams
             ->emplace(index, c10::cuda::getStreamFromPool(
                                  /*isHighPriority=*/false, index))
             .first;
  }
  return it->second;
}
#endif

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
  const c10::Device dev0 = weights.at("input_layernorm.weight").device();
  std::vector<c10::Device> devices = o.devices;
  if (devices.empty()) devices.push_back(dev0);
  if (devices[0] != dev0) {
    return absl::InvalidArgumentError(
        absl::StrCat("devices[0] must be the device of the block weights (",
                     dev0.str(), "), got ", devices[0].str()));
  }
  try {
    const int64_t n = q_in.size(0), seq = q_in.size(1), hid = q_in.size(2);
    const int64_t global_bs = std::min<int64_t>(
        n, int64_t{o.batch_size} * o.gradient_accumulate_steps);
    const int64_t mb_size = std::min<int64_t>(o.batch_size, global_bs);
    const bool sum_reduction = o.gradient_accumulate_steps > 1;
    const int evals = std::max(o.iters, 1);
    const bool train = o.iters > 0;
    const int num_replicas = static_cast<int>(devices.size());
    const bool fused_step = o.fused_step &&
                            !EnvSwitchOn("RH_DISABLE_FUSED_STEP") &&
                            FusedKernelsCompiled() && dev0.is_cuda();

    BlockForwardOptions fwd;
    // One host synchronisation per block buys the causal-only attention
    // kernel for unpadded calibration sets.
    fwd.no_padding = attention_mask.ne(0).all().item<bool>();

    // All batch indices up front: one host-to-device transfer per replica.
    IndexSampler sampler(n, o.seed);
    std::vector<int64_t> all_idx;
    all_idx.reserve(static_cast<size_t>(evals) * global_bs);
    for (int i = 0; i < evals; ++i) {
      std::vector<int64_t> b = sampler.Next(global_bs);
      all_idx.insert(all_idx.end(), b.begin(), b.end());
    }
    const torch::Tensor idx_cpu =
        torch::from_blob(all_idx.data(), {evals, global_bs}, torch::kInt64)
            .clone();
    const torch::Tensor lm_src = loss_mask.to(torch::kFloat32);

    // Learning rates (§1.4): one group per distinct (tensor kind, layer lr).
    std::vector<double> group_lr;
    auto lr_group = [&group_lr](double lr) {
      for (size_t g = 0; g < group_lr.size(); ++g) {
        if (group_lr[g] == lr) return static_cast<int>(g);
      }
      group_lr.push_back(lr);
      return static_cast<int>(group_lr.size() - 1);
    };

    std::vector<std::unique_ptr<Replica>> replicas;
    for (int r = 0; r < num_replicas; ++r) {
      auto rep = std::make_unique<Replica>();
      Replica& R = *rep;
      R.device = devices[r];
      auto place = [&](const torch::Tensor& t) {
        // Streamed sources stay on the CPU for every replica.
        return t.device().is_cpu() && !R.device.is_cpu() ? t : t.to(R.device);
      };
      if (r == 0) {
        R.weights = &weights;
        R.quantizers = &quantizers;
      } else {
        torch::NoGradGuard no_grad;
        for (const auto& [name, t] : weights) {
          R.owned_weights.emplace(name, t.to(R.device));
        }
        for (auto& [name, qz] : quantizers) {
          LinearQuantizer copy(R.owned_weights.at(name + ".weight"),
                               qz.params(), qz.minmax_tuning());
          copy.LoadState(qz.SaveState());
          R.owned_quantizers.emplace(name, std::move(copy));
        }
        R.weights = &R.owned_weights;
        R.quantizers = &R.owned_quantizers;
      }
      R.q_in = place(q_in);
      R.fp_out = place(fp_out);
      R.attention_mask = place(attention_mask);
      R.loss_mask = place(lm_src);
      auto opts = torch::TensorOptions().device(R.device);
      R.in_buf = torch::empty({mb_size, seq, hid}, opts.dtype(q_in.dtype()));
      R.ref_buf = torch::empty({mb_size, seq, hid}, opts.dtype(fp_out.dtype()));
      R.am_buf =
          torch::empty({mb_size, seq}, opts.dtype(attention_mask.dtype()));
      R.lm_buf = torch::empty({mb_size, seq}, opts.dtype(torch::kFloat32));
      R.idx = idx_cpu.to(R.device);
      R.total = torch::zeros({1}, opts.dtype(torch::kFloat32));
      R.valid = torch::zeros({1}, opts.dtype(torch::kFloat32));
      for (auto& [name, qz] : *R.quantizers) {
        const double lr =
            o.lr > 0 ? o.lr : DefaultLearningRate(o.iters, qz.params().bits);
        const double mm_lr = o.minmax_lr > 0 ? o.minmax_lr : lr;
        R.tunables.push_back({qz.v(), qz.v().detach().clone(), lr});
        R.alpha_group.push_back(lr_group(lr));
        for (torch::Tensor& t : qz.minmax_tunables()) {
          R.tunables.push_back({t, t.detach().clone(), mm_lr});
          R.alpha_group.push_back(lr_group(mm_lr));
        }
      }
      replicas.push_back(std::move(rep));
    }
    if (fused_step && train) {
      for (auto& rep : replicas) {
        for (double lr : group_lr) {
          std::vector<float> table(evals);
          for (int i = 0; i < evals; ++i) {
            // The same double product the libtorch path hands to add_().
            table[i] = static_cast<float>(
                -lr * (1.0 - static_cast<double>(i) / o.iters));
          }
          rep->alpha_tables.push_back(
              torch::from_blob(table.data(), {evals}, torch::kFloat32)
                  .to(rep->device));
        }
      }
    }
    std::unique_ptr<GradientReducer> reducer;
    if (num_replicas > 1) reducer = MakeBestReducer(devices);

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev0);
    torch::Tensor best_loss =
        torch::full({}, std::numeric_limits<float>::infinity(), f32);
    torch::Tensor best_iter = torch::zeros({}, f32.dtype(torch::kInt64));
    torch::Tensor iter_dev = torch::zeros({1}, f32.dtype(torch::kInt64));
    torch::Tensor loss_before;
    torch::Tensor cur_loss = torch::zeros({}, f32);

    auto gather = [](const torch::Tensor& src, torch::Tensor& buf,
                     const torch::Tensor& idx_dev,
                     const torch::Tensor& idx_host, int64_t start,
                     int64_t len) {
      torch::Tensor view = buf.narrow(0, 0, len);
      if (src.device() == buf.device()) {
        torch::index_select_out(view, src, 0, idx_dev.narrow(0, start, len));
      } else {
        view.copy_(src.index_select(0, idx_host.narrow(0, start, len)),
                   /*non_blocking=*/true);
      }
      return view;
    };

    // One iteration. `captured`: recorded into a CUDA graph, so nothing may
    // depend on the host value of `i` (the iteration is read from iter_dev)
    // and nothing may synchronise with the host.
    auto step = [&](int i, bool captured) {
      for (auto& rep : replicas) {
        rep->total.zero_();
        rep->valid.zero_();
      }
      for (auto& rep : replicas) {
        Replica& R = *rep;
        const torch::Tensor idx_row =
            captured ? R.idx.index_select(0, iter_dev).view({global_bs})
                     : R.idx[i];
        const torch::Tensor idx_host = idx_cpu[i];
        for (int64_t start = 0; start < global_bs; start += mb_size) {
          const int64_t len = std::min(mb_size, global_bs - start);
          // Replica r takes [lo, hi) of this micro-batch.
          const int r = static_cast<int>(&rep - &replicas[0]);
          const int64_t lo = start + len * r / num_replicas;
          const int64_t hi = start + len * (r + 1) / num_replicas;
          if (hi == lo) continue;
          torch::Tensor x =
              gather(R.q_in, R.in_buf, idx_row, idx_host, lo, hi - lo);
          torch::Tensor ref =
              gather(R.fp_out, R.ref_buf, idx_row, idx_host, lo, hi - lo);
          torch::Tensor am = gather(R.attention_mask, R.am_buf, idx_row,
                                    idx_host, lo, hi - lo);
          torch::Tensor lm =
              gather(R.loss_mask, R.lm_buf, idx_row, idx_host, lo, hi - lo);
          std::optional<torch::NoGradGuard> no_grad;
          if (!train) no_grad.emplace();
          std::map<std::string, torch::Tensor> overrides;
          for (auto& [name, qz] : *R.quantizers) {
            overrides.emplace(name, qz.QdqForward());
          }
          torch::Tensor out =
              DecoderBlockForward(config, *R.weights, x, am, &overrides, fwd);
          torch::Tensor loss;
          if (FusedBlockOpsUsable(out) &&
              out.scalar_type() == ref.scalar_type()) {
            // One pass instead of the fp32 casts, masks, difference, square
            // and reduction below; the same scale for every case.
            const double scale =
                sum_reduction ? 1.0
                              : 1.0 / static_cast<double>(len * seq * hid);
            loss = FusedMaskedMse(out, ref, lm, scale);
          } else {
            torch::Tensor pred = out.to(torch::kFloat32);
            torch::Tensor m = lm.unsqueeze(-1);
            torch::Tensor diff = pred * m - ref.to(torch::kFloat32) * m;
            if (sum_reduction) {
              loss = diff.pow(2).sum();
            } else if (num_replicas == 1) {
              loss = diff.pow(2).mean();
            } else {
              // The replicas' shares of the whole micro-batch's mean.
              loss = diff.pow(2).sum() / static_cast<double>(len * seq * hid);
            }
          }
          if (train) (loss * 1000.0).backward();
          R.total.add_(loss.detach());
          R.valid.add_(lm.sum());
        }
      }
      if (num_replicas > 1) {
        std::vector<std::vector<torch::Tensor>> sums;
        for (auto& rep : replicas) {
          std::vector<torch::Tensor> row = {rep->total, rep->valid};
          for (Tunable& t : rep->tunables) {
            torch::Tensor& g = t.param.mutable_grad();
            if (!g.defined()) g = torch::zeros_like(t.param);
            row.push_back(g);
          }
          sums.push_back(std::move(row));
        }
        reducer->AllReduceSum(sums);
      }

      torch::NoGradGuard no_grad;
      // After the all-reduce every replica holds the same sums, so replica
      // 0 decides for all.
      Replica& R0 = *replicas[0];
      torch::Tensor cur = (R0.total / R0.valid.clamp_min(1.0)).squeeze(0);
      cur_loss.copy_(cur);
      // Best tracking on the device: no host synchronisation per step.
      const bool keep_last = !captured && o.not_use_best_mse && i == evals - 1;
      torch::Tensor take0 = keep_last ? torch::ones({}, cur.options())
                                      : (cur < best_loss).to(torch::kFloat32);
      torch::Tensor now =
          captured ? iter_dev.squeeze(0)
                   : torch::full({}, int64_t{i}, best_iter.options());
      best_iter.copy_(torch::where(take0 > 0, now, best_iter));
      best_loss.copy_(torch::where(take0 > 0, cur, best_loss));
      for (auto& rep : replicas) {
        Replica& R = *rep;
        torch::Tensor take = take0.to(R.device);
        if (!train) {
          for (Tunable& t : R.tunables) t.best.copy_(t.param.detach());
          continue;
        }
        if (fused_step) {
          for (size_t k = 0; k < R.tunables.size(); ++k) {
            Tunable& t = R.tunables[k];
            const torch::Tensor& table = R.alpha_tables[R.alpha_group[k]];
            torch::Tensor alpha = captured ? table.index_select(0, iter_dev)
                                           : table.narrow(0, i, 1);
            torch::Tensor& g = t.param.mutable_grad();
            if (!g.defined()) g = torch::zeros_like(t.param);
            FusedSignStep(t.param, g, t.best, take, alpha);
            // Eager: the next backward writes a fresh gradient instead of
            // accumulating into a zeroed one (one pass less). Captured: the
            // graph owns the buffer and overwrites it on every replay.
            if (!captured) g = torch::Tensor();
          }
        } else {
          torch::Tensor keep = 1.0 - take;
          // best = best*keep + param*take: exact for 0/1 weights.
          for (Tunable& t : R.tunables) {
            t.best.mul_(keep).addcmul_(t.param.detach(), take);
          }
          // Signed SGD with LinearLR(1 -> 0 over iters), stepped after use.
          const double factor = 1.0 - static_cast<double>(i) / o.iters;
          for (Tunable& t : R.tunables) {
            torch::Tensor& g = t.param.mutable_grad();
            if (!g.defined()) continue;
            g.sign_();
            t.param.add_(g, -t.lr * factor);
            g.zero_();
          }
        }
      }
      if (captured) iter_dev.add_(1);
    };

    TuneResult result;
    result.replicas = num_replicas;
    bool graph_done = false;
#ifdef ROUNDHOUSE_WITH_CUDA
    // The fixed-shape iteration as one CUDA graph: a few eager iterations
    // on a side stream warm up cuBLAS, autograd and the allocator, then one
    // iteration is captured and replayed for the rest (the last one eagerly
    // when not_use_best_mse forces its parameters).
    constexpr int kWarmup = 3;
    const bool data_on_device =
        q_in.device() == dev0 && fp_out.device() == dev0 &&
        attention_mask.device() == dev0 && loss_mask.device() == dev0;
    const int graph_end = o.not_use_best_mse ? evals - 1 : evals;
    if (train && dev0.is_cuda() && num_replicas == 1 && fused_step &&
        data_on_device && o.cuda_graphs &&
        !EnvSwitchOn("RH_DISABLE_CUDA_GRAPHS") && graph_end - kWarmup >= 2) {
      c10::cuda::CUDAStream side = TuningStream(dev0.index());
      // Inputs were produced on the current stream.
      c10::cuda::getCurrentCUDAStream(dev0.index()).synchronize();
      {
        c10::cuda::CUDAStreamGuard guard(side);
        for (int i = 0; i < kWarmup; ++i) {
          step(i, /*captured=*/false);
          if (i == 0) loss_before = cur_loss.clone();
        }
        for (Tunable& t : replicas[0]->tunables) {
          t.param.mutable_grad() = torch::Tensor();
        }
        iter_dev.fill_(kWarmup);
        at::cuda::CUDAGraph graph;
        graph.capture_begin();
        step(kWarmup, /*captured=*/true);
        graph.capture_end();
        for (int i = kWarmup; i < graph_end; ++i) graph.replay();
        for (int i = graph_end; i < evals; ++i) step(i, /*captured=*/false);
        side.synchronize();
      }
      graph_done = true;
      result.used_cuda_graph = true;
    }
#endif
    if (!graph_done) {
      for (int i = 0; i < evals; ++i) {
        step(i, /*captured=*/false);
        if (i == 0) loss_before = cur_loss.clone();
        if (!train) break;
      }
    }

    torch::NoGradGuard no_grad;
    for (Tunable& t : replicas[0]->tunables) {
      t.param.copy_(t.best);
      t.param.mutable_grad() = torch::Tensor();
    }
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
