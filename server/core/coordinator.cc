#include "server/core/coordinator.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/memory_estimate.h"
#include "common/status_macros.h"

namespace roundhouse::server {
namespace {

using roundhouse::v1::FailureClass;
using roundhouse::v1::Job;
using roundhouse::v1::JobState;

double ToUnix(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }
absl::Time FromUnix(double s) { return absl::UnixEpoch() + absl::Seconds(s); }

// One log line to stderr; job ids go in logs, never in metric labels.
template <typename... Args>
void Log(const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ ", absl::Now(), absl::UTCTimeZone()),
      "coordinator: ", absl::StrFormat(format, args...), "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

std::string NewJobId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("job-%016x", absl::Uniform<uint64_t>(*gen));
}

absl::Duration DeadlineOf(const Job& job) {
  return absl::Seconds(job.spec().deadline_seconds());
}

// When the worker gives no ETA (<= 0) while blocks remain, estimate it from
// the mean tuning time of the blocks reported so far; -1 when unknown.
void FillEta(roundhouse::v1::Progress* p) {
  int remaining = p->blocks_total() - p->blocks_done();
  if (p->eta_seconds() > 0 || remaining <= 0) return;
  double sum = 0;
  int n = 0;
  for (const auto& b : p->blocks()) {
    if (b.seconds() > 0) {
      sum += b.seconds();
      ++n;
    }
  }
  p->set_eta_seconds(n > 0 ? sum / n * remaining : -1);
}

}  // namespace

absl::StatusOr<int64_t> EstimateJobMemory(const roundhouse::v1::JobSpec& spec,
                                          const std::string& model_path) {
  ASSIGN_OR_RETURN(ModelShape shape, ReadModelShape(model_path));
  // The engine's defaults (proto comments; job_config.h), including what
  // the colpali_train_set preset sets when the scheme leaves it open.
  const auto& sc = spec.scheme();
  const bool colpali = spec.calibration().preset() == "colpali_train_set";
  EstimateInputs in;
  in.nsamples = sc.has_nsamples() ? sc.nsamples() : (colpali ? 256 : 128);
  in.seqlen = sc.has_seqlen() ? sc.seqlen() : (colpali ? 512 : 2048);
  in.batch_size = sc.has_batch_size() ? sc.batch_size() : 8;
  in.gradient_accumulate_steps =
      sc.has_gradient_accumulate_steps() ? sc.gradient_accumulate_steps() : 1;
  in.iters = sc.has_iters() ? sc.iters() : 200;
  in.bits = sc.has_bits() ? sc.bits() : 4;
  in.group_size = sc.has_group_size() ? sc.group_size() : 128;
  in.enable_minmax_tuning =
      sc.has_enable_minmax_tuning() ? sc.enable_minmax_tuning() : true;
  in.enable_quanted_input =
      sc.has_enable_quanted_input() ? sc.enable_quanted_input() : true;
  in.compute_dtype = sc.has_compute_dtype() ? sc.compute_dtype() : "auto";
  const auto& ev = spec.evaluation();
  in.evaluation_enabled = ev.has_enabled() ? ev.enabled() : true;
  in.eval_samples = ev.has_eval_samples() ? ev.eval_samples() : 16;
  EstimateOptions options;
  options.device = "cuda";
  options.gpus = std::max(1, spec.resources().gpu_count());
  ASSIGN_OR_RETURN(MemoryEstimate e, EstimatePeakMemory(shape, in, options));
  return e.total_bytes;
}

bool IsTerminal(JobState s) {
  return s == roundhouse::v1::JOB_STATE_SUCCEEDED ||
         s == roundhouse::v1::JOB_STATE_FAILED ||
         s == roundhouse::v1::JOB_STATE_CANCELLED ||
         s == roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED ||
         s == roundhouse::v1::JOB_STATE_FAILED_QUALITY;
}

const char* RetryReasonName(RetryReason reason) {
  switch (reason) {
    case RetryReason::kWorkerLost:
      return "worker_lost";
    case RetryReason::kPreempted:
      return "preempted";
    case RetryReason::kOom:
      return "oom";
    case RetryReason::kError:
      return "error";
  }
  return "error";
}

Coordinator::Coordinator(CoordinatorOptions options,
                         CoordinatorListener* listener,
                         std::unique_ptr<JobStore> store)
    : options_(std::move(options)),
      listener_(listener ? listener : &null_listener_),
      store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    CoordinatorOptions options, CoordinatorListener* listener) {
  if (options.db_path.empty()) {
    return absl::InvalidArgumentError("db: a database path is required");
  }
  if (options.aging_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("aging_interval: must be > 0");
  }
  if (options.lease_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease_timeout: must be > 0");
  }
  for (const std::string& root : options.models.model_roots) {
    if (!IsDirectory(root)) {
      return absl::InvalidArgumentError(
          absl::StrCat("model-root: ", root, " is not a directory"));
    }
  }
  if (!options.models.hf_cache.empty() &&
      !IsDirectory(options.models.hf_cache)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hf-cache: ", options.models.hf_cache, " is not a directory"));
  }
  if (options.clock == nullptr) options.clock = Clock::Real();
  ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
                   JobStore::Open(options.db_path));
  std::unique_ptr<Coordinator> c(
      new Coordinator(std::move(options), listener, std::move(store)));
  RETURN_IF_ERROR(c->Load());
  if (c->options_.tick_interval > absl::ZeroDuration()) {
    c->tick_thread_ = std::thread([p = c.get()] { p->TickLoop(); });
  }
  return c;
}

Coordinator::~Coordinator() {
  Shutdown();
  store_.reset();  // drains queued writes
  // Shows how well group commit batched (writes per fsynced transaction).
  Log("closed %s", options_.db_path);
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (!shutting_down_) {
      JobStore::Counters c = store_->GetCounters();
      Log("shutting down; store committed %d writes in %d transactions",
          static_cast<long long>(c.writes),
          static_cast<long long>(c.transactions));
    }
    shutting_down_ = true;
    queue_cv_.SignalAll();
  }
  if (!stop_tick_.HasBeenNotified()) stop_tick_.Notify();
  if (tick_thread_.joinable()) tick_thread_.join();
}

void Coordinator::TickLoop() {
  while (!stop_tick_.WaitForNotificationWithTimeout(options_.tick_interval)) {
    Tick();
  }
}

absl::Status Coordinator::Load() {
  ASSIGN_OR_RETURN(std::vector<StoredJob> jobs, store_->LoadJobs());
  ASSIGN_OR_RETURN(std::vector<StoredWorker> workers, store_->LoadWorkers());
  absl::MutexLock lock(&mu_);
  absl::Time now = options_.clock->Now();
  int queued = 0, running = 0;
  for (StoredJob& sj : jobs) {
    auto e = std::make_unique<JobEntry>();
    e->stored = std::move(sj);
    e->seq = next_seq_++;
    e->queued_since = FromUnix(e->job().created_unix_seconds());
    e->last_persist = now;
    JobEntry* p = e.get();
    by_seq_[p->seq] = p;
    if (!p->job().idempotency_key().empty()) {
      by_key_[p->job().idempotency_key()] = p;
    }
    JobState state = p->job().state();
    if (state == roundhouse::v1::JOB_STATE_QUEUED) {
      EnqueueLocked(p);
      ++queued;
    } else if (state == roundhouse::v1::JOB_STATE_RUNNING) {
      // The worker may still be alive: give it a full lease to heartbeat.
      p->lease_deadline = now + options_.lease_timeout;
      running_.insert(p);
      ++running;
    }
    if (!IsTerminal(state) && p->job().spec().deadline_seconds() > 0) {
      deadlines_.insert(
          {FromUnix(p->job().created_unix_seconds()) + DeadlineOf(p->job()),
           p});
    }
    jobs_[p->job().job_id()] = std::move(e);
  }
  for (StoredWorker& w : workers) {
    WorkerEntry entry;
    entry.stored = std::move(w);
    entry.last_heartbeat = now;  // grace: treat as seen at start-up
    workers_[entry.stored.info.worker_id()] = std::move(entry);
  }
  Log("opened %s: %d jobs (%d queued, %d running), %d workers",
      options_.db_path, static_cast<int>(jobs.size()), queued, running,
      static_cast<int>(workers.size()));
  return absl::OkStatus();
}

Coordinator::QueueKey Coordinator::KeyOf(JobEntry* e) const {
  double key = e->job().spec().priority() -
               e->job().created_unix_seconds() /
                   absl::ToDoubleSeconds(options_.aging_interval);
  return QueueKey{key, e->seq, e};
}

void Coordinator::EnqueueLocked(JobEntry* e) {
  if (e->queued_index) return;
  queue_.insert(KeyOf(e));
  e->queued_index = true;
  queue_cv_.SignalAll();
}

void Coordinator::DequeueLocked(JobEntry* e) {
  if (!e->queued_index) return;
  queue_.erase(KeyOf(e));
  e->queued_index = false;
}

Coordinator::JobEntry* Coordinator::FindLocked(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

std::shared_ptr<WriteTicket> Coordinator::PersistLocked(JobEntry* e) {
  e->last_persist = options_.clock->Now();
  dirty_progress_.erase(e);
  return store_->UpdateJob(e->stored);
}

void Coordinator::NotifyLocked(JobEntry* e, const std::string& kind) {
  auto it = watchers_.find(e->job().job_id());
  if (it == watchers_.end()) return;
  for (auto& [id, cb] : it->second) cb(e->job(), kind);
  if (IsTerminal(e->job().state())) watchers_.erase(it);
}

// ---------------------------------------------------------------------------
// JobService side
// ---------------------------------------------------------------------------

absl::StatusOr<SubmitResult> Coordinator::SubmitJob(
    const roundhouse::v1::SubmitJobRequest& request) {
  roundhouse::v1::JobSpec spec;
  if (request.has_spec_json()) {
    ASSIGN_OR_RETURN(spec, ParseSpecJson(request.spec_json()));
  } else if (request.has_spec()) {
    spec = request.spec();
  } else {
    return absl::InvalidArgumentError("spec: either spec or spec_json is "
                                      "required");
  }
  if (request.idempotency_key().size() > 256) {
    return absl::InvalidArgumentError(
        "idempotency_key: longer than 256 characters");
  }
  ASSIGN_OR_RETURN(ValidatedSpec valid,
                   ValidateSpec(options_.models, std::move(spec)));
  // Admission estimate (outside the lock: it reads config.json). A model
  // the coordinator cannot read is no reason to refuse the job: it runs
  // with no memory requirement and the job says why.
  int64_t estimate = 0;
  std::string estimate_note;
  if (valid.spec.resources().device() == "cuda" &&
      valid.spec.resources().min_memory_bytes() == 0) {
    absl::StatusOr<int64_t> e = EstimateJobMemory(valid.spec, valid.model_path);
    if (e.ok()) {
      estimate = *e;
    } else {
      estimate_note = absl::StrCat("no memory estimate: ", e.status().message());
    }
  }

  std::shared_ptr<WriteTicket> ticket;
  SubmitResult result;
  std::string job_id;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return absl::UnavailableError("the coordinator is shutting down");
    }
    if (!request.idempotency_key().empty()) {
      auto it = by_key_.find(request.idempotency_key());
      if (it != by_key_.end()) {
        ticket = it->second->insert_ticket;
        result.job = it->second->job();
        result.created = false;
      }
    }
    if (ticket == nullptr && !result.job.job_id().empty()) {
      // Loaded from the store: durable already.
      return result;
    }
    if (ticket == nullptr) {
      auto e = std::make_unique<JobEntry>();
      absl::Time now = options_.clock->Now();
      Job& job = e->job();
      job.set_job_id(NewJobId());
      *job.mutable_spec() = std::move(valid.spec);
      job.set_state(roundhouse::v1::JOB_STATE_QUEUED);
      job.set_created_unix_seconds(ToUnix(now));
      job.set_idempotency_key(request.idempotency_key());
      job.set_estimated_memory_bytes(estimate);
      job.set_memory_estimate_note(estimate_note);
      job.mutable_progress()->set_stage("queued");
      job.mutable_progress()->set_eta_seconds(-1);
      e->stored.model_path = valid.model_path;
      e->seq = next_seq_++;
      e->queued_since = now;
      e->last_persist = now;
      ticket = store_->InsertJob(e->stored);
      e->insert_ticket = ticket;
      JobEntry* p = e.get();
      by_seq_[p->seq] = p;
      if (!job.idempotency_key().empty()) by_key_[job.idempotency_key()] = p;
      job_id = job.job_id();
      result.job = job;
      result.created = true;
      jobs_[job_id] = std::move(e);
    }
  }
  absl::Status status = ticket->Wait();
  absl::ReleasableMutexLock lock(&mu_);
  if (!result.created) {
    if (!status.ok()) return status;
    return result;
  }
  JobEntry* e = FindLocked(job_id);
  if (!status.ok()) {
    // Not durable: forget it, as if never accepted.
    if (e != nullptr) {
      by_seq_.erase(e->seq);
      if (!e->job().idempotency_key().empty()) {
        by_key_.erase(e->job().idempotency_key());
      }
      jobs_.erase(job_id);
    }
    Log("submit of %s failed: %s", job_id, status.ToString());
    return status;
  }
  if (e == nullptr) return status;  // cannot happen: entries are never erased
  listener_->OnJobSubmitted(e->job().spec().priority());
  // Leasable only once durable, so no worker runs a job a crash could lose.
  if (e->job().state() == roundhouse::v1::JOB_STATE_QUEUED) {
    EnqueueLocked(e);
    if (e->job().spec().deadline_seconds() > 0) {
      deadlines_.insert({FromUnix(e->job().created_unix_seconds()) +
                             DeadlineOf(e->job()),
                         e});
    }
  }
  result.job = e->job();
  lock.Release();  // log outside the lock
  Log("accepted %s (priority %d, model %s)", job_id,
      result.job.spec().priority(), valid.model_path);
  if (estimate > 0) {
    Log("%s: estimated peak device memory %d bytes per GPU", job_id,
        static_cast<long long>(estimate));
  } else if (!estimate_note.empty()) {
    Log("%s: %s", job_id, estimate_note);
  }
  return result;
}

absl::StatusOr<Job> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  JobEntry* e = FindLocked(job_id);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  }
  return e->job();
}

absl::StatusOr<roundhouse::v1::ListJobsResponse> Coordinator::ListJobs(
    const roundhouse::v1::ListJobsRequest& request) {
  int page_size = request.page_size();
  if (page_size < 0) {
    return absl::InvalidArgumentError("page_size: is negative");
  }
  if (page_size == 0) page_size = 50;
  page_size = std::min(page_size, 1000);
  uint64_t start = 0;
  if (!request.page_token().empty() &&
      !absl::SimpleAtoi(request.page_token(), &start)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token: \"", request.page_token(),
                     "\" is not a token from ListJobs"));
  }
  std::set<int> states(request.states().begin(), request.states().end());
  roundhouse::v1::ListJobsResponse response;
  absl::MutexLock lock(&mu_);
  for (auto it = by_seq_.lower_bound(start); it != by_seq_.end(); ++it) {
    const Job& job = it->second->job();
    if (it->second->insert_ticket && !it->second->insert_ticket->Done()) {
      continue;  // not yet acknowledged
    }
    if (!states.empty() && !states.count(job.state())) continue;
    bool match = true;
    for (const auto& [k, v] : request.label_selector()) {
      auto l = job.spec().labels().find(k);
      if (l == job.spec().labels().end() || l->second != v) {
        match = false;
        break;
      }
    }
    if (!match) continue;
    if (response.jobs_size() == page_size) {
      response.set_next_page_token(absl::StrCat(it->first));
      break;
    }
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<Job> Coordinator::CancelJob(const std::string& job_id) {
  std::shared_ptr<WriteTicket> ticket;
  Job snapshot;
  {
    absl::MutexLock lock(&mu_);
    JobEntry* e = FindLocked(job_id);
    if (e == nullptr) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    }
    JobState state = e->job().state();
    if (IsTerminal(state)) return e->job();
    if (state == roundhouse::v1::JOB_STATE_QUEUED) {
      FinishLocked(e, roundhouse::v1::JOB_STATE_CANCELLED,
                   roundhouse::v1::FAILURE_CLASS_CANCELLED,
                   "cancelled before it started");
    } else if (!e->job().cancel_requested()) {
      e->job().set_cancel_requested(true);
      Log("cancel requested for running %s (worker %s)", job_id,
          e->job().worker_id());
      NotifyLocked(e, "state");
    }
    ticket = PersistLocked(e);
    snapshot = e->job();
  }
  RETURN_IF_ERROR(ticket->Wait());
  return snapshot;
}

absl::StatusOr<int64_t> Coordinator::Watch(const std::string& job_id,
                                           WatchCallback callback) {
  absl::MutexLock lock(&mu_);
  JobEntry* e = FindLocked(job_id);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  }
  callback(e->job(), "snapshot");
  if (IsTerminal(e->job().state())) return 0;
  int64_t id = next_watch_id_++;
  watchers_[job_id].emplace(id, std::move(callback));
  return id;
}

void Coordinator::Unwatch(const std::string& job_id, int64_t watch_id) {
  absl::MutexLock lock(&mu_);
  auto it = watchers_.find(job_id);
  if (it == watchers_.end()) return;
  it->second.erase(watch_id);
  if (it->second.empty()) watchers_.erase(it);
}

// ---------------------------------------------------------------------------
// WorkerService side
// ---------------------------------------------------------------------------

absl::StatusOr<roundhouse::v1::RegisterWorkerResponse>
Coordinator::RegisterWorker(
    const roundhouse::v1::RegisterWorkerRequest& request) {
  if (request.worker_id().empty() || request.worker_id().size() > 128) {
    return absl::InvalidArgumentError(
        "worker_id: must have 1..128 characters");
  }
  if (request.device() != "cpu" && request.device() != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "device: \"", request.device(), "\" is not one of \"cpu\", \"cuda\""));
  }
  if (request.memory_bytes() < 0 || request.gpu_count() < 0) {
    return absl::InvalidArgumentError(
        "memory_bytes/gpu_count: must not be negative");
  }
  std::shared_ptr<WriteTicket> ticket;
  {
    absl::MutexLock lock(&mu_);
    WorkerEntry& w = workers_[request.worker_id()];
    w.stored.info = request;
    w.stored.registered_unix_seconds = ToUnix(options_.clock->Now());
    w.last_heartbeat = options_.clock->Now();
    w.draining = false;
    ticket = store_->UpsertWorker(w.stored);
  }
  RETURN_IF_ERROR(ticket->Wait());
  Log("worker %s registered (%s, %d bytes, %d gpus, version %s)",
      request.worker_id(), request.device(),
      static_cast<long long>(request.memory_bytes()), request.gpu_count(),
      request.version());
  roundhouse::v1::RegisterWorkerResponse response;
  response.set_heartbeat_interval_seconds(
      absl::ToDoubleSeconds(options_.heartbeat_interval));
  response.set_lease_timeout_seconds(
      absl::ToDoubleSeconds(options_.lease_timeout));
  return response;
}

bool Coordinator::FitsLocked(const JobEntry& e, const WorkerEntry& w,
                             const WorkerCapacity& capacity) const {
  const auto& res = e.stored.job.spec().resources();
  const std::string& device = w.stored.info.device();
  if (res.device() == "cuda" && device != "cuda") return false;
  if (res.device() == "cpu" && device != "cpu") return false;
  // An explicit requirement wins over the estimate.
  const int64_t need_memory = res.min_memory_bytes() > 0
                                  ? res.min_memory_bytes()
                                  : e.stored.job.estimated_memory_bytes();
  if (need_memory > capacity.free_memory_bytes) return false;
  if (device == "cuda" || res.device() == "cuda") {
    const int need = std::max(1, res.gpu_count());
    if (need > capacity.free_gpus) return false;
  }
  return true;
}

Coordinator::JobEntry* Coordinator::PickLocked(
    const WorkerEntry& w, const WorkerCapacity& capacity) {
  for (const QueueKey& k : queue_) {
    if (FitsLocked(*k.entry, w, capacity)) return k.entry;
  }
  return nullptr;
}

Coordinator::WorkerCapacity Coordinator::CapacityOf(
    const WorkerEntry& w, const roundhouse::v1::LeaseJobRequest& request) {
  WorkerCapacity c;
  c.free_memory_bytes = request.free_memory_bytes() > 0
                            ? request.free_memory_bytes()
                            : w.stored.info.memory_bytes();
  // Agents that run one job at a time do not report free GPUs: all of the
  // registered ones are free when they ask. A cuda worker counts at least 1.
  c.free_gpus = request.has_free_gpu_count()
                    ? request.free_gpu_count()
                    : std::max(1, w.stored.info.gpu_count());
  return c;
}

absl::StatusOr<roundhouse::v1::LeaseJobResponse> Coordinator::LeaseJob(
    const roundhouse::v1::LeaseJobRequest& request) {
  roundhouse::v1::LeaseJobResponse response;
  if (!(request.wait_seconds() >= 0)) {
    return absl::InvalidArgumentError("wait_seconds: must be >= 0");
  }
  absl::Time real_deadline =
      absl::Now() + std::min(absl::Seconds(request.wait_seconds()),
                             options_.max_lease_wait);
  std::shared_ptr<WriteTicket> ticket;
  {
    absl::MutexLock lock(&mu_);
    JobEntry* e = nullptr;
    while (true) {
      auto w = workers_.find(request.worker_id());
      if (w == workers_.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "worker ", request.worker_id(),
            " is not registered: call RegisterWorker first"));
      }
      if (shutting_down_) return response;
      w->second.last_heartbeat = options_.clock->Now();
      if (!w->second.draining) {
        e = PickLocked(w->second, CapacityOf(w->second, request));
      }
      if (e != nullptr) break;
      if (queue_cv_.WaitWithDeadline(&mu_, real_deadline)) {
        // Timed out; one last look so a job that arrived with the timeout
        // is not missed.
        auto w2 = workers_.find(request.worker_id());
        if (w2 != workers_.end() && !w2->second.draining && !shutting_down_) {
          e = PickLocked(w2->second, CapacityOf(w2->second, request));
        }
        if (e == nullptr) return response;
        break;
      }
    }
    absl::Time now = options_.clock->Now();
    DequeueLocked(e);
    Job& job = e->job();
    job.set_state(roundhouse::v1::JOB_STATE_RUNNING);
    job.set_attempt(job.attempt() + 1);
    job.set_lease_epoch(job.lease_epoch() + 1);
    job.set_worker_id(request.worker_id());
    if (job.started_unix_seconds() == 0) {
      job.set_started_unix_seconds(ToUnix(now));
    }
    e->lease_deadline = now + options_.lease_timeout;
    running_.insert(e);
    bool resumed = job.attempt() > 1 && job.progress().blocks_done() > 0;
    listener_->OnJobStarted(absl::ToDoubleSeconds(now - e->queued_since),
                            resumed);
    roundhouse::v1::Lease* lease = response.mutable_lease();
    lease->set_job_id(job.job_id());
    lease->set_attempt(job.attempt());
    lease->set_lease_epoch(job.lease_epoch());
    *lease->mutable_spec() = job.spec();
    lease->set_model_path(e->stored.model_path);
    lease->set_lease_timeout_seconds(
        absl::ToDoubleSeconds(options_.lease_timeout));
    lease->set_low_memory(e->stored.low_memory);
    Log("leased %s to %s (attempt %d, epoch %d%s)", job.job_id(),
        request.worker_id(), job.attempt(),
        static_cast<long long>(job.lease_epoch()),
        e->stored.low_memory ? ", low memory" : "");
    NotifyLocked(e, "state");
    ticket = PersistLocked(e);
  }
  // The grant must be durable: after a restart the job must still be
  // RUNNING under this epoch, never handed out again under the same one.
  RETURN_IF_ERROR(ticket->Wait());
  return response;
}

absl::StatusOr<Coordinator::JobEntry*> Coordinator::FenceLocked(
    const roundhouse::v1::LeaseRef& ref) {
  JobEntry* e = FindLocked(ref.job_id());
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("job ", ref.job_id(),
                                            " not found"));
  }
  const Job& job = e->job();
  if (ref.lease_epoch() != job.lease_epoch() ||
      ref.attempt() != job.attempt()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease epoch ", ref.lease_epoch(), " (attempt ", ref.attempt(),
        ") of job ", ref.job_id(), " is stale: the job was re-leased (epoch ",
        job.lease_epoch(), ")"));
  }
  if (job.state() != roundhouse::v1::JOB_STATE_RUNNING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease epoch ", ref.lease_epoch(), " of job ", ref.job_id(),
        " is no longer valid: the job is ",
        roundhouse::v1::JobState_Name(job.state())));
  }
  if (!ref.worker_id().empty() && ref.worker_id() != job.worker_id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", ref.job_id(), " is leased to ", job.worker_id(),
                     ", not ", ref.worker_id()));
  }
  return e;
}

absl::StatusOr<roundhouse::v1::HeartbeatResponse> Coordinator::Heartbeat(
    const roundhouse::v1::HeartbeatRequest& request) {
  if (request.progress_size() > 0 &&
      request.progress_size() != request.leases_size()) {
    return absl::InvalidArgumentError(
        "progress: must be empty or have one entry per lease");
  }
  roundhouse::v1::HeartbeatResponse response;
  absl::MutexLock lock(&mu_);
  absl::Time now = options_.clock->Now();
  auto w = workers_.find(request.worker_id());
  if (w != workers_.end()) {
    w->second.last_heartbeat = now;
    w->second.draining = request.draining();
  }
  for (int i = 0; i < request.leases_size(); ++i) {
    roundhouse::v1::LeaseRef ref = request.leases(i);
    if (ref.worker_id().empty()) ref.set_worker_id(request.worker_id());
    auto fenced = FenceLocked(ref);
    if (!fenced.ok()) {
      response.add_actions(roundhouse::v1::LEASE_ACTION_ABANDON);
      continue;
    }
    JobEntry* e = *fenced;
    e->lease_deadline = now + options_.lease_timeout;
    response.add_actions(e->job().cancel_requested()
                             ? roundhouse::v1::LEASE_ACTION_CANCEL
                             : roundhouse::v1::LEASE_ACTION_CONTINUE);
    if (request.progress_size() > 0) {
      const auto& p = request.progress(i);
      bool block = p.blocks_done() != e->job().progress().blocks_done() ||
                   p.blocks_size() != e->job().progress().blocks_size();
      bool changed = block || p.stage() != e->job().progress().stage() ||
                     p.fraction() != e->job().progress().fraction() ||
                     p.eta_seconds() != e->job().progress().eta_seconds();
      if (changed) {
        *e->job().mutable_progress() = p;
        FillEta(e->job().mutable_progress());
        NotifyLocked(e, block ? "block" : "progress");
        if (now - e->last_persist >= options_.progress_persist_interval) {
          PersistLocked(e);  // not awaited: progress is advisory
        } else {
          dirty_progress_.insert(e);
        }
      }
    }
  }
  return response;
}

absl::Status Coordinator::CompleteJob(
    const roundhouse::v1::CompleteJobRequest& request) {
  std::shared_ptr<WriteTicket> ticket;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(JobEntry * e, FenceLocked(request.lease()));
    Job& job = e->job();
    *job.mutable_artifact() = request.artifact();
    if (request.has_progress()) *job.mutable_progress() = request.progress();
    if (request.has_quality_failure()) {
      FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED_QUALITY,
                   roundhouse::v1::FAILURE_CLASS_QUALITY_GATE,
                   request.quality_failure().message());
    } else {
      FinishLocked(e, roundhouse::v1::JOB_STATE_SUCCEEDED,
                   roundhouse::v1::FAILURE_CLASS_UNSPECIFIED, "");
    }
    ticket = PersistLocked(e);
  }
  return ticket->Wait();
}

absl::Status Coordinator::FailJob(const roundhouse::v1::FailJobRequest& request) {
  std::shared_ptr<WriteTicket> ticket;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(JobEntry * e, FenceLocked(request.lease()));
    Job& job = e->job();
    if (request.has_progress()) *job.mutable_progress() = request.progress();
    const auto& err = request.error();
    const std::string& msg = err.message();
    int max_retries = job.spec().has_max_retries()
                          ? job.spec().max_retries()
                          : options_.default_max_retries;
    if (job.cancel_requested()) {
      FinishLocked(e, roundhouse::v1::JOB_STATE_CANCELLED,
                   roundhouse::v1::FAILURE_CLASS_CANCELLED,
                   msg.empty() ? "cancelled by the user" : msg);
    } else {
      switch (err.failure_class()) {
        case roundhouse::v1::FAILURE_CLASS_INVALID_SPEC:
          FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED, err.failure_class(),
                       msg);
          break;
        case roundhouse::v1::FAILURE_CLASS_WORKER_LOST:
        case roundhouse::v1::FAILURE_CLASS_PREEMPTED: {
          RetryReason reason =
              err.failure_class() == roundhouse::v1::FAILURE_CLASS_PREEMPTED
                  ? RetryReason::kPreempted
                  : RetryReason::kWorkerLost;
          if (e->stored.uncounted_retries >= options_.max_uncounted_retries) {
            FinishLocked(
                e, roundhouse::v1::JOB_STATE_FAILED, err.failure_class(),
                absl::StrCat("gave up after ", e->stored.uncounted_retries,
                             " uncounted retries; last: ", msg));
          } else {
            ++e->stored.uncounted_retries;
            RequeueLocked(e, reason, msg);
          }
          break;
        }
        case roundhouse::v1::FAILURE_CLASS_OUT_OF_MEMORY:
          if (job.spec().allow_low_memory_retry() &&
              !e->stored.low_memory_retry_used) {
            e->stored.low_memory_retry_used = true;
            e->stored.low_memory = true;
            RequeueLocked(e, RetryReason::kOom, msg);
          } else {
            // Set before FinishLocked so watchers see the peak too.
            job.mutable_error()->set_peak_memory_bytes(
                err.peak_memory_bytes());
            FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED,
                         err.failure_class(), msg);
          }
          break;
        case roundhouse::v1::FAILURE_CLASS_CANCELLED:
          FinishLocked(e, roundhouse::v1::JOB_STATE_CANCELLED,
                       err.failure_class(), msg);
          break;
        case roundhouse::v1::FAILURE_CLASS_DEADLINE:
          FinishLocked(e, roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED,
                       err.failure_class(), msg);
          break;
        case roundhouse::v1::FAILURE_CLASS_QUALITY_GATE:
          FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED_QUALITY,
                       err.failure_class(), msg);
          break;
        default:  // INTERNAL and unclassified: counted retries
          if (job.retries_counted() < max_retries) {
            job.set_retries_counted(job.retries_counted() + 1);
            RequeueLocked(e, RetryReason::kError, msg);
          } else {
            FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED,
                         roundhouse::v1::FAILURE_CLASS_INTERNAL,
                         absl::StrCat("failed after ", job.retries_counted(),
                                      " retries: ", msg));
          }
          break;
      }
    }
    ticket = PersistLocked(e);
  }
  return ticket->Wait();
}

void Coordinator::FinishLocked(JobEntry* e, JobState state,
                               FailureClass failure_class,
                               const std::string& message) {
  absl::Time now = options_.clock->Now();
  Job& job = e->job();
  DequeueLocked(e);
  running_.erase(e);
  dirty_progress_.erase(e);
  if (job.spec().deadline_seconds() > 0) {
    deadlines_.erase({FromUnix(job.created_unix_seconds()) + DeadlineOf(job),
                      e});
  }
  job.set_state(state);
  job.set_finished_unix_seconds(ToUnix(now));
  if (failure_class != roundhouse::v1::FAILURE_CLASS_UNSPECIFIED) {
    job.mutable_error()->set_failure_class(failure_class);
    job.mutable_error()->set_message(message);
  }
  if (state == roundhouse::v1::JOB_STATE_SUCCEEDED ||
      state == roundhouse::v1::JOB_STATE_FAILED_QUALITY) {
    job.mutable_progress()->set_stage("done");
    job.mutable_progress()->set_fraction(1);
    job.mutable_progress()->set_eta_seconds(0);
  }
  double run_seconds = job.started_unix_seconds() > 0
                           ? ToUnix(now) - job.started_unix_seconds()
                           : -1;
  listener_->OnJobFinished(state, run_seconds);
  Log("%s %s%s%s", job.job_id(), JobState_Name(state),
      message.empty() ? "" : ": ", message);
  NotifyLocked(e, "state");
}

void Coordinator::RequeueLocked(JobEntry* e, RetryReason reason,
                                const std::string& why) {
  Job& job = e->job();
  running_.erase(e);
  job.set_state(roundhouse::v1::JOB_STATE_QUEUED);
  e->queued_since = options_.clock->Now();
  EnqueueLocked(e);
  listener_->OnRetry(reason);
  Log("requeued %s after attempt %d (%s): %s", job.job_id(), job.attempt(),
      RetryReasonName(reason), why);
  NotifyLocked(e, "state");
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  absl::Time now = options_.clock->Now();
  std::vector<JobEntry*> expired;
  for (JobEntry* e : running_) {
    if (e->lease_deadline <= now) expired.push_back(e);
  }
  for (JobEntry* e : expired) {
    listener_->OnLeaseExpired();
    Job& job = e->job();
    if (job.cancel_requested()) {
      FinishLocked(e, roundhouse::v1::JOB_STATE_CANCELLED,
                   roundhouse::v1::FAILURE_CLASS_CANCELLED,
                   "cancelled; the worker stopped heartbeating");
    } else if (e->stored.uncounted_retries >= options_.max_uncounted_retries) {
      FinishLocked(e, roundhouse::v1::JOB_STATE_FAILED,
                   roundhouse::v1::FAILURE_CLASS_WORKER_LOST,
                   absl::StrCat("lease expired; gave up after ",
                                e->stored.uncounted_retries,
                                " uncounted retries"));
    } else {
      ++e->stored.uncounted_retries;
      RequeueLocked(e, RetryReason::kWorkerLost,
                    absl::StrCat("lease epoch ", job.lease_epoch(),
                                 " of worker ", job.worker_id(), " expired"));
    }
    PersistLocked(e);
  }
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    JobEntry* e = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    FinishLocked(e, roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED,
                 roundhouse::v1::FAILURE_CLASS_DEADLINE,
                 absl::StrCat("deadline of ", e->job().spec().deadline_seconds(),
                              " s after acceptance passed"));
    PersistLocked(e);
  }
  std::vector<JobEntry*> flush;
  for (JobEntry* e : dirty_progress_) {
    if (now - e->last_persist >= options_.progress_persist_interval) {
      flush.push_back(e);
    }
  }
  for (JobEntry* e : flush) PersistLocked(e);
}

CoordinatorStats Coordinator::GetStats() {
  CoordinatorStats stats;
  absl::MutexLock lock(&mu_);
  absl::Time now = options_.clock->Now();
  double oldest = 0;
  for (const QueueKey& k : queue_) {
    const Job& job = k.entry->job();
    ++stats.queued_by_priority[job.spec().priority()];
    double since = ToUnix(k.entry->queued_since);
    if (oldest == 0 || since < oldest) oldest = since;
  }
  stats.oldest_queued_unix_seconds = oldest;
  stats.running = static_cast<int64_t>(running_.size());
  absl::flat_hash_set<std::string> busy;
  for (JobEntry* e : running_) busy.insert(e->job().worker_id());
  for (const auto& [id, w] : workers_) {
    if (now - w.last_heartbeat > options_.lease_timeout) {
      ++stats.workers_lost;
    } else if (w.draining) {
      ++stats.workers_draining;
    } else if (busy.count(id)) {
      ++stats.workers_busy;
    } else {
      ++stats.workers_idle;
    }
    stats.worker_last_heartbeat.emplace_back(id, ToUnix(w.last_heartbeat));
  }
  return stats;
}

}  // namespace roundhouse::server
