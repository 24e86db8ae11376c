#include "server/metrics.h"

#include <algorithm>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/version.h"
#include "prometheus/text_serializer.h"

namespace roundhouse::server {
namespace {

const char* OutcomeOf(roundhouse::v1::JobState state) {
  switch (state) {
    case roundhouse::v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case roundhouse::v1::JOB_STATE_CANCELLED:
      return "cancelled";
    case roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED:
      return "deadline_exceeded";
    default:  // FAILED, FAILED_QUALITY
      return "failed";
  }
}

constexpr const char* kOutcomes[] = {"succeeded", "failed", "cancelled",
                                     "deadline_exceeded"};

prometheus::Histogram::BucketBoundaries DurationBuckets() {
  return {60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400};
}
prometheus::Histogram::BucketBoundaries QueueWaitBuckets() {
  return {0.1, 1, 5, 15, 60, 300, 900, 1800, 3600, 14400, 86400};
}
prometheus::Histogram::BucketBoundaries RpcBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
          30};
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      submitted_(prometheus::BuildCounter()
                     .Name("roundhouse_jobs_submitted_total")
                     .Help("Jobs accepted (durably), by priority.")
                     .Register(*registry_)),
      completed_(prometheus::BuildCounter()
                     .Name("roundhouse_jobs_completed_total")
                     .Help("Jobs that reached a terminal state, by outcome.")
                     .Register(*registry_)),
      queued_(prometheus::BuildGauge()
                  .Name("roundhouse_jobs_queued")
                  .Help("Jobs waiting in the queue, by priority.")
                  .Register(*registry_)),
      running_(prometheus::BuildGauge()
                   .Name("roundhouse_jobs_running")
                   .Help("Jobs leased to a worker.")
                   .Register(*registry_)
                   .Add({})),
      oldest_enqueue_(
          prometheus::BuildGauge()
              .Name("roundhouse_queue_oldest_enqueue_timestamp_seconds")
              .Help("When the longest-waiting queued job entered the queue "
                    "(Unix seconds; 0 when the queue is empty).")
              .Register(*registry_)
              .Add({})),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("roundhouse_job_queue_wait_seconds")
                      .Help("Time from entering the queue to a lease grant.")
                      .Register(*registry_)
                      .Add({}, QueueWaitBuckets())),
      duration_(prometheus::BuildHistogram()
                    .Name("roundhouse_job_duration_seconds")
                    .Help("Time from first start to the terminal state, by "
                          "outcome.")
                    .Register(*registry_)),
      attempts_(prometheus::BuildCounter()
                    .Name("roundhouse_job_attempts_total")
                    .Help("Lease grants (attempts started).")
                    .Register(*registry_)
                    .Add({})),
      retries_(prometheus::BuildCounter()
                   .Name("roundhouse_job_retries_total")
                   .Help("Jobs returned to the queue, by reason.")
                   .Register(*registry_)),
      lease_expirations_(prometheus::BuildCounter()
                             .Name("roundhouse_lease_expirations_total")
                             .Help("Leases that expired without a heartbeat.")
                             .Register(*registry_)
                             .Add({})),
      resumes_(prometheus::BuildCounter()
                   .Name("roundhouse_job_resumes_total")
                   .Help("Attempts started on a job whose earlier attempt "
                         "had finished blocks.")
                   .Register(*registry_)
                   .Add({})),
      workers_(prometheus::BuildGauge()
                   .Name("roundhouse_workers")
                   .Help("Registered workers, by state.")
                   .Register(*registry_)),
      worker_heartbeat_(
          prometheus::BuildGauge()
              .Name("roundhouse_worker_last_heartbeat_timestamp_seconds")
              .Help("Last heartbeat (or lease call) of each worker, Unix "
                    "seconds.")
              .Register(*registry_)),
      rpc_requests_(prometheus::BuildCounter()
                        .Name("roundhouse_rpc_requests_total")
                        .Help("RPCs handled, by method and status code.")
                        .Register(*registry_)),
      rpc_duration_(prometheus::BuildHistogram()
                        .Name("roundhouse_rpc_duration_seconds")
                        .Help("RPC handling time, by method.")
                        .Register(*registry_)) {
  for (const char* outcome : kOutcomes) {
    completed_.Add({{"outcome", outcome}});
    duration_.Add({{"outcome", outcome}}, DurationBuckets());
  }
  for (RetryReason r : {RetryReason::kWorkerLost, RetryReason::kPreempted,
                        RetryReason::kOom, RetryReason::kError}) {
    retries_.Add({{"reason", RetryReasonName(r)}});
  }
  for (const char* state : {"idle", "busy", "draining", "lost"}) {
    workers_.Add({{"state", state}});
  }
  prometheus::BuildGauge()
      .Name("roundhouse_build_info")
      .Help("Build metadata; always 1.")
      .Register(*registry_)
      .Add({{"version", ROUNDHOUSE_VERSION},
            {"revision", ROUNDHOUSE_GIT_REVISION}})
      .Set(1);
}

void CoordinatorMetrics::SetStatsSource(
    std::function<CoordinatorStats()> source) {
  absl::MutexLock lock(&mu_);
  source_ = std::move(source);
}

void CoordinatorMetrics::OnRpc(const std::string& method,
                               const std::string& code, double seconds) {
  rpc_requests_.Add({{"method", method}, {"code", code}}).Increment();
  rpc_duration_.Add({{"method", method}}, RpcBuckets()).Observe(seconds);
}

void CoordinatorMetrics::OnJobSubmitted(int priority) {
  submitted_.Add({{"priority", absl::StrCat(priority)}}).Increment();
}

void CoordinatorMetrics::OnJobStarted(double queue_wait_seconds,
                                      bool resumed) {
  attempts_.Increment();
  queue_wait_.Observe(std::max(0.0, queue_wait_seconds));
  if (resumed) resumes_.Increment();
}

void CoordinatorMetrics::OnRetry(RetryReason reason) {
  retries_.Add({{"reason", RetryReasonName(reason)}}).Increment();
}

void CoordinatorMetrics::OnLeaseExpired() { lease_expirations_.Increment(); }

void CoordinatorMetrics::OnJobFinished(roundhouse::v1::JobState state,
                                       double run_seconds) {
  const char* outcome = OutcomeOf(state);
  completed_.Add({{"outcome", outcome}}).Increment();
  if (run_seconds >= 0) {
    duration_.Add({{"outcome", outcome}}, DurationBuckets())
        .Observe(run_seconds);
  }
}

void CoordinatorMetrics::RefreshGauges() const {
  absl::MutexLock lock(&mu_);
  if (!source_) return;
  CoordinatorStats s = source_();
  // Priorities seen before stay exported (as 0) so series do not vanish.
  for (int p : known_priorities_) {
    queued_.Add({{"priority", absl::StrCat(p)}}).Set(0);
  }
  for (const auto& [p, n] : s.queued_by_priority) {
    queued_.Add({{"priority", absl::StrCat(p)}}).Set(static_cast<double>(n));
    if (std::find(known_priorities_.begin(), known_priorities_.end(), p) ==
        known_priorities_.end()) {
      known_priorities_.push_back(p);
    }
  }
  running_.Set(static_cast<double>(s.running));
  oldest_enqueue_.Set(s.oldest_queued_unix_seconds);
  workers_.Add({{"state", "idle"}}).Set(static_cast<double>(s.workers_idle));
  workers_.Add({{"state", "busy"}}).Set(static_cast<double>(s.workers_busy));
  workers_.Add({{"state", "draining"}})
      .Set(static_cast<double>(s.workers_draining));
  workers_.Add({{"state", "lost"}}).Set(static_cast<double>(s.workers_lost));
  for (const auto& [worker, t] : s.worker_last_heartbeat) {
    worker_heartbeat_.Add({{"worker", worker}}).Set(t);
  }
}

std::vector<prometheus::MetricFamily> CoordinatorMetrics::Collect() const {
  RefreshGauges();
  return registry_->Collect();
}

std::string CoordinatorMetrics::SerializeText() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

}  // namespace roundhouse::server
