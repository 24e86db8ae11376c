#ifndef ROUNDHOUSE_WORKER_ENGINE_QUANTIZER_H_
#define ROUNDHOUSE_WORKER_ENGINE_QUANTIZER_H_

// Integer weight quantize-dequantize (QDQ) as in intel/auto-round 0.15.0
// (autoround-spec §1.1-1.3): "full-range symmetric" (sym=true, signed fp16
// scales, zero point 2^(b-1)) and classic asymmetric (sym=false).
//
// Groups run along the input dimension of a Linear weight W [out, in]. The
// effective group size is G = group_size, except that group_size == -1 or
// in < group_size gives one group per output row (G = in). When G does not
// divide `in`, every row is right-padded with zeros to ceil(in/G)*G
// (§1.2); the padding takes part in the group min/max and is dropped after
// the QDQ.
//
// All tensors live on the device of the weight given to LinearQuantizer.
// Tuning parameters are fp32; scales are rounded to fp16 inside the QDQ
// (gradients pass straight through the cast); the QDQ weight is returned in
// the dtype of the original weight.

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace roundhouse::engine {

struct QuantParams {
  int bits = 4;          // 2, 3, 4 or 8 for a quantized layer
  int group_size = 128;  // > 0, or -1 for one group per output row
  bool sym = true;       // full-range symmetric (true) or asymmetric
};

// InvalidArgument naming the field when bits is not 2/3/4/8 or group_size is
// neither -1 nor positive.
absl::Status ValidateQuantParams(const QuantParams& params);

// Group geometry of a weight [out, in] under `params`.
struct GroupLayout {
  int64_t out = 0;
  int64_t in = 0;
  int64_t group = 0;    // effective group size G (in for per-row groups)
  int64_t ngroups = 0;  // ceil(in / G)
  int64_t padded_in() const { return group * ngroups; }
  int64_t rows() const { return out * ngroups; }  // rows of the grouped view
};
GroupLayout MakeGroupLayout(int64_t out, int64_t in, const QuantParams& p);

// The result of quantizing one Linear weight [out, in].
struct QdqResult {
  // [out, in], dtype of the original weight: the dequantized weight.
  torch::Tensor weight_qdq;
  // [out, ngroups] float16. For sym the scale is signed (§1.3).
  torch::Tensor scale;
  // [out, ngroups] int32 zero points: sym 2^(b-1) everywhere, asym the
  // per-group integer z in [0, 2^b-1].
  torch::Tensor zero;
  // [out, in] int32 unsigned codes u in [0, 2^b-1]; W_qdq = (u - zero) *
  // scale exactly (computed in fp32, then cast to the weight dtype).
  // Consumers (PackLinear, the checkpoint store) accept any integer dtype:
  // the pipeline keeps its host copies as uint8 (b <= 8) and drops
  // weight_qdq when no checkpoint store needs it.
  torch::Tensor codes;
};

// One quantized Linear during SignRound tuning (autoround-spec §1.1):
// tunables v [rows, G] (the rounding offset, init 0, not clamped),
// min_scale / max_scale [rows] (init 1, clamped in place to [0, 1] before
// every QDQ), where rows = out * ngroups. The group min/max are taken once
// from the original weight (and always include 0).
//
// Not thread-safe. Holds a reference to `weight` (no copy); the weight must
// not be modified while the quantizer lives.
class LinearQuantizer {
 public:
  // Precondition: weight is a 2-D floating tensor and params are valid (see
  // Create, which checks both). Violations throw c10::Error.
  LinearQuantizer(torch::Tensor weight, QuantParams params,
                  bool enable_minmax_tuning = true);
  // Checked construction: InvalidArgument naming the problem.
  static absl::StatusOr<LinearQuantizer> Create(
      torch::Tensor weight, QuantParams params,
      bool enable_minmax_tuning = true);

  // The QDQ weight [out, in] in the weight dtype from the current
  // parameters; differentiable w.r.t. v, min_scale and max_scale (STE
  // rounding). Clamps min_scale/max_scale to [0, 1] in place first.
  // Runs the fused CUDA kernels (fused_qdq.h; same bytes forward, gradients
  // equal up to fp32 summation order) when fused_active(), else the chain
  // of libtorch ops, which keeps an fp32 padded copy of the weight
  // ([rows, G], built on the first call).
  torch::Tensor QdqForward();
  // Allows (default) or forbids the fused CUDA path for this quantizer.
  void set_fused(bool enabled) { fused_ = enabled; }
  bool fused() const { return fused_; }
  // True when QdqForward() takes the fused path now: set_fused(true), the
  // build has the kernels, RH_DISABLE_FUSED_QDQ is not "1" (the
  // process-wide off switch, read on every call), and the weight is a
  // contiguous float32/bfloat16/float16 CUDA tensor.
  bool fused_active() const;
  // No autograd: the QDQ weight, scales, zero points and integer codes from
  // the current parameters (clamped to [0, 1] on the fly). Always the
  // libtorch ops; uses the fp32 padded copy if QdqForward() built one, else
  // a temporary one.
  QdqResult Finalize() const;

  // {v, min_scale, max_scale}; just {v} when min/max tuning is disabled.
  std::vector<torch::Tensor> tunables();
  std::vector<torch::Tensor> minmax_tunables();  // {} when disabled
  torch::Tensor& v() { return v_; }
  torch::Tensor& min_scale() { return min_scale_; }
  torch::Tensor& max_scale() { return max_scale_; }

  // Copies of the current tunables (same order as tunables()), and the
  // inverse: LoadState copies the given values into the live tensors
  // in place (shapes must match).
  std::vector<torch::Tensor> SaveState() const;
  void LoadState(const std::vector<torch::Tensor>& state);

  const QuantParams& params() const { return params_; }
  const GroupLayout& layout() const { return layout_; }
  const torch::Tensor& weight() const { return weight_; }
  bool minmax_tuning() const { return enable_minmax_tuning_; }

 private:
  // Shared math: returns (qdq grouped fp32 [rows, G], scale fp32 [rows]
  // holding fp16 values, z fp32 [rows] (asym) or undefined, q fp32 codes).
  struct Parts {
    torch::Tensor qdq, scale, zero, q;
  };
  Parts Compute(const torch::Tensor& grouped, const torch::Tensor& min_s,
                const torch::Tensor& max_s) const;
  // The weight as fp32 [rows, G], zero padded (a view for an unpadded fp32
  // weight, else a copy).
  torch::Tensor BuildGrouped() const;

  torch::Tensor weight_;       // original [out, in]
  torch::Tensor grouped_;      // BuildGrouped(), cached by the torch path
  torch::Tensor wmin_, wmax_;  // fp32 [rows]
  torch::Tensor v_, min_scale_, max_scale_;
  QuantParams params_;
  GroupLayout layout_;
  bool enable_minmax_tuning_;
  bool fused_ = true;
};

// Round-to-nearest (V = 0, min/max scales = 1) in closed form, no autograd;
// identical to LinearQuantizer(weight, params).Finalize().
QdqResult QuantizeRtn(const torch::Tensor& weight, const QuantParams& params);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_QUANTIZER_H_
