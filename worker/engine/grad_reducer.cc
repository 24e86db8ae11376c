#include "worker/engine/grad_reducer.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

#ifdef ROUNDHOUSE_WITH_NCCL
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>
#endif

namespace roundhouse::engine {
namespace {

class CopyReducer : public GradientReducer {
 public:
  void AllReduceSum(std::vector<std::vector<torch::Tensor>>& t) override {
    if (t.size() < 2) return;
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < t[0].size(); ++k) {
      torch::Tensor sum = t[0][k];
      for (size_t r = 1; r < t.size(); ++r) {
        sum.add_(t[r][k].to(sum.device(), /*non_blocking=*/true));
      }
      for (size_t r = 1; r < t.size(); ++r) {
        t[r][k].copy_(sum, /*non_blocking=*/true);
      }
    }
  }
  std::string name() const override { return "copy"; }
};

#ifdef ROUNDHOUSE_WITH_NCCL
class NcclReducer : public GradientReducer {
 public:
  explicit NcclReducer(std::vector<ncclComm_t> comms)
      : comms_(std::move(comms)) {}
  ~NcclReducer() override {
    for (ncclComm_t c : comms_) ncclCommDestroy(c);
  }
  void AllReduceSum(std::vector<std::vector<torch::Tensor>>& t) override {
    TORCH_CHECK(t.size() == comms_.size(), "NcclReducer: ", t.size(),
                " replicas for ", comms_.size(), " communicators");
    // One group: NCCL launches every replica's kernels together (a single
    // thread issuing them one by one would deadlock the ring).
    TORCH_CHECK(ncclGroupStart() == ncclSuccess, "ncclGroupStart failed");
    for (size_t k = 0; k < t[0].size(); ++k) {
      for (size_t r = 0; r < t.size(); ++r) {
        torch::Tensor& x = t[r][k];
        TORCH_CHECK(x.is_contiguous() && x.scalar_type() == torch::kFloat32,
                    "NcclReducer: tensors must be contiguous float32");
        cudaStream_t stream =
            c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
        ncclResult_t rc =
            ncclAllReduce(x.data_ptr(), x.data_ptr(), x.numel(), ncclFloat32,
                          ncclSum, comms_[r], stream);
        TORCH_CHECK(rc == ncclSuccess, "ncclAllReduce: ",
                    ncclGetErrorString(rc));
      }
    }
    ncclResult_t rc = ncclGroupEnd();
    TORCH_CHECK(rc == ncclSuccess, "ncclGroupEnd: ", ncclGetErrorString(rc));
  }
  std::string name() const override { return "nccl"; }

 private:
  std::vector<ncclComm_t> comms_;
};
#endif

}  // namespace

std::unique_ptr<GradientReducer> MakeCopyReducer() {
  return std::make_unique<CopyReducer>();
}

absl::StatusOr<std::unique_ptr<GradientReducer>> MakeNcclReducer(
    const std::vector<c10::Device>& devices) {
  std::set<int> seen;
  std::vector<int> ids;
  for (const c10::Device& d : devices) {
    if (!d.is_cuda() || !d.has_index()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NCCL needs indexed CUDA devices, got ", d.str()));
    }
    if (!seen.insert(d.index()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("device ", d.str(), " is listed twice"));
    }
    ids.push_back(d.index());
  }
#ifdef ROUNDHOUSE_WITH_NCCL
  std::vector<ncclComm_t> comms(ids.size());
  ncclResult_t rc = ncclCommInitAll(comms.data(), static_cast<int>(ids.size()),
                                    ids.data());
  if (rc != ncclSuccess) {
    return absl::InternalError(
        absl::StrCat("ncclCommInitAll: ", ncclGetErrorString(rc)));
  }
  return std::unique_ptr<GradientReducer>(new NcclReducer(std::move(comms)));
#else
  return absl::UnimplementedError("this build has no NCCL");
#endif
}

std::unique_ptr<GradientReducer> MakeBestReducer(
    const std::vector<c10::Device>& devices) {
  auto nccl = MakeNcclReducer(devices);
  if (nccl.ok()) return std::move(*nccl);
  return MakeCopyReducer();
}

}  // namespace roundhouse::engine
