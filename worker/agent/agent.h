#ifndef ROUNDHOUSE_WORKER_AGENT_AGENT_H_
#define ROUNDHOUSE_WORKER_AGENT_AGENT_H_

// The worker agent: the gRPC client shell around the engine. It registers
// with the coordinator, leases jobs, runs each one as a child engine process
// (`<engine> quantize ...`, see docs/architecture.md), turns the child's
// stdout events into Progress for heartbeats, and reports the outcome
// classified by the child's exit status.
//
// Example:
//   AgentOptions options;
//   options.work_dir = "/var/lib/roundhouse/work";
//   options.artifact_root = "/srv/artifacts";
//   Agent agent(options, roundhouse::v1::WorkerService::NewStub(channel));
//   std::thread stopper([&] { WaitForSigterm(); agent.RequestDrain(); });
//   absl::Status s = agent.Run();
//
// Several jobs at once: up to `max_concurrent_jobs` leases run side by side.
// On cuda every job gets resources.gpu_count of the agent's GPUs for itself
// (its engine sees only them through CUDA_VISIBLE_DEVICES), so a worker
// with N GPUs runs one N-GPU job or up to N single-GPU jobs. Each LeaseJob
// call reports the free GPU count and the least free memory among the free
// GPUs; the agent leases only while a slot (and on cuda a GPU) is free.
//
// Threads: Run() spawns one heartbeat thread for its whole duration, and per
// job one job thread (which forks, signals and reaps that job's engine) and
// one stdout reader thread; the calling thread runs the lease loop. One
// heartbeat carries every running lease.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "roundhouse/v1/roundhouse.grpc.pb.h"
#include "worker/agent/agent_metrics.h"
#include "worker/agent/engine_events.h"

namespace roundhouse::agent {

struct AgentOptions {
  // Stable worker name sent with every call. Required (the CLI defaults it
  // to <hostname>-<pid>).
  std::string worker_id;
  // Coordinator address; only used in log lines (the stub is given).
  std::string coordinator;
  // Required. Holds jobs/<job_id>/spec.json and jobs/<job_id>/checkpoint/.
  std::string work_dir;
  // Required. Artifacts are written to <artifact_root>/<job_id>.
  std::string artifact_root;
  // "cpu" or "cuda"; passed to the engine as --device.
  std::string device = "cpu";
  // Device memory offered in RegisterWorker. Must be > 0.
  int64_t memory_bytes = 0;
  // GPUs offered in RegisterWorker (0 for cpu). On cuda the agent schedules
  // on GPU indices 0..gpu_count-1 unless `gpu_ids` is set.
  int32_t gpu_count = 0;
  // cuda: the physical GPU indices (nvidia-smi numbering) jobs may use; the
  // engine gets CUDA_VISIBLE_DEVICES=<its share of them>. Empty: 0..
  // gpu_count-1. When set, it is what RegisterWorker reports as gpu_count.
  std::vector<int> gpu_ids;
  // Jobs run at once. 0 = automatic: one per GPU on cuda, 1 on cpu. On cuda
  // a job also needs resources.gpu_count free GPUs.
  int32_t max_concurrent_jobs = 0;
  // Program run as `<engine_binary> quantize ...`.
  std::string engine_binary = "/proc/self/exe";
  // Passed to the engine as --threads when > 0.
  int32_t threads = 0;
  // Lease one job only; exit Run() after it has been reported.
  bool once = false;
  // On LEASE_ACTION_CANCEL: SIGTERM to the engine, SIGKILL after this.
  absl::Duration cancel_grace = absl::Seconds(10);
  // How long one LeaseJob call blocks waiting for a job.
  absl::Duration lease_wait = absl::Seconds(5);
  // Deadline of every unary call (added to lease_wait for LeaseJob).
  absl::Duration rpc_timeout = absl::Seconds(10);
  // Used when RegisterWorker returns heartbeat_interval_seconds <= 0. The
  // interval is capped at a third of the lease timeout the coordinator
  // returns.
  absl::Duration default_heartbeat_interval = absl::Seconds(5);
  // Minimum gap between heartbeats; block events trigger an early one.
  absl::Duration min_heartbeat_gap = absl::Milliseconds(500);
  // Backoff between failed RegisterWorker/LeaseJob attempts (doubling).
  absl::Duration backoff_initial = absl::Milliseconds(200);
  absl::Duration backoff_max = absl::Seconds(5);
  // How long CompleteJob/FailJob are retried while the coordinator is
  // unreachable (after that the lease has expired anyway).
  absl::Duration report_retry_timeout = absl::Seconds(120);
  // How often the lease loop checks the child for exit and pending signals.
  absl::Duration child_poll_interval = absl::Milliseconds(20);
  // Remove <work_dir>/jobs/<job_id> after a job was completed or cancelled
  // (its checkpoint is useless then). Kept for every other outcome so a
  // retry can resume.
  bool remove_finished_job_dirs = true;
};

class Agent {
 public:
  // `stub` must be non-null. `metrics` may be null (no metrics); when set it
  // must outlive the Agent. Does not contact the coordinator.
  Agent(AgentOptions options,
        std::unique_ptr<roundhouse::v1::WorkerService::StubInterface> stub,
        AgentMetrics* metrics = nullptr);
  ~Agent();

  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Registers (retrying with backoff until the coordinator answers or a
  // drain is requested), then leases and runs jobs until RequestDrain() or,
  // with `once`, until one job has been reported. Returns OK in both cases;
  // an error only for invalid options or an unusable work dir. Call once.
  absl::Status Run();

  // Asks Run() to stop: every running job's engine gets SIGTERM (it stops at
  // a block boundary, exit 4) and is reported as PREEMPTED, no new job is
  // leased. Thread-safe; not async-signal-safe (call it from a signal-waiting
  // thread, not from a handler). Idempotent.
  void RequestDrain();

  bool draining() const { return draining_.load(); }

 private:
  struct ActiveJob;

  absl::Status ValidateOptions() const;
  // Registers unless already registered; retries until success or drain.
  // Returns false when a drain stopped it first.
  bool EnsureRegistered();
  // One RegisterWorker call unless already registered. Thread-safe.
  absl::Status RegisterOnce();
  bool SleepUnlessDraining(absl::Duration d);
  // GPU indices the agent schedules on (cuda), slots for concurrent jobs.
  std::vector<int> GpuIds() const;
  int JobSlots() const;
  // The next LeaseJob request: free memory and (cuda) free GPUs.
  roundhouse::v1::LeaseJobRequest MakeLeaseRequest();
  // Runs one leased job to its report; `gpus` are its GPU indices (cuda).
  void RunJob(const roundhouse::v1::Lease& lease, const std::vector<int>& gpus);
  // Publishes the running-job count and mean progress to the metrics.
  void UpdateJobMetricsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HeartbeatLoop();
  void SendHeartbeat();
  void ReaderLoop(int fd, ActiveJob* job);
  void ReportFailure(const roundhouse::v1::LeaseRef& ref,
                     roundhouse::v1::FailureClass failure_class,
                     const std::string& message, int64_t peak_memory_bytes,
                     const roundhouse::v1::Progress& progress);
  void ReportComplete(const roundhouse::v1::LeaseRef& ref,
                      const roundhouse::v1::ArtifactManifest& manifest,
                      const roundhouse::v1::JobError* quality_failure,
                      const roundhouse::v1::Progress& progress);
  // Retries `call` on UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED until
  // report_retry_timeout; logs the outcome under the job id.
  template <typename Call>
  void RetryReport(const std::string& job_id, const char* method, Call call);
  void Log(const std::string& job_id, const std::string& message) const;

  const AgentOptions options_;
  std::unique_ptr<roundhouse::v1::WorkerService::StubInterface> stub_;
  AgentMetrics* const metrics_;
  std::atomic<bool> draining_{false};

  absl::Mutex mu_;
  absl::CondVar cv_;  // drain, stop, heartbeat wake-ups
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration heartbeat_interval_ ABSL_GUARDED_BY(mu_);
  bool stop_heartbeats_ ABSL_GUARDED_BY(mu_) = false;
  bool heartbeat_requested_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<ActiveJob*> active_ ABSL_GUARDED_BY(mu_);  // running jobs
  int running_jobs_ ABSL_GUARDED_BY(mu_) = 0;  // job threads not yet done
  std::vector<int> free_gpus_ ABSL_GUARDED_BY(mu_);  // cuda, sorted

  absl::Mutex register_mu_;  // serialises RegisterWorker calls
  bool ever_registered_ ABSL_GUARDED_BY(register_mu_) = false;
};

// Physical RAM in bytes (sysconf); 0 if unknown.
int64_t PhysicalMemoryBytes();
// MemAvailable from /proc/meminfo in bytes; 0 if unknown.
int64_t AvailableMemoryBytes();

// Per-GPU memory from `nvidia-smi`; empty when it is not installed or fails.
struct GpuMemory {
  int64_t used_bytes = 0;
  int64_t total_bytes = 0;
};
std::vector<GpuMemory> QueryGpuMemory();

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_AGENT_H_
