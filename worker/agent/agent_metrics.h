#ifndef ROUNDHOUSE_WORKER_AGENT_AGENT_METRICS_H_
#define ROUNDHOUSE_WORKER_AGENT_AGENT_METRICS_H_

// Prometheus metrics of one worker agent (docs: service.md §5.2, worker
// table). Labels never carry job ids or model names; each metric has a
// bounded label set that is initialised to 0 at construction.
//
//   roundhouse_worker_job_progress_ratio          gauge, mean 0..1 of the
//                                                 running jobs (0 when idle)
//   roundhouse_worker_jobs_running                gauge, running jobs
//   roundhouse_blocks_completed_total             counter
//   roundhouse_block_tune_duration_seconds        histogram (engine-reported)
//   roundhouse_worker_jobs_finished_total{outcome} counter; outcome in
//       succeeded, failed_quality, invalid_spec, out_of_memory, preempted,
//       internal, cancelled, abandoned
//   roundhouse_cuda_oom_total                     counter (engine exit 3 on a
//                                                 cuda worker)
//   roundhouse_gpu_memory_used_bytes{gpu}, roundhouse_gpu_memory_total_bytes
//       {gpu}                                     gauges; absent on cpu
//   roundhouse_worker_rpc_failures_total{method}  counter; method in
//       register, lease, heartbeat, complete, fail
//   roundhouse_build_info{version,revision}       gauge = 1
//
// When the project is built without ROUNDHOUSE_ENABLE_METRICS every method is
// a no-op and Serialize() returns "".
//
// Thread-safe: all methods may be called from any thread.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace roundhouse::agent {

class AgentMetrics {
 public:
  AgentMetrics();
  ~AgentMetrics();

  // Serves GET /metrics on `listen` ("host:port", "[v6]:port"; port 0 picks
  // a free one) from a background thread until destruction. Call at most
  // once. Errors name --metrics-listen.
  absl::Status StartExposer(const std::string& listen);

  void SetJobProgress(double ratio);
  void SetJobsRunning(int count);
  void BlockCompleted(double seconds);
  // `outcome` must be one of the values listed above; others are ignored.
  void JobFinished(absl::string_view outcome);
  void CudaOom();
  void SetGpuMemory(int gpu, int64_t used_bytes, int64_t total_bytes);
  // `method` must be one of the values listed above; others are ignored.
  void RpcFailed(absl::string_view method);

  // Text exposition format (for tests and debugging).
  std::string Serialize() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_AGENT_METRICS_H_
