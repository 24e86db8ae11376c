#ifndef ROUNDHOUSE_SERVER_CORE_COORDINATOR_H_
#define ROUNDHOUSE_SERVER_CORE_COORDINATOR_H_

// The coordinator core: job queue, scheduler, lease table and store, with no
// knowledge of gRPC (the service classes in server/ translate).
//
// State lives in memory (all jobs, a priority index of queued jobs, the
// running set, workers) and every change is written to the JobStore. A call
// that acknowledges something (submit, lease grant, cancel, complete, fail)
// returns only after the change is durable; heartbeat progress is persisted
// at most once per `progress_persist_interval` per job (watchers see it at
// once).
//
// Semantics (docs/architecture.md "Coordinator"):
// - Effective priority = priority + seconds waited since acceptance /
//   aging_interval; ties FIFO by acceptance. Because every queued job ages at
//   the same rate, the order key priority - created / aging_interval is
//   time-invariant, so the queue is a plain ordered set.
// - A lease grant increments attempt and lease_epoch. Every later call for
//   the job must carry the current (attempt, lease_epoch) of a RUNNING job,
//   else FAILED_PRECONDITION and the job is unchanged (fencing).
// - Lease expiry (no heartbeat within lease_timeout) requeues the job
//   (WORKER_LOST, not charged to max_retries, capped by
//   max_uncounted_retries), or cancels it if a cancel was pending.
// - Terminal states are final.
// - Placement and admission: a queued job goes to the first leasing worker
//   (in queue order) whose device matches, whose free GPUs (LeaseJobRequest
//   .free_gpu_count, else its registered gpu_count) cover gpu_count, and
//   whose free memory (per GPU on cuda) covers the job's requirement:
//   resources.min_memory_bytes, or for cuda jobs with 0 there the admission
//   estimate computed at submit from the model's config.json
//   (Job.estimated_memory_bytes, persisted). A job that fits no worker
//   stays QUEUED; a job whose config.json the coordinator cannot read gets
//   no estimate (0, reason in Job.memory_estimate_note).
//
// Thread safety: all public methods are thread-safe. LeaseJob blocks (real
// time) up to the requested wait. Tick() is driven by an internal thread every
// `tick_interval` (real time) unless that is zero; tests call it directly
// with a FakeClock.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "roundhouse/v1/roundhouse.pb.h"
#include "server/core/job_store.h"
#include "server/core/spec_validation.h"

namespace roundhouse::server {

struct CoordinatorOptions {
  // SQLite database file (created if missing). Required.
  std::string db_path;
  // Model reference resolution (--model-root, --hf-cache).
  ModelResolverOptions models;
  // A lease not renewed by a heartbeat within this time expires. [15 s]
  absl::Duration lease_timeout = absl::Seconds(15);
  // Told to workers at registration. [3 s]
  absl::Duration heartbeat_interval = absl::Seconds(3);
  // One point of effective priority per this much waiting. [60 s]; > 0.
  absl::Duration aging_interval = absl::Seconds(60);
  // Requeues for worker lost / preempted before the job FAILS. [10]
  int max_uncounted_retries = 10;
  // Default of JobSpec.max_retries (counted retries of INTERNAL failures). [2]
  int default_max_retries = 2;
  // Heartbeat progress is written to SQLite at most this often per job. [1 s]
  absl::Duration progress_persist_interval = absl::Seconds(1);
  // Real-time period of the background Tick(); zero = no thread. [200 ms]
  absl::Duration tick_interval = absl::Milliseconds(200);
  // Longest LeaseJob wait honoured. [60 s]
  absl::Duration max_lease_wait = absl::Seconds(60);
  // Time source for leases, deadlines, aging. Not owned; must outlive the
  // coordinator. [the real clock]
  Clock* clock = Clock::Real();
};

enum class RetryReason { kWorkerLost, kPreempted, kOom, kError };
const char* RetryReasonName(RetryReason reason);  // "worker_lost", ...

// Receives events for metrics. Called with the coordinator's lock held: keep
// it cheap and never call back into the Coordinator.
class CoordinatorListener {
 public:
  virtual ~CoordinatorListener() = default;
  virtual void OnJobSubmitted(int priority) {}
  // A lease was granted; `queue_wait_seconds` since the job (re)entered the
  // queue; `resumed` when an earlier attempt had finished blocks.
  virtual void OnJobStarted(double queue_wait_seconds, bool resumed) {}
  virtual void OnRetry(RetryReason reason) {}
  virtual void OnLeaseExpired() {}
  // A job reached terminal `state`; `run_seconds` from first start to end,
  // or a negative value when it never started.
  virtual void OnJobFinished(roundhouse::v1::JobState state,
                             double run_seconds) {}
};

// Point-in-time view for gauges.
struct CoordinatorStats {
  std::map<int, int64_t> queued_by_priority;
  int64_t running = 0;
  double oldest_queued_unix_seconds = 0;  // 0 when the queue is empty
  int64_t workers_idle = 0;
  int64_t workers_busy = 0;
  int64_t workers_draining = 0;
  int64_t workers_lost = 0;  // no heartbeat within lease_timeout
  std::vector<std::pair<std::string, double>> worker_last_heartbeat;
};

struct SubmitResult {
  roundhouse::v1::Job job;
  bool created = false;
};

// Called with (job as of the event, kind) where kind is "snapshot", "state",
// "progress" or "block". Runs with the coordinator's lock held: it must not
// block or call back into the Coordinator.
using WatchCallback =
    std::function<void(const roundhouse::v1::Job&, const std::string&)>;

class Coordinator {
 public:
  // Opens the store, rebuilds the in-memory state (queued jobs re-enter the
  // queue; RUNNING jobs keep their epoch and get a fresh lease deadline) and
  // starts the tick thread. `listener` may be null; not owned.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      CoordinatorOptions options, CoordinatorListener* listener = nullptr);

  // Shutdown() and close the store after every queued write committed.
  ~Coordinator();

  // Validates and durably accepts a job. With an idempotency key already
  // used, returns that job (created = false) once it is durable.
  absl::StatusOr<SubmitResult> SubmitJob(
      const roundhouse::v1::SubmitJobRequest& request);
  absl::StatusOr<roundhouse::v1::Job> GetJob(const std::string& job_id);
  // Acceptance order; page_size [50], max 1000; page_token from the previous
  // response.
  absl::StatusOr<roundhouse::v1::ListJobsResponse> ListJobs(
      const roundhouse::v1::ListJobsRequest& request);
  // QUEUED -> CANCELLED at once; RUNNING -> cancel_requested (the worker is
  // told on its next heartbeat); terminal: unchanged.
  absl::StatusOr<roundhouse::v1::Job> CancelJob(const std::string& job_id);

  // Calls `callback` with the snapshot at once, then with every change until
  // the job is terminal. Returns a watch id for Unwatch (0 when the snapshot
  // was already terminal: no further calls).
  absl::StatusOr<int64_t> Watch(const std::string& job_id,
                                WatchCallback callback);
  // After Unwatch returns the callback is never called again.
  void Unwatch(const std::string& job_id, int64_t watch_id);

  absl::StatusOr<roundhouse::v1::RegisterWorkerResponse> RegisterWorker(
      const roundhouse::v1::RegisterWorkerRequest& request);
  // Blocks up to request.wait_seconds (real time) for a job that fits.
  absl::StatusOr<roundhouse::v1::LeaseJobResponse> LeaseJob(
      const roundhouse::v1::LeaseJobRequest& request);
  absl::StatusOr<roundhouse::v1::HeartbeatResponse> Heartbeat(
      const roundhouse::v1::HeartbeatRequest& request);
  absl::Status CompleteJob(const roundhouse::v1::CompleteJobRequest& request);
  absl::Status FailJob(const roundhouse::v1::FailJobRequest& request);

  // Expires leases, applies deadlines, flushes pending progress.
  void Tick();

  CoordinatorStats GetStats();
  JobStore::Counters GetStoreCounters() const { return store_->GetCounters(); }

  // Wakes blocked LeaseJob calls (they return no lease) and stops the tick
  // thread. Idempotent.
  void Shutdown();

 private:
  struct JobEntry {
    StoredJob stored;
    uint64_t seq = 0;             // acceptance order
    absl::Time queued_since;      // for the queue-wait histogram
    absl::Time lease_deadline;    // RUNNING only
    absl::Time last_persist;
    bool queued_index = false;    // present in queue_
    std::shared_ptr<WriteTicket> insert_ticket;
    roundhouse::v1::Job& job() { return stored.job; }
  };
  struct QueueKey {
    double key;  // priority - created / aging_interval
    uint64_t seq;
    JobEntry* entry;
    bool operator<(const QueueKey& o) const {
      if (key != o.key) return key > o.key;
      return seq < o.seq;
    }
  };
  struct WorkerEntry {
    StoredWorker stored;
    absl::Time last_heartbeat;
    bool draining = false;
  };

  Coordinator(CoordinatorOptions options, CoordinatorListener* listener,
              std::unique_ptr<JobStore> store);
  absl::Status Load();
  void TickLoop();

  QueueKey KeyOf(JobEntry* e) const;
  void EnqueueLocked(JobEntry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DequeueLocked(JobEntry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a leasing worker offers now (LeaseJobRequest, or its registration
  // where the request leaves a field unset).
  struct WorkerCapacity {
    int64_t free_memory_bytes = 0;  // per GPU on cuda
    int free_gpus = 0;
  };
  static WorkerCapacity CapacityOf(
      const WorkerEntry& w, const roundhouse::v1::LeaseJobRequest& request);
  bool FitsLocked(const JobEntry& e, const WorkerEntry& w,
                  const WorkerCapacity& capacity) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobEntry* PickLocked(const WorkerEntry& w, const WorkerCapacity& capacity)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobEntry*> FenceLocked(const roundhouse::v1::LeaseRef& ref)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(JobEntry* e, roundhouse::v1::JobState state,
                    roundhouse::v1::FailureClass failure_class,
                    const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RequeueLocked(JobEntry* e, RetryReason reason,
                     const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyLocked(JobEntry* e, const std::string& kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<WriteTicket> PersistLocked(JobEntry* e)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobEntry* FindLocked(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  CoordinatorListener* const listener_;
  CoordinatorListener null_listener_;
  std::unique_ptr<JobStore> store_;

  absl::Mutex mu_;
  absl::CondVar queue_cv_;  // signalled when a job (re)enters the queue
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, std::unique_ptr<JobEntry>> jobs_
      ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, JobEntry*> by_seq_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, JobEntry*> by_key_ ABSL_GUARDED_BY(mu_);
  std::set<QueueKey> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<JobEntry*> running_ ABSL_GUARDED_BY(mu_);
  // Non-terminal jobs with a deadline, by deadline.
  std::set<std::pair<absl::Time, JobEntry*>> deadlines_ ABSL_GUARDED_BY(mu_);
  // Jobs with heartbeat progress not yet written.
  absl::flat_hash_set<JobEntry*> dirty_progress_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::map<int64_t, WatchCallback>> watchers_
      ABSL_GUARDED_BY(mu_);

  absl::Notification stop_tick_;
  std::thread tick_thread_;
};

bool IsTerminal(roundhouse::v1::JobState state);

// The admission estimate of peak device memory per GPU (bytes) of a cuda
// job whose model directory is `model_path`: common/memory_estimate.h with
// the spec's scheme and the engine's defaults, resources.gpu_count GPUs.
// Errors (config.json unreadable or invalid) name the file. Thread-safe.
absl::StatusOr<int64_t> EstimateJobMemory(const roundhouse::v1::JobSpec& spec,
                                          const std::string& model_path);

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_CORE_COORDINATOR_H_
