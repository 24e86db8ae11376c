#include "server/coordinator_server.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"

namespace roundhouse::server {

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorServerOptions options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->metrics_ = std::make_shared<CoordinatorMetrics>();
  auto coordinator =
      Coordinator::Create(options.coordinator, s->metrics_.get());
  if (!coordinator.ok()) return coordinator.status();
  s->coordinator_ = std::move(*coordinator);
  Coordinator* c = s->coordinator_.get();
  s->metrics_->SetStatsSource([c] { return c->GetStats(); });

  s->job_service_ = std::make_unique<JobServiceImpl>(c, s->metrics_.get());
  s->worker_service_ =
      std::make_unique<WorkerServiceImpl>(c, s->metrics_.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(s->job_service_.get());
  builder.RegisterService(s->worker_service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("listen: cannot bind gRPC address ", options.listen));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  std::string host = options.listen.substr(0, options.listen.rfind(':'));
  s->address_ = absl::StrCat(host, ":", port);

  if (!options.metrics_listen.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(
          options.metrics_listen, /*num_threads=*/2);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("metrics-listen: cannot bind ", options.metrics_listen,
                       ": ", e.what()));
    }
    s->exposer_->RegisterCollectable(s->metrics_);
    auto ports = s->exposer_->GetListeningPorts();
    if (!ports.empty()) s->metrics_port_ = ports[0];
  }
  return s;
}

void CoordinatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
  }
  // Wake LeaseJob long-polls first so the server can drain quickly.
  if (coordinator_ != nullptr) coordinator_->Shutdown();
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoSeconds(grace));
    server_->Wait();
  }
  exposer_.reset();
  if (metrics_ != nullptr) metrics_->SetStatsSource(nullptr);
  coordinator_.reset();  // commits every queued write, closes SQLite
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

}  // namespace roundhouse::server
