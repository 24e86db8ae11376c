#include "worker/agent/agent.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "worker/agent/child_process.h"

namespace roundhouse::agent {

namespace v1 = ::roundhouse::v1;

struct Agent::ActiveJob {
  v1::LeaseRef ref;
  ProgressTracker tracker;
  std::atomic<bool> cancel{false};
  std::atomic<bool> abandon{false};
};

namespace {

// Logging without absl/log (not in Abseil 20220623): one fprintf per line so
// lines of different threads do not interleave.
void LogLine(const std::string& line) {
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                          absl::UTCTimeZone());
  fprintf(stderr, "%s %s\n", ts.c_str(), line.c_str());
  fflush(stderr);
}

bool IsSafePathComponent(const std::string& s) {
  return !s.empty() && s != "." && s != ".." &&
         s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE ||
         code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::ABORTED;
}

std::string GrpcError(const grpc::Status& s) {
  return absl::StrCat("gRPC code ", static_cast<int>(s.error_code()), ": ",
                      s.error_message());
}

}  // namespace

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<int64_t>(pages) * page_size;
}

int64_t AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (!absl::ConsumePrefix(&v, "MemAvailable:")) continue;
    v = absl::StripAsciiWhitespace(v);
    absl::ConsumeSuffix(&v, "kB");
    int64_t kib = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &kib))
      return kib * 1024;
  }
  return 0;
}

std::vector<GpuMemory> QueryGpuMemory() {
  std::vector<GpuMemory> out;
  FILE* p = popen(
      "nvidia-smi --query-gpu=memory.used,memory.total "
      "--format=csv,noheader,nounits 2>/dev/null",
      "r");
  if (p == nullptr) return out;
  std::string text;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
  if (pclose(p) != 0) return {};
  // nvidia-smi reports MiB.
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> cols = absl::StrSplit(line, ',');
    int64_t used = 0, total = 0;
    if (cols.size() != 2 ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(cols[0]), &used) ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(cols[1]), &total)) {
      return {};
    }
    out.push_back({used << 20, total << 20});
  }
  return out;
}

Agent::Agent(AgentOptions options,
             std::unique_ptr<v1::WorkerService::StubInterface> stub,
             AgentMetrics* metrics)
    : options_(std::move(options)),
      stub_(std::move(stub)),
      metrics_(metrics),
      heartbeat_interval_(options_.default_heartbeat_interval) {}

Agent::~Agent() = default;

void Agent::Log(const std::string& job_id, const std::string& message) const {
  if (job_id.empty()) {
    LogLine(absl::StrCat("roundhouse-worker agent ", options_.worker_id, ": ",
                         message));
  } else {
    LogLine(absl::StrCat("roundhouse-worker agent ", options_.worker_id,
                         ": job ", job_id, ": ", message));
  }
}

absl::Status Agent::ValidateOptions() const {
  if (stub_ == nullptr)
    return absl::InvalidArgumentError("no coordinator stub");
  if (options_.worker_id.empty()) {
    return absl::InvalidArgumentError("--worker-id must not be empty");
  }
  if (options_.work_dir.empty()) {
    return absl::InvalidArgumentError("--work-dir is required");
  }
  if (options_.artifact_root.empty()) {
    return absl::InvalidArgumentError("--artifact-root is required");
  }
  if (options_.device != "cpu" && options_.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device must be cpu or cuda, got '", options_.device, "'"));
  }
  if (options_.memory_bytes <= 0) {
    return absl::InvalidArgumentError("--memory-bytes must be > 0");
  }
  if (options_.engine_binary.empty() ||
      access(options_.engine_binary.c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--engine-binary '", options_.engine_binary,
                     "' is not an executable file"));
  }
  if (options_.cancel_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--cancel-grace-seconds must be >= 0");
  }
  if (options_.max_concurrent_jobs < 0) {
    return absl::InvalidArgumentError("--max-concurrent-jobs must be >= 0");
  }
  std::vector<int> ids = options_.gpu_ids;
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end() ||
      (!ids.empty() && ids.front() < 0)) {
    return absl::InvalidArgumentError(
        "--gpus must list distinct non-negative GPU indices");
  }
  if (!ids.empty() && options_.device != "cuda") {
    return absl::InvalidArgumentError("--gpus needs --device cuda");
  }
  return absl::OkStatus();
}

std::vector<int> Agent::GpuIds() const {
  if (options_.device != "cuda") return {};
  std::vector<int> ids = options_.gpu_ids;
  if (ids.empty()) {
    for (int i = 0; i < std::max(1, options_.gpu_count); ++i) ids.push_back(i);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

int Agent::JobSlots() const {
  if (options_.max_concurrent_jobs > 0) return options_.max_concurrent_jobs;
  return options_.device == "cuda" ? static_cast<int>(GpuIds().size()) : 1;
}

v1::LeaseJobRequest Agent::MakeLeaseRequest() {
  v1::LeaseJobRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_wait_seconds(absl::ToDoubleSeconds(options_.lease_wait));
  int64_t free_bytes = options_.memory_bytes;
  if (options_.device == "cpu") {
    // Jobs already running have taken their share of MemAvailable.
    const int64_t avail = AvailableMemoryBytes();
    if (avail > 0) free_bytes = std::min(free_bytes, avail);
  } else {
    std::vector<int> free_ids;
    {
      absl::MutexLock lock(&mu_);
      free_ids = free_gpus_;
    }
    // A job may be given any of the free GPUs: offer the least free one.
    const std::vector<GpuMemory> gpus = QueryGpuMemory();
    int64_t least = -1;
    for (int id : free_ids) {
      if (id < 0 || id >= static_cast<int>(gpus.size())) continue;
      const int64_t f = gpus[id].total_bytes - gpus[id].used_bytes;
      least = least < 0 ? f : std::min(least, f);
    }
    if (least >= 0) free_bytes = least;
    req.set_free_gpu_count(static_cast<int32_t>(free_ids.size()));
  }
  req.set_free_memory_bytes(free_bytes);
  return req;
}

void Agent::UpdateJobMetricsLocked() {
  if (metrics_ == nullptr) return;
  double sum = 0;
  for (ActiveJob* j : active_) sum += j->tracker.Snapshot().fraction();
  metrics_->SetJobsRunning(static_cast<int>(active_.size()));
  metrics_->SetJobProgress(active_.empty() ? 0 : sum / active_.size());
}

bool Agent::SleepUnlessDraining(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  const absl::Time until = absl::Now() + d;
  while (!draining_.load() && absl::Now() < until) {
    cv_.WaitWithDeadline(&mu_, until);
  }
  return !draining_.load();
}

void Agent::RequestDrain() {
  if (draining_.exchange(true)) return;
  Log("", "draining: no new jobs; the running job is handed back");
  absl::MutexLock lock(&mu_);
  heartbeat_requested_ = true;
  cv_.SignalAll();
}

absl::Status Agent::RegisterOnce() {
  absl::MutexLock reg(&register_mu_);
  {
    // Both the lease loop and the heartbeat thread may get here after the
    // same outage; only one of them registers.
    absl::MutexLock lock(&mu_);
    if (registered_) return absl::OkStatus();
  }
  v1::RegisterWorkerRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_device(options_.device);
  req.set_memory_bytes(options_.memory_bytes);
  req.set_gpu_count(options_.device == "cuda"
                        ? static_cast<int32_t>(GpuIds().size())
                        : options_.gpu_count);
  req.set_version(ROUNDHOUSE_VERSION);
  v1::RegisterWorkerResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  grpc::Status g = stub_->RegisterWorker(&ctx, req, &resp);
  if (!g.ok()) {
    if (metrics_ != nullptr) metrics_->RpcFailed("register");
    return absl::UnavailableError(GrpcError(g));
  }
  {
    absl::MutexLock lock(&mu_);
    registered_ = true;
    heartbeat_interval_ = resp.heartbeat_interval_seconds() > 0
                              ? absl::Seconds(resp.heartbeat_interval_seconds())
                              : options_.default_heartbeat_interval;
    // Whatever the coordinator suggests, leave room for two lost
    // heartbeats before the lease expires.
    if (resp.lease_timeout_seconds() > 0) {
      heartbeat_interval_ = std::min(
          heartbeat_interval_, absl::Seconds(resp.lease_timeout_seconds()) / 3);
    }
    cv_.SignalAll();
  }
  if (!ever_registered_) {
    ever_registered_ = true;
    // Tests and operators wait for this exact line.
    fprintf(stderr, "roundhouse-worker agent %s registered with %s\n",
            options_.worker_id.c_str(), options_.coordinator.c_str());
    fflush(stderr);
  } else {
    Log("", "re-registered with the coordinator");
  }
  return absl::OkStatus();
}

bool Agent::EnsureRegistered() {
  absl::Duration backoff = options_.backoff_initial;
  bool logged_failure = false;
  while (true) {
    if (draining_.load()) return false;
    absl::Status s = RegisterOnce();
    if (s.ok()) return true;
    if (!logged_failure) {
      Log("", absl::StrCat("cannot register with the coordinator (",
                           s.message(), "); retrying"));
      logged_failure = true;
    }
    if (!SleepUnlessDraining(backoff)) return false;
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
}

absl::Status Agent::Run() {
  RETURN_IF_ERROR(ValidateOptions());
  RETURN_IF_ERROR(MakeDirs(JoinPath(options_.work_dir, "jobs")));
  RETURN_IF_ERROR(MakeDirs(options_.artifact_root));
  if (!EnsureRegistered()) return absl::OkStatus();

  const int slots = JobSlots();
  const bool cuda = options_.device == "cuda";
  {
    absl::MutexLock lock(&mu_);
    free_gpus_ = GpuIds();
  }
  if (slots > 1) {
    Log("", absl::StrCat("running up to ", slots, " jobs at once",
                         cuda ? absl::StrCat(" on ", GpuIds().size(), " GPUs")
                              : ""));
  }

  std::thread heartbeats([this] { HeartbeatLoop(); });
  struct JobThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<JobThread> jobs;
  auto reap = [&jobs](bool all) {
    for (auto it = jobs.begin(); it != jobs.end();) {
      if (all || it->done->load()) {
        it->thread.join();
        it = jobs.erase(it);
      } else {
        ++it;
      }
    }
  };
  absl::Duration backoff = options_.backoff_initial;
  bool lease_failing = false;
  while (!draining_.load()) {
    reap(/*all=*/false);
    {
      // Lease only with a free slot (and on cuda a free GPU).
      absl::MutexLock lock(&mu_);
      while (!draining_.load() &&
             (running_jobs_ >= slots || (cuda && free_gpus_.empty()))) {
        cv_.Wait(&mu_);
      }
    }
    if (draining_.load()) break;
    v1::LeaseJobRequest req = MakeLeaseRequest();
    v1::LeaseJobResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.lease_wait +
                                        options_.rpc_timeout));
    grpc::Status g = stub_->LeaseJob(&ctx, req, &resp);
    if (!g.ok()) {
      if (metrics_ != nullptr) metrics_->RpcFailed("lease");
      if (!lease_failing) {
        Log("", absl::StrCat("LeaseJob failed (", GrpcError(g), "); retrying"));
        lease_failing = true;
      }
      // A restarted coordinator may have forgotten this worker; it answers
      // LeaseJob from an unknown worker with FAILED_PRECONDITION.
      if (g.error_code() == grpc::StatusCode::UNAVAILABLE ||
          g.error_code() == grpc::StatusCode::NOT_FOUND ||
          g.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        absl::MutexLock lock(&mu_);
        registered_ = false;
      }
      if (!SleepUnlessDraining(backoff)) break;
      backoff = std::min(backoff * 2, options_.backoff_max);
      if (!EnsureRegistered()) break;
      continue;
    }
    if (lease_failing) Log("", "LeaseJob works again");
    lease_failing = false;
    backoff = options_.backoff_initial;
    if (!resp.has_lease()) continue;
    std::vector<int> gpus;
    if (cuda) {
      const size_t need = static_cast<size_t>(
          std::max(1, resp.lease().spec().resources().gpu_count()));
      bool enough;
      {
        absl::MutexLock lock(&mu_);
        enough = need <= free_gpus_.size();
        if (enough) {
          gpus.assign(free_gpus_.begin(), free_gpus_.begin() + need);
          free_gpus_.erase(free_gpus_.begin(), free_gpus_.begin() + need);
        }
      }
      if (!enough) {
        // The coordinator matched on the free count this agent reported,
        // so this is a coordinator that predates free_gpu_count: hand the
        // job back without charging its retry budget.
        v1::LeaseRef ref;
        ref.set_job_id(resp.lease().job_id());
        ref.set_attempt(resp.lease().attempt());
        ref.set_lease_epoch(resp.lease().lease_epoch());
        ref.set_worker_id(options_.worker_id);
        ReportFailure(ref, v1::FAILURE_CLASS_PREEMPTED,
                      absl::StrCat("the job needs ", need,
                                   " GPUs; fewer are free on this worker"),
                      0, v1::Progress());
        continue;
      }
    }
    {
      absl::MutexLock lock(&mu_);
      ++running_jobs_;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    jobs.push_back(
        {std::thread([this, lease = resp.lease(), gpus, done] {
           RunJob(lease, gpus);
           absl::MutexLock lock(&mu_);
           free_gpus_.insert(free_gpus_.end(), gpus.begin(), gpus.end());
           std::sort(free_gpus_.begin(), free_gpus_.end());
           --running_jobs_;
           done->store(true);
           cv_.SignalAll();
         }),
         done});
    if (options_.once) break;
  }
  // A drain reaches every running engine through its job thread.
  reap(/*all=*/true);
  {
    absl::MutexLock lock(&mu_);
    stop_heartbeats_ = true;
    cv_.SignalAll();
  }
  heartbeats.join();
  Log("", draining_.load() ? "drained; exiting" : "exiting");
  return absl::OkStatus();
}

void Agent::HeartbeatLoop() {
  absl::Time last = absl::InfinitePast();
  mu_.Lock();
  while (!stop_heartbeats_) {
    absl::Time due = last + heartbeat_interval_;
    if (heartbeat_requested_) {
      due = std::min(due, last + options_.min_heartbeat_gap);
    }
    if (absl::Now() < due) {
      cv_.WaitWithDeadline(&mu_, due);
      continue;
    }
    heartbeat_requested_ = false;
    last = absl::Now();
    mu_.Unlock();
    SendHeartbeat();
    mu_.Lock();
  }
  mu_.Unlock();
}

void Agent::SendHeartbeat() {
  bool registered;
  {
    absl::MutexLock lock(&mu_);
    registered = registered_;
  }
  if (!registered && !draining_.load()) {
    // One attempt only: the lease loop owns the retrying, and this thread
    // must stay responsive to stop requests.
    RegisterOnce().IgnoreError();
  }

  v1::HeartbeatRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_draining(draining_.load());
  // Every running lease, in one request; actions come back in this order.
  std::vector<std::pair<ActiveJob*, v1::LeaseRef>> sent;
  {
    absl::MutexLock lock(&mu_);
    for (ActiveJob* job : active_) {
      sent.emplace_back(job, job->ref);
      *req.add_leases() = job->ref;
      *req.add_progress() = job->tracker.Snapshot();
    }
  }
  if (options_.device == "cuda") {
    std::vector<GpuMemory> gpus = QueryGpuMemory();
    int64_t used = 0;
    for (size_t i = 0; i < gpus.size(); ++i) {
      used += gpus[i].used_bytes;
      if (metrics_ != nullptr) {
        metrics_->SetGpuMemory(static_cast<int>(i), gpus[i].used_bytes,
                               gpus[i].total_bytes);
      }
    }
    req.set_gpu_memory_used_bytes(used);
  }
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  grpc::Status g = stub_->Heartbeat(&ctx, req, &resp);
  if (!g.ok()) {
    if (metrics_ != nullptr) metrics_->RpcFailed("heartbeat");
    Log("", absl::StrCat("heartbeat for ", sent.size(), " job(s) failed (",
                         GrpcError(g), ")"));
    if (g.error_code() == grpc::StatusCode::UNAVAILABLE ||
        g.error_code() == grpc::StatusCode::NOT_FOUND) {
      absl::MutexLock lock(&mu_);
      registered_ = false;
    }
    return;
  }
  const size_t n = std::min(sent.size(),
                             static_cast<size_t>(resp.actions_size()));
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < n; ++i) {
    ActiveJob* job = sent[i].first;
    const v1::LeaseRef& ref = sent[i].second;
    const v1::LeaseAction action = resp.actions(static_cast<int>(i));
    // The job may have ended (and another started at the same address)
    // while the call was out.
    if (std::find(active_.begin(), active_.end(), job) == active_.end() ||
        job->ref.job_id() != ref.job_id() ||
        job->ref.lease_epoch() != ref.lease_epoch()) {
      continue;
    }
    if (action == v1::LEASE_ACTION_CANCEL && !job->cancel.exchange(true)) {
      Log(ref.job_id(), "cancel requested by the coordinator");
    } else if (action == v1::LEASE_ACTION_ABANDON &&
               !job->abandon.exchange(true)) {
      Log(ref.job_id(),
          "lease abandoned by the coordinator; killing the engine");
    }
  }
}

void Agent::ReaderLoop(int fd, ActiveJob* job) {
  // Lines can be large (the done event carries the manifest) but not
  // unbounded: a runaway engine must not exhaust the agent's memory.
  constexpr size_t kMaxLineBytes = size_t{64} << 20;
  std::string pending;
  char buf[65536];
  bool overflow = false;
  auto handle_line = [&](absl::string_view line) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) return;
    absl::StatusOr<EngineEvent> ev = ParseEngineEvent(line);
    if (!ev.ok()) {
      Log(job->ref.job_id(),
          absl::StrCat("ignoring engine stdout line (", ev.status().message(),
                       "): ", line.substr(0, 200)));
      return;
    }
    job->tracker.Apply(*ev);
    if (ev->kind == EngineEvent::Kind::kBlock) {
      Log(job->ref.job_id(),
          absl::StrFormat("block %d/%d loss %.6g -> %.6g in %.1fs",
                          ev->block_index + 1, ev->blocks_total,
                          ev->loss_before, ev->loss_after, ev->seconds));
      if (metrics_ != nullptr) metrics_->BlockCompleted(ev->seconds);
    } else if (ev->kind == EngineEvent::Kind::kStage) {
      Log(job->ref.job_id(), absl::StrCat("stage ", ev->stage));
    } else if (ev->kind == EngineEvent::Kind::kOther) {
      // e.g. {"event":"checkpoint","action":"resume",...}: worth a log line.
      Log(job->ref.job_id(), absl::StrCat("engine: ", line.substr(0, 300)));
    } else if (ev->kind == EngineEvent::Kind::kError) {
      Log(job->ref.job_id(), absl::StrCat("engine error (", ev->error_class,
                                          "): ", ev->error_message));
    }
    absl::MutexLock lock(&mu_);
    UpdateJobMetricsLocked();
    if (ev->kind == EngineEvent::Kind::kBlock ||
        ev->kind == EngineEvent::Kind::kStage) {
      heartbeat_requested_ = true;
      cv_.SignalAll();
    }
  };
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size_t start = 0;
    for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
      if (buf[i] != '\n') continue;
      if (!overflow) {
        pending.append(buf + start, i - start);
        handle_line(pending);
      }
      pending.clear();
      overflow = false;
      start = i + 1;
    }
    if (!overflow) pending.append(buf + start, n - start);
    if (pending.size() > kMaxLineBytes) {
      Log(job->ref.job_id(), "engine stdout line over 64 MiB; dropped");
      pending.clear();
      overflow = true;
    }
  }
  if (!overflow) handle_line(pending);
}

template <typename Call>
void Agent::RetryReport(const std::string& job_id, const char* method,
                        Call call) {
  const absl::Time give_up = absl::Now() + options_.report_retry_timeout;
  absl::Duration backoff = options_.backoff_initial;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    grpc::Status g = call(&ctx);
    if (g.ok()) return;
    if (metrics_ != nullptr) {
      metrics_->RpcFailed(std::string(method) == "CompleteJob" ? "complete"
                                                               : "fail");
    }
    if (g.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      Log(job_id, absl::StrCat(method, " refused, the lease is stale (",
                               g.error_message(), "); moving on"));
      return;
    }
    if (!Retryable(g.error_code()) || absl::Now() + backoff > give_up) {
      Log(job_id, absl::StrCat(method, " failed (", GrpcError(g),
                               "); giving up, the lease will expire"));
      return;
    }
    Log(job_id, absl::StrCat(method, " failed (", GrpcError(g), "); retrying"));
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
}

void Agent::ReportFailure(const v1::LeaseRef& ref,
                          v1::FailureClass failure_class,
                          const std::string& message, int64_t peak_memory_bytes,
                          const v1::Progress& progress) {
  v1::FailJobRequest req;
  *req.mutable_lease() = ref;
  req.mutable_error()->set_failure_class(failure_class);
  req.mutable_error()->set_message(message);
  req.mutable_error()->set_peak_memory_bytes(peak_memory_bytes);
  *req.mutable_progress() = progress;
  Log(ref.job_id(),
      absl::StrCat("FailJob ", v1::FailureClass_Name(failure_class), ": ",
                   message));
  RetryReport(ref.job_id(), "FailJob", [&](grpc::ClientContext* ctx) {
    v1::Ack ack;
    return stub_->FailJob(ctx, req, &ack);
  });
}

void Agent::ReportComplete(const v1::LeaseRef& ref,
                           const v1::ArtifactManifest& manifest,
                           const v1::JobError* quality_failure,
                           const v1::Progress& progress) {
  v1::CompleteJobRequest req;
  *req.mutable_lease() = ref;
  *req.mutable_artifact() = manifest;
  *req.mutable_progress() = progress;
  if (quality_failure != nullptr) {
    *req.mutable_quality_failure() = *quality_failure;
  }
  Log(ref.job_id(),
      absl::StrCat("CompleteJob: ", manifest.directory(), " (",
                   manifest.files_size(), " files)",
                   quality_failure != nullptr ? ", quality gate failed" : ""));
  RetryReport(ref.job_id(), "CompleteJob", [&](grpc::ClientContext* ctx) {
    v1::Ack ack;
    return stub_->CompleteJob(ctx, req, &ack);
  });
}

void Agent::RunJob(const v1::Lease& lease, const std::vector<int>& gpus) {
  ActiveJob job;
  job.ref.set_job_id(lease.job_id());
  job.ref.set_attempt(lease.attempt());
  job.ref.set_lease_epoch(lease.lease_epoch());
  job.ref.set_worker_id(options_.worker_id);
  const std::string& id = lease.job_id();
  {
    absl::MutexLock lock(&mu_);
    active_.push_back(&job);
    UpdateJobMetricsLocked();
    heartbeat_requested_ = true;
    cv_.SignalAll();
  }
  Log(id, absl::StrCat("leased attempt ", lease.attempt(), " epoch ",
                       lease.lease_epoch(), " model ", lease.model_path(),
                       gpus.empty() ? ""
                                    : absl::StrCat(" on GPU(s) ",
                                                   absl::StrJoin(gpus, ","))));
  std::string outcome;
  auto finish = [&](const std::string& o) {
    outcome = o;
    absl::MutexLock lock(&mu_);
    active_.erase(std::find(active_.begin(), active_.end(), &job));
    if (metrics_ != nullptr) metrics_->JobFinished(outcome);
    UpdateJobMetricsLocked();
  };

  if (!IsSafePathComponent(id)) {
    ReportFailure(job.ref, v1::FAILURE_CLASS_INTERNAL,
                  absl::StrCat("job id '", id, "' is not a safe file name"), 0,
                  job.tracker.Snapshot());
    finish("internal");
    return;
  }
  const std::string job_dir = JoinPath(JoinPath(options_.work_dir, "jobs"), id);
  const std::string spec_path = JoinPath(job_dir, "spec.json");
  const std::string checkpoint_dir = JoinPath(job_dir, "checkpoint");
  const std::string out_dir = JoinPath(options_.artifact_root, id);
  absl::Status prepared = [&]() -> absl::Status {
    RETURN_IF_ERROR(MakeDirs(checkpoint_dir));
    std::string spec_json;
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    auto s = google::protobuf::util::MessageToJsonString(lease.spec(),
                                                         &spec_json, print);
    if (!s.ok()) {
      return absl::InternalError(
          absl::StrCat("cannot write the spec as JSON: ", s.ToString()));
    }
    return WriteFileAtomically(spec_path, spec_json);
  }();
  if (!prepared.ok()) {
    ReportFailure(job.ref, v1::FAILURE_CLASS_INTERNAL,
                  std::string(prepared.message()), 0, job.tracker.Snapshot());
    finish("internal");
    return;
  }
  if (draining_.load()) {
    ReportFailure(job.ref, v1::FAILURE_CLASS_PREEMPTED,
                  "worker drained before the engine started", 0,
                  job.tracker.Snapshot());
    finish("preempted");
    return;
  }

  std::vector<std::string> argv = {options_.engine_binary,
                                   "quantize",
                                   "--model",
                                   lease.model_path(),
                                   "--spec",
                                   spec_path,
                                   "--out",
                                   out_dir,
                                   "--checkpoint-dir",
                                   checkpoint_dir,
                                   "--device",
                                   options_.device};
  if (lease.low_memory()) argv.push_back("--low-memory");
  if (options_.threads > 0) {
    argv.push_back("--threads");
    argv.push_back(absl::StrCat(options_.threads));
  }
  std::vector<std::pair<std::string, std::string>> env;
  if (!gpus.empty()) {
    // The engine numbers its devices 0..n-1 over exactly these GPUs.
    env.emplace_back("CUDA_VISIBLE_DEVICES", absl::StrJoin(gpus, ","));
    if (gpus.size() > 1) {
      argv.push_back("--gpus");
      argv.push_back(absl::StrCat(gpus.size()));
    }
  }
  absl::StatusOr<std::unique_ptr<ChildProcess>> spawned =
      ChildProcess::Spawn(argv, env);
  if (!spawned.ok()) {
    ReportFailure(
        job.ref, v1::FAILURE_CLASS_INTERNAL,
        absl::StrCat("cannot start the engine: ", spawned.status().message()),
        0, job.tracker.Snapshot());
    finish("internal");
    return;
  }
  std::unique_ptr<ChildProcess> child = std::move(*spawned);
  Log(id, absl::StrCat("engine started, pid ", child->pid()));
  std::thread reader(
      [this, fd = child->stdout_fd(), &job] { ReaderLoop(fd, &job); });

  bool term_sent = false, kill_sent = false, cancel_seen = false;
  bool drain_forwarded = false;
  absl::Time kill_at = absl::InfiniteFuture();
  ChildExit exit;
  while (true) {
    if (std::optional<ChildExit> e = child->TryWait()) {
      exit = *e;
      break;
    }
    const absl::Time now = absl::Now();
    if (job.abandon.load() && !kill_sent) {
      child->SignalGroup(SIGKILL);
      kill_sent = true;
    }
    if (job.cancel.load() && !cancel_seen) {
      cancel_seen = true;
      if (!term_sent) child->SignalGroup(SIGTERM);
      term_sent = true;
      kill_at = now + options_.cancel_grace;
    }
    if (draining_.load() && !drain_forwarded) {
      // No SIGKILL deadline: the engine stops at the next block boundary
      // after its checkpoint, and whoever drains us owns the overall grace.
      drain_forwarded = true;
      if (!term_sent) child->SignalGroup(SIGTERM);
      term_sent = true;
      Log(id, "SIGTERM forwarded to the engine (drain)");
    }
    if (!kill_sent && now >= kill_at) {
      Log(id, "engine still running after the cancel grace; SIGKILL");
      child->SignalGroup(SIGKILL);
      kill_sent = true;
    }
    absl::SleepFor(options_.child_poll_interval);
  }
  // Stragglers in the engine's process group would hold the stdout pipe
  // open and keep the reader from seeing EOF.
  child->SignalGroup(SIGKILL);
  reader.join();
  child.reset();
  Log(id, absl::StrCat("engine ended with ", exit.Describe()));

  const v1::Progress progress = job.tracker.Snapshot();
  const bool has_error = job.tracker.has_error();
  const EngineEvent error = job.tracker.error_event();
  auto error_message = [&](const std::string& fallback) {
    return has_error && !error.error_message.empty() ? error.error_message
                                                     : fallback;
  };
  auto remove_job_dir = [&] {
    if (!options_.remove_finished_job_dirs) return;
    absl::Status s = RemoveTree(job_dir);
    if (!s.ok())
      Log(id, absl::StrCat("cannot remove ", job_dir, ": ", s.message()));
  };

  if (job.abandon.load()) {
    Log(id, "abandoned; nothing reported");
    finish("abandoned");
    return;
  }
  if (job.cancel.load()) {
    ReportFailure(
        job.ref, v1::FAILURE_CLASS_CANCELLED,
        absl::StrCat("cancelled; engine ended with ", exit.Describe()), 0,
        progress);
    remove_job_dir();
    finish("cancelled");
    return;
  }
  if (exit.signaled && exit.signal_number == SIGTERM && drain_forwarded) {
    // The engine installs its SIGTERM handler only after parsing the spec;
    // a drain that arrives earlier kills it outright. Nothing was lost, so
    // this is a preemption, not a crash charged to the retry budget.
    ReportFailure(job.ref, v1::FAILURE_CLASS_PREEMPTED,
                  "engine stopped by the drain's SIGTERM before its first "
                  "checkpoint",
                  0, progress);
    finish("preempted");
    return;
  }
  if (exit.signaled) {
    ReportFailure(job.ref, v1::FAILURE_CLASS_INTERNAL,
                  absl::StrCat("engine exited with ", exit.Describe()), 0,
                  progress);
    finish("internal");
    return;
  }
  switch (exit.exit_code) {
    case 0:
    case 5: {
      const EngineEvent done = job.tracker.done_event();
      const std::string dir =
          job.tracker.has_done() && !done.artifact_dir.empty()
              ? done.artifact_dir
              : out_dir;
      absl::StatusOr<v1::ArtifactManifest> manifest =
          BuildArtifactManifest(dir, done.manifest);
      if (!manifest.ok()) {
        ReportFailure(job.ref, v1::FAILURE_CLASS_INTERNAL,
                      absl::StrCat("engine exited with code ", exit.exit_code,
                                   " but the artifact is unusable: ",
                                   manifest.status().message()),
                      0, progress);
        finish("internal");
        return;
      }
      if (exit.exit_code == 0) {
        ReportComplete(job.ref, *manifest, nullptr, progress);
        finish("succeeded");
      } else {
        v1::JobError quality;
        quality.set_failure_class(v1::FAILURE_CLASS_QUALITY_GATE);
        quality.set_message(
            error_message("the evaluation quality gate failed"));
        ReportComplete(job.ref, *manifest, &quality, progress);
        finish("failed_quality");
      }
      remove_job_dir();
      return;
    }
    case 2:
      ReportFailure(job.ref, v1::FAILURE_CLASS_INVALID_SPEC,
                    error_message("engine rejected the spec, model or data "
                                  "(exit code 2)"),
                    0, progress);
      finish("invalid_spec");
      return;
    case 3:
      if (options_.device == "cuda" && metrics_ != nullptr) metrics_->CudaOom();
      ReportFailure(job.ref, v1::FAILURE_CLASS_OUT_OF_MEMORY,
                    error_message("engine ran out of memory (exit code 3)"),
                    has_error ? error.peak_memory_bytes : 0, progress);
      finish("out_of_memory");
      return;
    case 4:
      ReportFailure(job.ref, v1::FAILURE_CLASS_PREEMPTED,
                    error_message("engine interrupted at a block boundary "
                                  "(exit code 4)"),
                    0, progress);
      finish("preempted");
      return;
    default:
      ReportFailure(job.ref, v1::FAILURE_CLASS_INTERNAL,
                    absl::StrCat("engine exited with code ", exit.exit_code,
                                 has_error ? ": " + error.error_message : ""),
                    0, progress);
      finish("internal");
      return;
  }
}

}  // namespace roundhouse::agent
