#ifndef ROUNDHOUSE_SERVER_COORDINATOR_SERVER_H_
#define ROUNDHOUSE_SERVER_COORDINATOR_SERVER_H_

// The assembled coordinator process: core + gRPC services (JobService,
// WorkerService, grpc.health.v1, server reflection) + the Prometheus
// endpoint. Used by coordinator_main.cc and by in-process tests.
//
// Thread-safe. Call order: Start, then (from any thread) Shutdown once;
// the destructor shuts down if needed.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "server/core/coordinator.h"
#include "server/metrics.h"
#include "server/services.h"

namespace prometheus {
class Exposer;
}

namespace roundhouse::server {

struct CoordinatorServerOptions {
  // gRPC listen address, HOST:PORT; port 0 picks a free port.
  std::string listen = "127.0.0.1:7600";
  // Prometheus /metrics listen address; empty = no HTTP endpoint; port 0
  // picks a free port.
  std::string metrics_listen = "127.0.0.1:9600";
  CoordinatorOptions coordinator;
};

class CoordinatorServer {
 public:
  // Opens the store, starts serving. Errors name the address or file.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      CoordinatorServerOptions options);
  ~CoordinatorServer();

  // HOST:PORT actually bound (the port resolved when 0 was asked for).
  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  Coordinator* coordinator() { return coordinator_.get(); }
  CoordinatorMetrics* metrics() { return metrics_.get(); }

  // Stops accepting, wakes blocked LeaseJob calls, lets in-flight RPCs
  // finish (cancelling what is left after `grace`), then closes the store
  // once every accepted write committed. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  CoordinatorServer() = default;

  std::shared_ptr<CoordinatorMetrics> metrics_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_COORDINATOR_SERVER_H_
