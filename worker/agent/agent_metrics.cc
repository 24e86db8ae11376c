#include "worker/agent/agent_metrics.h"

#include <errno.h>
#include <string.h>

#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/version.h"

#ifdef ROUNDHOUSE_ENABLE_METRICS
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/numbers.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#endif

namespace roundhouse::agent {

#ifdef ROUNDHOUSE_ENABLE_METRICS

namespace {
constexpr const char* kOutcomes[] = {
    "succeeded", "failed_quality", "invalid_spec", "out_of_memory",
    "preempted", "internal",       "cancelled",    "abandoned"};
constexpr const char* kMethods[] = {"register", "lease", "heartbeat",
                                    "complete", "fail"};
}  // namespace

struct AgentMetrics::Impl {
  ~Impl() {
    stop.store(true);
    if (server.joinable()) server.join();
    if (listen_fd >= 0) close(listen_fd);
  }
  void Serve();
  std::string Text() {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry->Collect());
    return out.str();
  }

  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  int listen_fd = -1;
  std::atomic<bool> stop{false};
  std::thread server;
  prometheus::Gauge* progress = nullptr;
  prometheus::Gauge* running = nullptr;
  prometheus::Counter* blocks = nullptr;
  prometheus::Histogram* block_seconds = nullptr;
  prometheus::Counter* oom = nullptr;
  std::map<std::string, prometheus::Counter*> outcomes;
  std::map<std::string, prometheus::Counter*> rpc_failures;
  prometheus::Family<prometheus::Gauge>* gpu_used = nullptr;
  prometheus::Family<prometheus::Gauge>* gpu_total = nullptr;
  absl::Mutex gpu_mu;  // Family::Add is thread-safe; this orders Set calls.
};

AgentMetrics::AgentMetrics() : impl_(std::make_unique<Impl>()) {
  auto& r = *impl_->registry;
  impl_->progress = &prometheus::BuildGauge()
                         .Name("roundhouse_worker_job_progress_ratio")
                         .Help(
                             "Mean progress of the jobs running on this "
                             "worker, 0..1 (0 when idle).")
                         .Register(r)
                         .Add({});
  impl_->running = &prometheus::BuildGauge()
                        .Name("roundhouse_worker_jobs_running")
                        .Help("Jobs running on this worker.")
                        .Register(r)
                        .Add({});
  impl_->blocks = &prometheus::BuildCounter()
                       .Name("roundhouse_blocks_completed_total")
                       .Help("Transformer blocks tuned by this worker.")
                       .Register(r)
                       .Add({});
  impl_->block_seconds =
      &prometheus::BuildHistogram()
           .Name("roundhouse_block_tune_duration_seconds")
           .Help("Tuning time of one block as reported by the engine.")
           .Register(r)
           .Add({}, prometheus::Histogram::BucketBoundaries{
                        0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600});
  impl_->oom = &prometheus::BuildCounter()
                    .Name("roundhouse_cuda_oom_total")
                    .Help("Jobs of this worker that ran out of GPU memory.")
                    .Register(r)
                    .Add({});
  auto& finished = prometheus::BuildCounter()
                       .Name("roundhouse_worker_jobs_finished_total")
                       .Help(
                           "Job attempts finished on this worker, by "
                           "outcome.")
                       .Register(r);
  for (const char* o : kOutcomes) {
    impl_->outcomes[o] = &finished.Add({{"outcome", o}});
  }
  auto& failures = prometheus::BuildCounter()
                       .Name("roundhouse_worker_rpc_failures_total")
                       .Help(
                           "Failed calls from this worker to the "
                           "coordinator, by method.")
                       .Register(r);
  for (const char* m : kMethods) {
    impl_->rpc_failures[m] = &failures.Add({{"method", m}});
  }
  impl_->gpu_used = &prometheus::BuildGauge()
                         .Name("roundhouse_gpu_memory_used_bytes")
                         .Help("GPU memory in use (nvidia-smi), by GPU.")
                         .Register(r);
  impl_->gpu_total = &prometheus::BuildGauge()
                          .Name("roundhouse_gpu_memory_total_bytes")
                          .Help("GPU memory size (nvidia-smi), by GPU.")
                          .Register(r);
  prometheus::BuildGauge()
      .Name("roundhouse_build_info")
      .Help("Build metadata; always 1.")
      .Register(r)
      .Add({{"version", ROUNDHOUSE_VERSION},
            {"revision", ROUNDHOUSE_GIT_REVISION}})
      .Set(1);
}

AgentMetrics::~AgentMetrics() = default;

// A minimal HTTP/1.0 responder instead of prometheus-cpp's civetweb
// Exposer: civetweb starts its threads with a ~100 KiB stack, which
// pthread_create refuses once the binary carries large static TLS (e.g. a
// thread_local buffer anywhere in the process), so the Exposer fails with
// "null context". One scrape at a time is plenty for /metrics.
absl::Status AgentMetrics::StartExposer(const std::string& listen) {
  if (impl_->server.joinable()) {
    return absl::FailedPreconditionError("metrics endpoint already started");
  }
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen '", listen, "': ", why));
  };
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return bad("expected HOST:PORT");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_text = absl::StrCat(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(),
                           port_text.c_str(), &hints, &res);
      rc != 0) {
    return bad(gai_strerror(rc));
  }
  int fd = -1;
  std::string error = "no usable address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
      break;
    }
    error = strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on '", listen, "' (--metrics-listen): ", error));
  }
  impl_->listen_fd = fd;
  impl_->server = std::thread([impl = impl_.get()] { impl->Serve(); });
  return absl::OkStatus();
}

void AgentMetrics::Impl::Serve() {
  while (!stop.load()) {
    pollfd p{listen_fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    const int conn = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // Read the request head (bounded in size and time), then answer.
    std::string request;
    char buf[2048];
    while (request.find("\r\n\r\n") == std::string::npos &&
           request.find("\n\n") == std::string::npos &&
           request.size() < 16384) {
      pollfd c{conn, POLLIN, 0};
      if (poll(&c, 1, 2000) <= 0) break;
      const ssize_t n = read(conn, buf, sizeof(buf));
      if (n <= 0) break;
      request.append(buf, n);
    }
    std::string status = "404 Not Found", body = "not found; try /metrics\n";
    const bool get = request.rfind("GET ", 0) == 0;
    const size_t path_end = request.find(' ', 4);
    const std::string path = get && path_end != std::string::npos
                                 ? request.substr(4, path_end - 4)
                                 : "";
    if (path == "/metrics" || path.rfind("/metrics?", 0) == 0) {
      status = "200 OK";
      body = Text();
    } else if (!get) {
      status = "405 Method Not Allowed";
      body = "only GET\n";
    }
    const std::string response = absl::StrCat(
        "HTTP/1.0 ", status,
        "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
        "\r\nContent-Length: ",
        body.size(), "\r\nConnection: close\r\n\r\n", body);
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = send(conn, response.data() + sent,
                             response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    close(conn);
  }
}

void AgentMetrics::SetJobProgress(double ratio) { impl_->progress->Set(ratio); }
void AgentMetrics::SetJobsRunning(int count) { impl_->running->Set(count); }
void AgentMetrics::BlockCompleted(double seconds) {
  impl_->blocks->Increment();
  impl_->block_seconds->Observe(seconds);
}
void AgentMetrics::JobFinished(absl::string_view outcome) {
  auto it = impl_->outcomes.find(std::string(outcome));
  if (it != impl_->outcomes.end()) it->second->Increment();
}
void AgentMetrics::CudaOom() { impl_->oom->Increment(); }
void AgentMetrics::SetGpuMemory(int gpu, int64_t used_bytes,
                                int64_t total_bytes) {
  absl::MutexLock lock(&impl_->gpu_mu);
  const std::string g = absl::StrCat(gpu);
  impl_->gpu_used->Add({{"gpu", g}}).Set(static_cast<double>(used_bytes));
  impl_->gpu_total->Add({{"gpu", g}}).Set(static_cast<double>(total_bytes));
}
void AgentMetrics::RpcFailed(absl::string_view method) {
  auto it = impl_->rpc_failures.find(std::string(method));
  if (it != impl_->rpc_failures.end()) it->second->Increment();
}

std::string AgentMetrics::Serialize() const { return impl_->Text(); }

#else  // !ROUNDHOUSE_ENABLE_METRICS

struct AgentMetrics::Impl {};
AgentMetrics::AgentMetrics() = default;
AgentMetrics::~AgentMetrics() = default;
absl::Status AgentMetrics::StartExposer(const std::string& listen) {
  return absl::FailedPreconditionError(
      "--metrics-listen: built without ROUNDHOUSE_ENABLE_METRICS");
}
void AgentMetrics::SetJobProgress(double) {}
void AgentMetrics::SetJobsRunning(int) {}
void AgentMetrics::BlockCompleted(double) {}
void AgentMetrics::JobFinished(absl::string_view) {}
void AgentMetrics::CudaOom() {}
void AgentMetrics::SetGpuMemory(int, int64_t, int64_t) {}
void AgentMetrics::RpcFailed(absl::string_view) {}
std::string AgentMetrics::Serialize() const { return ""; }

#endif  // ROUNDHOUSE_ENABLE_METRICS

}  // namespace roundhouse::agent
