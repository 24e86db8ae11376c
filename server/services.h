#ifndef ROUNDHOUSE_SERVER_SERVICES_H_
#define ROUNDHOUSE_SERVER_SERVICES_H_

// Thin gRPC service classes over the coordinator core. Unary RPCs use the
// synchronous API (gRPC's thread pool; SubmitJob blocks until its group
// commit, LeaseJob up to wait_seconds); WatchJob uses the callback API with
// one ServerWriteReactor per watcher.
//
// Neither class owns the Coordinator or the metrics; both must outlive the
// grpc::Server. `metrics` may be null. Thread-safe.

#include <string>

#include "roundhouse/v1/roundhouse.grpc.pb.h"
#include "server/core/coordinator.h"
#include "server/metrics.h"

namespace roundhouse::server {

class JobServiceImpl final
    : public roundhouse::v1::JobService::WithCallbackMethod_WatchJob<
          roundhouse::v1::JobService::Service> {
 public:
  JobServiceImpl(Coordinator* coordinator, CoordinatorMetrics* metrics)
      : coordinator_(coordinator), metrics_(metrics) {}

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const roundhouse::v1::SubmitJobRequest* request,
                         roundhouse::v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const roundhouse::v1::GetJobRequest* request,
                      roundhouse::v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const roundhouse::v1::ListJobsRequest* request,
                        roundhouse::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const roundhouse::v1::CancelJobRequest* request,
                         roundhouse::v1::Job* response) override;
  // Snapshot first, then every change until a terminal state, then OK. Slow
  // readers get the latest pending event only (coalesced).
  grpc::ServerWriteReactor<roundhouse::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const roundhouse::v1::WatchJobRequest* request) override;

 private:
  Coordinator* const coordinator_;
  CoordinatorMetrics* const metrics_;
};

class WorkerServiceImpl final : public roundhouse::v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* coordinator, CoordinatorMetrics* metrics)
      : coordinator_(coordinator), metrics_(metrics) {}

  grpc::Status RegisterWorker(
      grpc::ServerContext* context,
      const roundhouse::v1::RegisterWorkerRequest* request,
      roundhouse::v1::RegisterWorkerResponse* response) override;
  grpc::Status LeaseJob(grpc::ServerContext* context,
                        const roundhouse::v1::LeaseJobRequest* request,
                        roundhouse::v1::LeaseJobResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const roundhouse::v1::HeartbeatRequest* request,
                         roundhouse::v1::HeartbeatResponse* response) override;
  grpc::Status CompleteJob(grpc::ServerContext* context,
                           const roundhouse::v1::CompleteJobRequest* request,
                           roundhouse::v1::Ack* response) override;
  grpc::Status FailJob(grpc::ServerContext* context,
                       const roundhouse::v1::FailJobRequest* request,
                       roundhouse::v1::Ack* response) override;

 private:
  Coordinator* const coordinator_;
  CoordinatorMetrics* const metrics_;
};

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_SERVICES_H_
