#include "server/services.h"

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/grpc_status.h"

namespace roundhouse::server {
namespace {

using roundhouse::v1::Job;
using roundhouse::v1::JobEvent;

// Records one RPC in the metrics when it goes out of scope.
class RpcScope {
 public:
  RpcScope(CoordinatorMetrics* metrics, const char* method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {}
  ~RpcScope() {
    if (metrics_ == nullptr) return;
    std::string code = absl::StatusCodeToString(
        static_cast<absl::StatusCode>(status_.error_code()));
    metrics_->OnRpc(method_, code,
                    absl::ToDoubleSeconds(absl::Now() - start_));
  }
  grpc::Status Return(const absl::Status& status) {
    status_ = ToGrpcStatus(status);
    return status_;
  }

 private:
  CoordinatorMetrics* metrics_;
  const char* method_;
  absl::Time start_;
  grpc::Status status_;
};

int KindRank(const std::string& kind) {
  if (kind == "snapshot") return 3;
  if (kind == "state") return 2;
  if (kind == "block") return 1;
  return 0;
}

// One watcher. Events arrive from the coordinator (under its lock) through
// Push; at most one write is in flight, and while it is, newer events
// replace the pending one (a slow reader sees the latest state, never an
// unbounded backlog). After a terminal event is written the stream ends OK.
class WatchReactor : public grpc::ServerWriteReactor<JobEvent> {
 public:
  WatchReactor(Coordinator* coordinator, CoordinatorMetrics* metrics,
               const std::string& job_id)
      : coordinator_(coordinator),
        metrics_(metrics),
        job_id_(job_id),
        start_(absl::Now()) {
    auto id = coordinator_->Watch(
        job_id, [this](const Job& job, const std::string& kind) {
          Push(job, kind);
        });
    absl::MutexLock lock(&mu_);
    if (!id.ok()) {
      FinishLocked(ToGrpcStatus(id.status()));
      return;
    }
    watch_id_ = *id;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED,
                                "the watcher went away"));
      return;
    }
    NextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (!writing_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED,
                                "the watcher cancelled"));
    }
    // else: OnWriteDone(false) follows and finishes.
  }

  void OnDone() override {
    int64_t watch_id;
    {
      absl::MutexLock lock(&mu_);
      watch_id = watch_id_;
    }
    // After Unwatch no Push can be running or start, so deleting is safe.
    if (watch_id != 0) coordinator_->Unwatch(job_id_, watch_id);
    if (metrics_ != nullptr) {
      metrics_->OnRpc("WatchJob",
                      absl::StatusCodeToString(static_cast<absl::StatusCode>(
                          final_status_.error_code())),
                      absl::ToDoubleSeconds(absl::Now() - start_));
    }
    delete this;
  }

 private:
  void Push(const Job& job, const std::string& kind) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    std::string merged_kind = kind;
    if (pending_.has_value() &&
        KindRank(pending_->kind()) > KindRank(kind)) {
      merged_kind = pending_->kind();
    }
    pending_.emplace();
    *pending_->mutable_job() = job;
    pending_->set_kind(merged_kind);
    if (IsTerminal(job.state())) terminal_ = true;
    if (!writing_) NextLocked();
  }

  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED,
                                "the watcher cancelled"));
      return;
    }
    if (pending_.has_value()) {
      current_ = std::move(*pending_);
      pending_.reset();
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (terminal_) FinishLocked(grpc::Status::OK);
  }

  void FinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    final_status_ = status;
    Finish(status);
  }

  Coordinator* const coordinator_;
  CoordinatorMetrics* const metrics_;
  const std::string job_id_;
  const absl::Time start_;
  absl::Mutex mu_;
  int64_t watch_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<JobEvent> pending_ ABSL_GUARDED_BY(mu_);
  JobEvent current_;  // owned by the in-flight write
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool terminal_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_;
};

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(
    grpc::ServerContext*, const roundhouse::v1::SubmitJobRequest* request,
    roundhouse::v1::SubmitJobResponse* response) {
  RpcScope rpc(metrics_, "SubmitJob");
  auto result = coordinator_->SubmitJob(*request);
  if (!result.ok()) return rpc.Return(result.status());
  *response->mutable_job() = std::move(result->job);
  response->set_created(result->created);
  return rpc.Return(absl::OkStatus());
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext*,
                                    const roundhouse::v1::GetJobRequest* request,
                                    Job* response) {
  RpcScope rpc(metrics_, "GetJob");
  auto job = coordinator_->GetJob(request->job_id());
  if (!job.ok()) return rpc.Return(job.status());
  *response = std::move(*job);
  return rpc.Return(absl::OkStatus());
}

grpc::Status JobServiceImpl::ListJobs(
    grpc::ServerContext*, const roundhouse::v1::ListJobsRequest* request,
    roundhouse::v1::ListJobsResponse* response) {
  RpcScope rpc(metrics_, "ListJobs");
  auto list = coordinator_->ListJobs(*request);
  if (!list.ok()) return rpc.Return(list.status());
  *response = std::move(*list);
  return rpc.Return(absl::OkStatus());
}

grpc::Status JobServiceImpl::CancelJob(
    grpc::ServerContext*, const roundhouse::v1::CancelJobRequest* request,
    Job* response) {
  RpcScope rpc(metrics_, "CancelJob");
  auto job = coordinator_->CancelJob(request->job_id());
  if (!job.ok()) return rpc.Return(job.status());
  *response = std::move(*job);
  return rpc.Return(absl::OkStatus());
}

grpc::ServerWriteReactor<JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext*,
    const roundhouse::v1::WatchJobRequest* request) {
  return new WatchReactor(coordinator_, metrics_, request->job_id());
}

grpc::Status WorkerServiceImpl::RegisterWorker(
    grpc::ServerContext*, const roundhouse::v1::RegisterWorkerRequest* request,
    roundhouse::v1::RegisterWorkerResponse* response) {
  RpcScope rpc(metrics_, "RegisterWorker");
  auto r = coordinator_->RegisterWorker(*request);
  if (!r.ok()) return rpc.Return(r.status());
  *response = std::move(*r);
  return rpc.Return(absl::OkStatus());
}

grpc::Status WorkerServiceImpl::LeaseJob(
    grpc::ServerContext*, const roundhouse::v1::LeaseJobRequest* request,
    roundhouse::v1::LeaseJobResponse* response) {
  RpcScope rpc(metrics_, "LeaseJob");
  auto r = coordinator_->LeaseJob(*request);
  if (!r.ok()) return rpc.Return(r.status());
  *response = std::move(*r);
  return rpc.Return(absl::OkStatus());
}

grpc::Status WorkerServiceImpl::Heartbeat(
    grpc::ServerContext*, const roundhouse::v1::HeartbeatRequest* request,
    roundhouse::v1::HeartbeatResponse* response) {
  RpcScope rpc(metrics_, "Heartbeat");
  auto r = coordinator_->Heartbeat(*request);
  if (!r.ok()) return rpc.Return(r.status());
  *response = std::move(*r);
  return rpc.Return(absl::OkStatus());
}

grpc::Status WorkerServiceImpl::CompleteJob(
    grpc::ServerContext*, const roundhouse::v1::CompleteJobRequest* request,
    roundhouse::v1::Ack*) {
  RpcScope rpc(metrics_, "CompleteJob");
  return rpc.Return(coordinator_->CompleteJob(*request));
}

grpc::Status WorkerServiceImpl::FailJob(
    grpc::ServerContext*, const roundhouse::v1::FailJobRequest* request,
    roundhouse::v1::Ack*) {
  RpcScope rpc(metrics_, "FailJob");
  return rpc.Return(coordinator_->FailJob(*request));
}

}  // namespace roundhouse::server
