#include "worker/agent/agent_metrics.h"

#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/version.h"

#ifdef ROUNDHOUSE_ENABLE_METRICS
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#endif

namespace roundhouse::agent {

#ifdef ROUNDHOUSE_ENABLE_METRICS

namespace {
constexpr const char* kOutcomes[] = {
    "succeeded",     "failed_quality", "invalid_spec", "out_of_memory",
    "preempted",     "internal",       "cancelled",    "abandoned"};
constexpr const char* kMethods[] = {"register", "lease", "heartbeat",
                                    "complete", "fail"};
}  // namespace

struct AgentMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
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
                         .Help("Progress of the job running on this worker, "
                               "0..1 (0 when idle).")
                         .Register(r)
                         .Add({});
  impl_->running = &prometheus::BuildGauge()
                        .Name("roundhouse_worker_jobs_running")
                        .Help("Jobs running on this worker (0 or 1).")
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
                        0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800,
                        3600});
  impl_->oom = &prometheus::BuildCounter()
                    .Name("roundhouse_cuda_oom_total")
                    .Help("Jobs of this worker that ran out of GPU memory.")
                    .Register(r)
                    .Add({});
  auto& finished = prometheus::BuildCounter()
                       .Name("roundhouse_worker_jobs_finished_total")
                       .Help("Job attempts finished on this worker, by "
                             "outcome.")
                       .Register(r);
  for (const char* o : kOutcomes) {
    impl_->outcomes[o] = &finished.Add({{"outcome", o}});
  }
  auto& failures = prometheus::BuildCounter()
                       .Name("roundhouse_worker_rpc_failures_total")
                       .Help("Failed calls from this worker to the "
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

absl::Status AgentMetrics::StartExposer(const std::string& listen) {
  if (impl_->exposer) {
    return absl::FailedPreconditionError("metrics exposer already started");
  }
  try {
    impl_->exposer = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on '", listen, "' (--metrics-listen): ",
        e.what()));
  }
  impl_->exposer->RegisterCollectable(impl_->registry);
  return absl::OkStatus();
}

void AgentMetrics::SetJobProgress(double ratio) { impl_->progress->Set(ratio); }
void AgentMetrics::SetJobRunning(bool running) {
  impl_->running->Set(running ? 1 : 0);
}
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

std::string AgentMetrics::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, impl_->registry->Collect());
  return out.str();
}

#else  // !ROUNDHOUSE_ENABLE_METRICS

struct AgentMetrics::Impl {};
AgentMetrics::AgentMetrics() = default;
AgentMetrics::~AgentMetrics() = default;
absl::Status AgentMetrics::StartExposer(const std::string& listen) {
  return absl::FailedPreconditionError(
      "--metrics-listen: built without ROUNDHOUSE_ENABLE_METRICS");
}
void AgentMetrics::SetJobProgress(double) {}
void AgentMetrics::SetJobRunning(bool) {}
void AgentMetrics::BlockCompleted(double) {}
void AgentMetrics::JobFinished(absl::string_view) {}
void AgentMetrics::CudaOom() {}
void AgentMetrics::SetGpuMemory(int, int64_t, int64_t) {}
void AgentMetrics::RpcFailed(absl::string_view) {}
std::string AgentMetrics::Serialize() const { return ""; }

#endif  // ROUNDHOUSE_ENABLE_METRICS

}  // namespace roundhouse::agent
