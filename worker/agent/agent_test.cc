// Runs the real agent loop against an in-process fake coordinator (gRPC on
// 127.0.0.1) and fake engines: shell scripts that print engine events and
// exit with each code of the engine contract.

#include "worker/agent/agent.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "common/sha256.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "roundhouse/v1/roundhouse.grpc.pb.h"
#include "worker/agent/agent_flags.h"
#include "worker/agent/agent_metrics.h"
#include "worker/agent/child_process.h"

namespace roundhouse::agent {
namespace {

namespace v1 = ::roundhouse::v1;

class FakeCoordinator final : public v1::WorkerService::Service {
 public:
  grpc::Status RegisterWorker(grpc::ServerContext*,
                              const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override {
    absl::MutexLock lock(&mu_);
    registrations_.push_back(*req);
    forgotten_ = false;
    resp->set_heartbeat_interval_seconds(heartbeat_interval_seconds_);
    resp->set_lease_timeout_seconds(lease_timeout_seconds_);
    return grpc::Status::OK;
  }
  grpc::Status LeaseJob(grpc::ServerContext*, const v1::LeaseJobRequest* req,
                        v1::LeaseJobResponse* resp) override {
    absl::MutexLock lock(&mu_);
    ++lease_calls_;
    lease_requests_.push_back(*req);
    // Like the real coordinator: a job needing more GPUs than the worker
    // reports free is not handed out.
    auto fits = [&] {
      if (queue_.empty()) return false;
      const int need =
          std::max(1, queue_.front().spec().resources().gpu_count());
      return !req->has_free_gpu_count() || need <= req->free_gpu_count();
    };
    const absl::Time until =
        absl::Now() + absl::Seconds(std::min(req->wait_seconds(), 0.2));
    while (!fits() && absl::Now() < until) {
      cv_.WaitWithDeadline(&mu_, until);
    }
    if (forgotten_) {
      // What the real coordinator answers a worker it does not know.
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "worker is not registered: call RegisterWorker");
    }
    if (fits()) {
      *resp->mutable_lease() = queue_.front();
      queue_.pop_front();
    }
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(*req);
    for (const v1::LeaseRef& ref : req->leases()) {
      auto it = actions_.find(ref.job_id());
      resp->add_actions(it == actions_.end() ? v1::LEASE_ACTION_CONTINUE
                                             : it->second);
    }
    return grpc::Status::OK;
  }
  grpc::Status CompleteJob(grpc::ServerContext*,
                           const v1::CompleteJobRequest* req,
                           v1::Ack*) override {
    absl::MutexLock lock(&mu_);
    if (report_failures_left_ > 0) {
      --report_failures_left_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try later");
    }
    completes_.push_back(*req);
    return report_status_;
  }
  grpc::Status FailJob(grpc::ServerContext*, const v1::FailJobRequest* req,
                       v1::Ack*) override {
    absl::MutexLock lock(&mu_);
    if (report_failures_left_ > 0) {
      --report_failures_left_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try later");
    }
    fails_.push_back(*req);
    return report_status_;
  }

  void Enqueue(v1::Lease lease) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(lease));
    cv_.SignalAll();
  }
  void SetAction(const std::string& job_id, v1::LeaseAction a) {
    absl::MutexLock lock(&mu_);
    actions_[job_id] = a;
  }
  void SetTimings(double heartbeat_interval_seconds,
                  double lease_timeout_seconds) {
    absl::MutexLock lock(&mu_);
    heartbeat_interval_seconds_ = heartbeat_interval_seconds;
    lease_timeout_seconds_ = lease_timeout_seconds;
  }
  // Drops all registrations, like a coordinator restarted without them.
  void ForgetWorkers() {
    absl::MutexLock lock(&mu_);
    forgotten_ = true;
  }
  void FailReportsFirst(int n) {
    absl::MutexLock lock(&mu_);
    report_failures_left_ = n;
  }
  void SetReportStatus(grpc::Status s) {
    absl::MutexLock lock(&mu_);
    report_status_ = s;
  }
  std::vector<v1::CompleteJobRequest> completes() {
    absl::MutexLock lock(&mu_);
    return completes_;
  }
  std::vector<v1::FailJobRequest> fails() {
    absl::MutexLock lock(&mu_);
    return fails_;
  }
  std::vector<v1::HeartbeatRequest> heartbeats() {
    absl::MutexLock lock(&mu_);
    return heartbeats_;
  }
  std::vector<v1::LeaseJobRequest> lease_requests() {
    absl::MutexLock lock(&mu_);
    return lease_requests_;
  }
  int registrations() {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(registrations_.size());
  }
  v1::RegisterWorkerRequest last_registration() {
    absl::MutexLock lock(&mu_);
    return registrations_.back();
  }

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<v1::Lease> queue_;
  std::map<std::string, v1::LeaseAction> actions_;
  std::vector<v1::RegisterWorkerRequest> registrations_;
  std::vector<v1::HeartbeatRequest> heartbeats_;
  std::vector<v1::LeaseJobRequest> lease_requests_;
  std::vector<v1::CompleteJobRequest> completes_;
  std::vector<v1::FailJobRequest> fails_;
  int lease_calls_ = 0;
  double heartbeat_interval_seconds_ = 0.2;
  double lease_timeout_seconds_ = 5;
  bool forgotten_ = false;
  int report_failures_left_ = 0;
  grpc::Status report_status_ = grpc::Status::OK;
};

// A fake coordinator served on 127.0.0.1 (an ephemeral port unless given).
struct FakeServer {
  explicit FakeServer(int port = 0) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port),
                             grpc::InsecureServerCredentials(), &this->port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~FakeServer() { server->Shutdown(absl::ToChronoTime(absl::Now())); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
  FakeCoordinator service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// Engine preamble: records its argv and spec, parses the flags the agent
// passes, and puts its own pid where tests can find it.
constexpr char kPreamble[] = R"(#!/bin/sh
echo "$@" > "$TESTDIR/argv"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift ;;
    --spec) SPEC="$2"; shift ;;
    --checkpoint-dir) CKPT="$2"; shift ;;
  esac
  shift
done
cp "$SPEC" "$TESTDIR/spec_copy.json"
echo $$ > "$TESTDIR/engine.pid"
)";

constexpr char kTwoBlocks[] = R"(
echo '{"event":"stage","stage":"loading"}'
echo 'a stray log line on stdout'
echo '{"event":"plan","blocks_total":2,"resumed_blocks":0}'
echo '{"event":"stage","stage":"tuning"}'
echo '{"event":"block","block_index":0,"blocks_total":2,"loss_before":0.5,"loss_after":0.25,"seconds":0.1}'
echo '{"event":"block","block_index":1,"blocks_total":2,"loss_before":0.4,"loss_after":0.2,"seconds":0.3}'
)";

constexpr char kWriteArtifact[] = R"(
mkdir -p "$OUT"
printf 'hello' > "$OUT/model.safetensors"
printf '{"files":[{"path":"model.safetensors","size_bytes":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}]}' > "$OUT/manifest.json"
echo "{\"event\":\"done\",\"artifact_dir\":\"$OUT\",\"manifest\":{}}"
)";

bool ProcessAlive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string text;
  if (!std::getline(stat, text)) return false;
  const size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() &&
         text[paren + 2] != 'Z';
}

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_agent_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    setenv("TESTDIR", dir_.c_str(), 1);
    server_ = std::make_unique<FakeServer>();
  }
  void TearDown() override {
    server_.reset();
    RemoveTree(dir_).IgnoreError();
  }

  std::string WriteEngine(const std::string& body) {
    const std::string path = JoinPath(dir_, "engine.sh");
    EXPECT_TRUE(WriteFileAtomically(path, kPreamble + body).ok());
    chmod(path.c_str(), 0755);
    return path;
  }

  AgentOptions Options(const std::string& engine) {
    AgentOptions o;
    o.worker_id = "test-worker";
    o.coordinator = server_->address();
    o.work_dir = JoinPath(dir_, "work");
    o.artifact_root = JoinPath(dir_, "artifacts");
    o.memory_bytes = int64_t{1} << 30;
    o.engine_binary = engine;
    o.once = true;
    o.cancel_grace = absl::Milliseconds(500);
    o.lease_wait = absl::Milliseconds(200);
    o.min_heartbeat_gap = absl::Milliseconds(50);
    o.backoff_initial = absl::Milliseconds(50);
    o.backoff_max = absl::Milliseconds(200);
    o.report_retry_timeout = absl::Seconds(5);
    o.rpc_timeout = absl::Seconds(2);
    return o;
  }

  std::unique_ptr<Agent> MakeAgent(const AgentOptions& o,
                                   AgentMetrics* metrics = nullptr) {
    auto channel =
        grpc::CreateChannel(o.coordinator, grpc::InsecureChannelCredentials());
    return std::make_unique<Agent>(o, v1::WorkerService::NewStub(channel),
                                   metrics);
  }

  v1::Lease MakeLease(const std::string& job_id, bool low_memory = false) {
    v1::Lease lease;
    lease.set_job_id(job_id);
    lease.set_attempt(2);
    lease.set_lease_epoch(7);
    lease.set_model_path(JoinPath(dir_, "model"));
    lease.set_low_memory(low_memory);
    lease.mutable_spec()->set_model("demo");
    lease.mutable_spec()->mutable_scheme()->set_group_size(32);
    lease.mutable_spec()->mutable_resources()->set_min_memory_bytes(1000);
    return lease;
  }

  // Runs one job with `once` and returns how long Run() took.
  absl::Duration RunOnce(const AgentOptions& o, const v1::Lease& lease,
                         AgentMetrics* metrics = nullptr) {
    server_->service.Enqueue(lease);
    auto agent = MakeAgent(o, metrics);
    const absl::Time start = absl::Now();
    absl::Status s = agent->Run();
    EXPECT_TRUE(s.ok()) << s;
    return absl::Now() - start;
  }

  // Starts the agent on `lease`, waits until the engine wrote `ready_file`
  // (so its signal traps are installed), then tells the coordinator to
  // answer heartbeats with `action`. Returns the time from then until Run()
  // returned.
  absl::Duration RunWithActionWhenReady(const AgentOptions& o,
                                        const v1::Lease& lease,
                                        const std::string& ready_file,
                                        v1::LeaseAction action) {
    server_->service.Enqueue(lease);
    auto agent = MakeAgent(o);
    absl::Status run_status;
    std::thread runner([&] { run_status = agent->Run(); });
    const std::string ready = JoinPath(dir_, ready_file);
    for (int i = 0; i < 1000 && !PathExists(ready); ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_TRUE(PathExists(ready));
    const absl::Time start = absl::Now();
    server_->service.SetAction(lease.job_id(), action);
    runner.join();
    EXPECT_TRUE(run_status.ok()) << run_status;
    return absl::Now() - start;
  }

  v1::FailJobRequest SingleFail() {
    auto fails = server_->service.fails();
    EXPECT_EQ(fails.size(), 1u);
    EXPECT_TRUE(server_->service.completes().empty());
    return fails.empty() ? v1::FailJobRequest() : fails[0];
  }

  pid_t EnginePid() {
    auto text = ReadFile(JoinPath(dir_, "engine.pid"));
    int pid = 0;
    if (!text.ok() ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &pid)) {
      return 0;
    }
    return pid;
  }

  std::string dir_;
  std::unique_ptr<FakeServer> server_;
};

TEST_F(AgentTest, SuccessReportsManifestProgressAndCleansUp) {
  AgentMetrics metrics;
  const std::string engine =
      WriteEngine(absl::StrCat(kTwoBlocks, kWriteArtifact, "exit 0\n"));
  RunOnce(Options(engine), MakeLease("job-ok", /*low_memory=*/true), &metrics);

  EXPECT_EQ(server_->service.registrations(), 1);
  EXPECT_EQ(server_->service.last_registration().worker_id(), "test-worker");
  EXPECT_EQ(server_->service.last_registration().device(), "cpu");
  auto completes = server_->service.completes();
  ASSERT_EQ(completes.size(), 1u);
  EXPECT_TRUE(server_->service.fails().empty());
  const v1::CompleteJobRequest& c = completes[0];
  EXPECT_EQ(c.lease().job_id(), "job-ok");
  EXPECT_EQ(c.lease().attempt(), 2);
  EXPECT_EQ(c.lease().lease_epoch(), 7);
  EXPECT_EQ(c.lease().worker_id(), "test-worker");
  EXPECT_FALSE(c.has_quality_failure());
  const std::string out = JoinPath(JoinPath(dir_, "artifacts"), "job-ok");
  EXPECT_EQ(c.artifact().directory(), out);
  ASSERT_EQ(c.artifact().files_size(), 2);
  EXPECT_EQ(c.artifact().files(0).path(), "model.safetensors");
  EXPECT_EQ(c.artifact().files(0).size_bytes(), 5);
  EXPECT_EQ(c.artifact().files(0).sha256(), Sha256Hex("hello"));
  EXPECT_EQ(c.artifact().files(1).path(), "manifest.json");
  EXPECT_NE(c.artifact().manifest_json().find("model.safetensors"),
            std::string::npos);
  EXPECT_EQ(c.progress().stage(), "done");
  EXPECT_EQ(c.progress().blocks_done(), 2);
  EXPECT_EQ(c.progress().blocks_total(), 2);
  ASSERT_EQ(c.progress().blocks_size(), 2);
  EXPECT_DOUBLE_EQ(c.progress().blocks(1).loss_after(), 0.2);
  EXPECT_DOUBLE_EQ(c.progress().fraction(), 1.0);

  // The engine's command line follows the contract.
  auto argv = ReadFile(JoinPath(dir_, "argv"));
  ASSERT_TRUE(argv.ok());
  const std::string job_dir = JoinPath(dir_, "work/jobs/job-ok");
  EXPECT_EQ(
      absl::StripAsciiWhitespace(*argv),
      absl::StrCat("quantize --model ", JoinPath(dir_, "model"), " --spec ",
                   job_dir, "/spec.json --out ", out, " --checkpoint-dir ",
                   job_dir, "/checkpoint --device cpu --low-memory"));
  // Spec JSON keeps the proto field names (snake_case).
  auto spec = ReadFile(JoinPath(dir_, "spec_copy.json"));
  ASSERT_TRUE(spec.ok());
  auto parsed = nlohmann::json::parse(*spec);
  EXPECT_EQ(parsed["scheme"]["group_size"], 32);
  EXPECT_EQ(parsed["resources"]["min_memory_bytes"], "1000");
  // A completed job's spec and checkpoint are no longer needed.
  EXPECT_FALSE(PathExists(job_dir));

  const std::string text = metrics.Serialize();
#ifdef ROUNDHOUSE_ENABLE_METRICS
  EXPECT_NE(text.find("roundhouse_blocks_completed_total 2"), std::string::npos)
      << text;
  EXPECT_NE(
      text.find(
          R"(roundhouse_worker_jobs_finished_total{outcome="succeeded"} 1)"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("roundhouse_block_tune_duration_seconds_count 2"),
            std::string::npos);
  EXPECT_NE(text.find("roundhouse_worker_job_progress_ratio 0"),
            std::string::npos);
  EXPECT_EQ(text.find("job-ok"), std::string::npos);  // no job ids as labels
#else
  EXPECT_EQ(text, "");
#endif
}

TEST_F(AgentTest, HeartbeatsCarryProgressWithEta) {
  const std::string engine = WriteEngine(R"(
echo '{"event":"plan","blocks_total":4,"resumed_blocks":1}'
echo '{"event":"stage","stage":"tuning"}'
echo '{"event":"block","block_index":1,"blocks_total":4,"loss_before":0.5,"loss_after":0.25,"seconds":2}'
sleep 1
exit 1
)");
  RunOnce(Options(engine), MakeLease("job-hb"));
  bool seen = false;
  for (const auto& hb : server_->service.heartbeats()) {
    if (hb.leases_size() != 1) continue;
    EXPECT_EQ(hb.progress_size(), 1);
    EXPECT_EQ(hb.leases(0).job_id(), "job-hb");
    EXPECT_EQ(hb.leases(0).lease_epoch(), 7);
    const v1::Progress& p = hb.progress(0);
    if (p.blocks_done() == 2) {
      seen = true;
      EXPECT_EQ(p.stage(), "tuning");
      EXPECT_EQ(p.blocks_total(), 4);
      EXPECT_DOUBLE_EQ(p.eta_seconds(), 4.0);  // 2 s x 2 remaining blocks
      EXPECT_DOUBLE_EQ(p.fraction(), 0.5);
    }
  }
  EXPECT_TRUE(seen) << "no heartbeat carried the block progress";
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_INTERNAL);
  EXPECT_EQ(f.error().message(), "engine exited with code 1");
}

struct ExitCase {
  const char* name;
  const char* body;
  v1::FailureClass failure_class;
  const char* message;
  int64_t peak;
};

class AgentExitTest : public AgentTest,
                      public ::testing::WithParamInterface<ExitCase> {};

TEST_P(AgentExitTest, MapsExitStatusToFailureClass) {
  const ExitCase& c = GetParam();
  RunOnce(Options(WriteEngine(c.body)), MakeLease("job-x"));
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.lease().job_id(), "job-x");
  EXPECT_EQ(f.error().failure_class(), c.failure_class)
      << v1::FailureClass_Name(f.error().failure_class());
  EXPECT_EQ(f.error().message(), c.message);
  EXPECT_EQ(f.error().peak_memory_bytes(), c.peak);
  // Kept for a retry or resume.
  EXPECT_TRUE(PathExists(JoinPath(dir_, "work/jobs/job-x/spec.json")));
}

INSTANTIATE_TEST_SUITE_P(
    Classes, AgentExitTest,
    ::testing::Values(
        ExitCase{"invalid_spec",
                 "echo '{\"event\":\"error\",\"class\":\"invalid_spec\","
                 "\"message\":\"scheme.bits: 5 is not one of 2, 3, 4, 8\"}'\n"
                 "exit 2\n",
                 v1::FAILURE_CLASS_INVALID_SPEC,
                 "scheme.bits: 5 is not one of 2, 3, 4, 8", 0},
        ExitCase{"oom",
                 "echo '{\"event\":\"error\",\"class\":\"out_of_memory\","
                 "\"message\":\"CUDA out of memory\","
                 "\"peak_memory_bytes\":123456789}'\nexit 3\n",
                 v1::FAILURE_CLASS_OUT_OF_MEMORY, "CUDA out of memory",
                 123456789},
        ExitCase{"interrupted", "exit 4\n", v1::FAILURE_CLASS_PREEMPTED,
                 "engine interrupted at a block boundary (exit code 4)", 0},
        ExitCase{"other",
                 "echo '{\"event\":\"error\",\"class\":\"internal\","
                 "\"message\":\"bad tensor\"}'\nexit 1\n",
                 v1::FAILURE_CLASS_INTERNAL,
                 "engine exited with code 1: bad tensor", 0},
        ExitCase{"crash",
                 "echo '{\"event\":\"stage\",\"stage\":\"tuning\"}'\n"
                 "kill -9 $$\n",
                 v1::FAILURE_CLASS_INTERNAL,
                 "engine exited with signal 9 (Killed)", 0}),
    [](const ::testing::TestParamInfo<ExitCase>& info) {
      return std::string(info.param.name);
    });

TEST_F(AgentTest, SuccessWithoutArtifactIsInternalNamingTheDirectory) {
  RunOnce(Options(WriteEngine("exit 0\n")), MakeLease("job-empty"));
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_INTERNAL);
  EXPECT_NE(f.error().message().find("artifacts/job-empty"), std::string::npos)
      << f.error().message();
}

TEST_F(AgentTest, QualityGateFailureCompletesWithQualityFailure) {
  const std::string engine = WriteEngine(
      absl::StrCat(kTwoBlocks, kWriteArtifact,
                   "echo '{\"event\":\"error\",\"class\":\"quality_gate\","
                   "\"message\":\"cosine 0.81 < 0.95\"}'\nexit 5\n"));
  RunOnce(Options(engine), MakeLease("job-q"));
  auto completes = server_->service.completes();
  ASSERT_EQ(completes.size(), 1u);
  EXPECT_TRUE(server_->service.fails().empty());
  EXPECT_EQ(completes[0].quality_failure().failure_class(),
            v1::FAILURE_CLASS_QUALITY_GATE);
  EXPECT_EQ(completes[0].quality_failure().message(), "cosine 0.81 < 0.95");
  EXPECT_EQ(completes[0].artifact().files(0).path(), "model.safetensors");
}

TEST_F(AgentTest, CancelSendsSigtermAndReportsCancelled) {
  const std::string engine = WriteEngine(R"(
trap 'exit 4' TERM
echo '{"event":"stage","stage":"tuning"}'
sleep 30 &
touch "$TESTDIR/ready"
wait $!
)");
  const absl::Duration took = RunWithActionWhenReady(
      Options(engine), MakeLease("job-c"), "ready", v1::LEASE_ACTION_CANCEL);
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_CANCELLED);
  EXPECT_NE(f.error().message().find("exit code 4"), std::string::npos)
      << f.error().message();
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_FALSE(ProcessAlive(EnginePid()));
  EXPECT_FALSE(PathExists(JoinPath(dir_, "work/jobs/job-c")));
}

TEST_F(AgentTest, CancelEscalatesToSigkillAfterGrace) {
  const std::string engine = WriteEngine(R"(
trap '' TERM
sleep 30 &
echo $! > "$TESTDIR/sleep.pid.tmp"
mv "$TESTDIR/sleep.pid.tmp" "$TESTDIR/sleep.pid"
wait $!
)");
  const absl::Duration took =
      RunWithActionWhenReady(Options(engine), MakeLease("job-k"), "sleep.pid",
                             v1::LEASE_ACTION_CANCEL);
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_CANCELLED);
  EXPECT_NE(f.error().message().find("signal 9"), std::string::npos)
      << f.error().message();
  // Heartbeat (0.2 s) + grace (0.5 s) + slack; far below the 30 s sleep.
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_GE(took, absl::Milliseconds(500));
  EXPECT_FALSE(ProcessAlive(EnginePid()));
  auto sleep_pid = ReadFile(JoinPath(dir_, "sleep.pid"));
  ASSERT_TRUE(sleep_pid.ok());
  int pid = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*sleep_pid), &pid));
  // The whole process group goes, not just the engine.
  for (int i = 0; i < 100 && ProcessAlive(pid); ++i)
    absl::SleepFor(absl::Milliseconds(10));
  EXPECT_FALSE(ProcessAlive(pid));
}

TEST_F(AgentTest, AbandonKillsTheEngineAndReportsNothing) {
  const std::string engine =
      WriteEngine("trap '' TERM\ntouch \"$TESTDIR/ready\"\nsleep 30\n");
  const absl::Duration took = RunWithActionWhenReady(
      Options(engine), MakeLease("job-a"), "ready", v1::LEASE_ACTION_ABANDON);
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_TRUE(server_->service.fails().empty());
  EXPECT_TRUE(server_->service.completes().empty());
  EXPECT_FALSE(ProcessAlive(EnginePid()));
}

TEST_F(AgentTest, DrainForwardsSigtermAndReportsPreempted) {
  const std::string engine = WriteEngine(R"(
trap 'sleep 0.3; echo "{\"event\":\"error\",\"class\":\"interrupted\",\"message\":\"stopped after block 0\"}"; exit 4' TERM
echo '{"event":"stage","stage":"tuning"}'
sleep 30 &
touch "$TESTDIR/ready"
wait $!
)");
  AgentOptions o = Options(engine);
  o.once = false;
  server_->service.Enqueue(MakeLease("job-d"));
  auto agent = MakeAgent(o);
  absl::Status run_status;
  std::thread runner([&] { run_status = agent->Run(); });
  for (int i = 0; i < 1000 && !PathExists(JoinPath(dir_, "ready")); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(PathExists(JoinPath(dir_, "ready")));
  // A second job is waiting; a draining agent must not take it.
  server_->service.Enqueue(MakeLease("job-next"));
  agent->RequestDrain();
  runner.join();
  EXPECT_TRUE(run_status.ok()) << run_status;
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.lease().job_id(), "job-d");
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_PREEMPTED);
  EXPECT_EQ(f.error().message(), "stopped after block 0");
  EXPECT_FALSE(ProcessAlive(EnginePid()));
  EXPECT_TRUE(PathExists(JoinPath(dir_, "work/jobs/job-d/spec.json")));
  bool drain_flag_seen = false;
  for (const auto& hb : server_->service.heartbeats()) {
    drain_flag_seen |= hb.draining();
  }
  EXPECT_TRUE(drain_flag_seen);
}

TEST_F(AgentTest, DrainBeforeTheEnginesHandlerIsStillPreempted) {
  // No trap: SIGTERM kills the engine outright, as it does before the real
  // engine has installed its handler.
  const std::string engine =
      WriteEngine("sleep 30 &\ntouch \"$TESTDIR/ready\"\nwait $!\n");
  AgentOptions o = Options(engine);
  o.once = false;
  server_->service.Enqueue(MakeLease("job-early"));
  auto agent = MakeAgent(o);
  std::thread runner([&] { EXPECT_TRUE(agent->Run().ok()); });
  for (int i = 0; i < 1000 && !PathExists(JoinPath(dir_, "ready")); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_PREEMPTED)
      << f.error().message();
}

TEST_F(AgentTest, ReRegistersWhenTheCoordinatorForgotTheWorker) {
  const std::string engine =
      WriteEngine(absl::StrCat(kTwoBlocks, kWriteArtifact, "exit 0\n"));
  AgentOptions o = Options(engine);
  o.once = false;
  auto agent = MakeAgent(o);
  std::thread runner([&] { EXPECT_TRUE(agent->Run().ok()); });
  for (int i = 0; i < 500 && server_->service.registrations() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  server_->service.ForgetWorkers();
  server_->service.Enqueue(MakeLease("job-forgotten"));
  for (int i = 0; i < 1000 && server_->service.completes().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  EXPECT_EQ(server_->service.registrations(), 2);
  ASSERT_EQ(server_->service.completes().size(), 1u);
}

TEST_F(AgentTest, HeartbeatIntervalLeavesRoomBeforeTheLeaseExpires) {
  // A 30 s interval with a 0.6 s lease would lose every lease; the agent
  // heartbeats at least every 0.2 s instead.
  server_->service.SetTimings(30, 0.6);
  RunOnce(Options(WriteEngine("sleep 1\nexit 1\n")), MakeLease("job-t"));
  int with_lease = 0;
  for (const auto& hb : server_->service.heartbeats()) {
    with_lease += hb.leases_size();
  }
  EXPECT_GE(with_lease, 3);  // uncapped: at most 2 (lease start, stage)
}

TEST_F(AgentTest, StaleEpochRefusalIsLoggedAndTheAgentMovesOn) {
  server_->service.SetReportStatus(
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale epoch 7"));
  const absl::Duration took =
      RunOnce(Options(WriteEngine("exit 1\n")), MakeLease("job-s"));
  EXPECT_EQ(server_->service.fails().size(), 1u);  // tried exactly once
  EXPECT_LT(took, absl::Seconds(3));
}

TEST_F(AgentTest, ReportsAreRetriedWhileTheCoordinatorIsUnavailable) {
  server_->service.FailReportsFirst(2);
  RunOnce(Options(WriteEngine("exit 3\n")), MakeLease("job-r"));
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_OUT_OF_MEMORY);
}

TEST_F(AgentTest, WaitsForTheCoordinatorAndSurvivesItsRestart) {
  const std::string engine =
      WriteEngine(absl::StrCat(kTwoBlocks, kWriteArtifact, "exit 0\n"));
  AgentOptions o = Options(engine);
  o.once = false;
  const int port = server_->port;
  server_.reset();  // not up yet when the agent starts
  auto agent = MakeAgent(o);
  absl::Status run_status;
  std::thread runner([&] { run_status = agent->Run(); });
  absl::SleepFor(absl::Milliseconds(300));
  server_ = std::make_unique<FakeServer>(port);
  ASSERT_EQ(server_->port, port);
  for (int i = 0; i < 500 && server_->service.registrations() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->service.registrations(), 1);

  // Restart: a fresh coordinator on the same port gets a registration again
  // and its job runs.
  server_.reset();
  absl::SleepFor(absl::Milliseconds(300));
  server_ = std::make_unique<FakeServer>(port);
  ASSERT_EQ(server_->port, port);
  server_->service.Enqueue(MakeLease("job-after-restart"));
  for (int i = 0; i < 1000 && server_->service.completes().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  EXPECT_TRUE(run_status.ok());
  EXPECT_GE(server_->service.registrations(), 1);
  ASSERT_EQ(server_->service.completes().size(), 1u);
  EXPECT_EQ(server_->service.completes()[0].lease().job_id(),
            "job-after-restart");
}

#ifdef ROUNDHOUSE_AGENT_HARNESS
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  return response;
}

// The real `agent` command in its own process: SIGTERM drains (the engine
// gets SIGTERM, the job is handed back as PREEMPTED, exit status 0) and
// --metrics-listen serves Prometheus text.
TEST_F(AgentTest, AgentCommandDrainsOnSigtermAndServesMetrics) {
  const std::string engine = WriteEngine(R"(
trap 'echo "{\"event\":\"error\",\"class\":\"interrupted\",\"message\":\"checkpointed\"}"; exit 4' TERM
echo '{"event":"plan","blocks_total":4,"resumed_blocks":0}'
echo '{"event":"stage","stage":"tuning"}'
echo '{"event":"block","block_index":0,"blocks_total":4,"loss_before":0.5,"loss_after":0.25,"seconds":0.2}'
sleep 30 &
touch "$TESTDIR/ready"
wait $!
)");
  server_->service.Enqueue(MakeLease("job-p"));
  const int metrics_port = FreePort();
  const std::string log = JoinPath(dir_, "agent.log");
  const std::string wrapper = JoinPath(dir_, "agent.sh");
  ASSERT_TRUE(
      WriteFileAtomically(
          wrapper, absl::StrCat("#!/bin/sh\nexec '", ROUNDHOUSE_AGENT_HARNESS,
                                "' agent --coordinator ", server_->address(),
                                " --worker-id proc-worker --work-dir '", dir_,
                                "/work' --artifact-root '", dir_,
                                "/artifacts' --engine-binary '", engine,
                                "' --metrics-listen 127.0.0.1:", metrics_port,
                                " --lease-wait-seconds 0.2 2> '", log, "'\n"))
          .ok());
  auto agent = ChildProcess::Spawn({"/bin/sh", wrapper});
  ASSERT_TRUE(agent.ok()) << agent.status();
  const std::string ready = JoinPath(dir_, "ready");
  for (int i = 0; i < 1000 && !PathExists(ready); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(PathExists(ready)) << ReadFile(log).value_or("");
  std::string scrape;
  for (int i = 0; i < 200; ++i) {
    scrape = HttpGet(metrics_port, "/metrics");
    if (scrape.find("roundhouse_blocks_completed_total 1") !=
        std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(25));
  }
#ifdef ROUNDHOUSE_ENABLE_METRICS
  EXPECT_NE(scrape.find("roundhouse_worker_jobs_running 1"), std::string::npos)
      << scrape;
  EXPECT_NE(scrape.find("roundhouse_worker_job_progress_ratio 0.25"),
            std::string::npos)
      << scrape;
  EXPECT_NE(scrape.find("roundhouse_blocks_completed_total 1"),
            std::string::npos);
  EXPECT_EQ(scrape.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << scrape;
  EXPECT_NE(scrape.find("Content-Type: text/plain; version=0.0.4"),
            std::string::npos);
  // Lint the exposition with promtool when it is installed (Debian package
  // `prometheus`); the check is skipped silently otherwise.
  if (access("/usr/bin/promtool", X_OK) == 0) {
    const size_t body = scrape.find("\r\n\r\n");
    ASSERT_NE(body, std::string::npos);
    const std::string file = JoinPath(dir_, "scrape.txt");
    ASSERT_TRUE(WriteFileAtomically(file, scrape.substr(body + 4)).ok());
    EXPECT_EQ(
        system(absl::StrCat("/usr/bin/promtool check metrics < '", file, "'")
                   .c_str()),
        0);
  }
  EXPECT_NE(HttpGet(metrics_port, "/other").find("404"), std::string::npos);
#endif
  (*agent)->SignalGroup(SIGTERM);
  std::optional<ChildExit> exit;
  for (int i = 0; i < 1000 && !(exit = (*agent)->TryWait()); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(exit.has_value());
  EXPECT_FALSE(exit->signaled) << exit->Describe();
  EXPECT_EQ(exit->exit_code, 0);
  v1::FailJobRequest f = SingleFail();
  EXPECT_EQ(f.lease().job_id(), "job-p");
  EXPECT_EQ(f.error().failure_class(), v1::FAILURE_CLASS_PREEMPTED);
  EXPECT_EQ(f.error().message(), "checkpointed");
  EXPECT_FALSE(ProcessAlive(EnginePid()));
  const std::string text = ReadFile(log).value_or("");
  EXPECT_NE(text.find(absl::StrCat("roundhouse-worker agent proc-worker "
                                   "registered with ",
                                   server_->address())),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("job job-p: SIGTERM forwarded to the engine"),
            std::string::npos);
}
#endif  // ROUNDHOUSE_AGENT_HARNESS

TEST_F(AgentTest, InvalidOptionsNameTheFlag) {
  AgentOptions o = Options(JoinPath(dir_, "missing-engine"));
  absl::Status s = MakeAgent(o)->Run();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--engine-binary"), std::string::npos);
  o = Options(WriteEngine("exit 0\n"));
  o.device = "tpu";
  s = MakeAgent(o)->Run();
  EXPECT_NE(s.message().find("--device"), std::string::npos);
}

std::vector<char*> Argv(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (auto& a : args) out.push_back(a.data());
  return out;
}

TEST(AgentFlagsTest, ParsesEveryFlagInBothForms) {
  std::vector<std::string> args = {"agent",
                                   "--coordinator=10.0.0.1:7600",
                                   "--worker-id",
                                   "w1",
                                   "--work-dir",
                                   "/w",
                                   "--artifact-root=/a",
                                   "--device",
                                   "cuda",
                                   "--memory-bytes",
                                   "1024",
                                   "--metrics-listen=127.0.0.1:9700",
                                   "--engine-binary",
                                   "/bin/engine",
                                   "--cancel-grace-seconds",
                                   "2.5",
                                   "--once",
                                   "--threads=4",
                                   "--lease-wait-seconds",
                                   "1"};
  auto argv = Argv(args);
  auto f = ParseAgentFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->coordinator, "10.0.0.1:7600");
  EXPECT_EQ(f->options.coordinator, "10.0.0.1:7600");
  EXPECT_EQ(f->options.worker_id, "w1");
  EXPECT_EQ(f->options.work_dir, "/w");
  EXPECT_EQ(f->options.artifact_root, "/a");
  EXPECT_EQ(f->options.device, "cuda");
  EXPECT_EQ(f->options.memory_bytes, 1024);
  EXPECT_EQ(f->metrics_listen, "127.0.0.1:9700");
  EXPECT_EQ(f->options.engine_binary, "/bin/engine");
  EXPECT_EQ(f->options.cancel_grace, absl::Milliseconds(2500));
  EXPECT_TRUE(f->options.once);
  EXPECT_EQ(f->options.threads, 4);
  EXPECT_EQ(f->options.lease_wait, absl::Seconds(1));
}

TEST(AgentFlagsTest, DefaultsAndErrors) {
  std::vector<std::string> args = {"agent", "--work-dir=/w",
                                   "--artifact-root=/a"};
  auto argv = Argv(args);
  auto f = ParseAgentFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->coordinator, "127.0.0.1:7600");
  EXPECT_EQ(f->options.device, "cpu");
  EXPECT_EQ(f->options.engine_binary, "/proc/self/exe");
  EXPECT_EQ(f->options.cancel_grace, absl::Seconds(10));
  EXPECT_FALSE(f->options.once);
  EXPECT_TRUE(ResolveAgentDefaults(&*f).ok());
  EXPECT_GT(f->options.memory_bytes, 0);
  EXPECT_NE(f->options.worker_id.find(absl::StrCat("-", getpid())),
            std::string::npos);

  auto parse = [](std::vector<std::string> a) {
    auto v = Argv(a);
    return ParseAgentFlags(static_cast<int>(v.size()), v.data()).status();
  };
  EXPECT_NE(parse({"agent", "--artifact-root=/a"}).message().find("--work-dir"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--work-dir=/w"}).message().find("--artifact-root"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--work-dir=/w", "--artifact-root=/a",
                   "--memory-bytes=lots"})
                .message()
                .find("--memory-bytes"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--bogus"}).message().find("--bogus"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--work-dir"}).message().find("missing value"),
            std::string::npos);
  EXPECT_TRUE(parse({"agent", "--help"}).ok());
}

// An engine that records its CUDA_VISIBLE_DEVICES and argv under its job id,
// then waits until `want` engines have started before it finishes: jobs
// that do not run at the same time time out (exit 1).
std::string BarrierEngine(int want) {
  return absl::StrCat(R"(
JOB=$(basename "$OUT")
echo "${CUDA_VISIBLE_DEVICES-unset}" > "$TESTDIR/cvd-$JOB"
tr '\0' ' ' < /proc/$$/cmdline > "$TESTDIR/argv-$JOB"
touch "$TESTDIR/started-$JOB"
echo '{"event":"stage","stage":"tuning"}'
i=0
while [ $i -lt 500 ]; do
  n=$(ls "$TESTDIR" | grep -c '^started-')
  [ "$n" -ge )",
                      want, R"( ] && break
  sleep 0.01
  i=$((i+1))
done
[ "$n" -ge )",
                      want, R"( ] || exit 1
sleep 0.3
)",
                      kWriteArtifact, "exit 0\n");
}

TEST_F(AgentTest, RunsSeveralJobsAtOnceWithOneHeartbeat) {
  AgentOptions o = Options(WriteEngine(BarrierEngine(2)));
  o.once = false;
  o.max_concurrent_jobs = 2;
  server_->service.Enqueue(MakeLease("job-a"));
  server_->service.Enqueue(MakeLease("job-b"));
  auto agent = MakeAgent(o);
  absl::Status run_status;
  std::thread runner([&] { run_status = agent->Run(); });
  for (int i = 0; i < 500 && server_->service.completes().size() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  EXPECT_TRUE(run_status.ok()) << run_status;
  auto completes = server_->service.completes();
  ASSERT_EQ(completes.size(), 2u);
  EXPECT_TRUE(server_->service.fails().empty());
  // Some heartbeat carried both leases, with a progress entry each.
  bool both = false;
  for (const v1::HeartbeatRequest& h : server_->service.heartbeats()) {
    if (h.leases_size() == 2 && h.progress_size() == 2) both = true;
  }
  EXPECT_TRUE(both);
  // The cpu agent reports no GPU count and sets no CUDA_VISIBLE_DEVICES.
  for (const v1::LeaseJobRequest& r : server_->service.lease_requests()) {
    EXPECT_FALSE(r.has_free_gpu_count());
  }
  auto cvd = ReadFile(JoinPath(dir_, "cvd-job-a"));
  ASSERT_TRUE(cvd.ok());
  EXPECT_EQ(absl::StripAsciiWhitespace(*cvd), "unset");
}

TEST_F(AgentTest, OneJobAtATimeByDefaultOnCpu) {
  // With one slot the second engine cannot start while the first waits for
  // it: the barrier of 2 times out, both jobs fail, one after the other.
  AgentOptions o = Options(WriteEngine(BarrierEngine(2)));
  o.once = false;
  server_->service.Enqueue(MakeLease("job-a"));
  server_->service.Enqueue(MakeLease("job-b"));
  auto agent = MakeAgent(o);
  absl::Status run_status;
  std::thread runner([&] { run_status = agent->Run(); });
  for (int i = 0; i < 1500 && server_->service.fails().size() +
                                      server_->service.completes().size() <
                                  2;
       ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  // The first job times out alone; the second then finds the first one's
  // start marker and succeeds.
  auto fails = server_->service.fails();
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_EQ(fails[0].lease().job_id(), "job-a");
  ASSERT_EQ(server_->service.completes().size(), 1u);
  for (const v1::HeartbeatRequest& h : server_->service.heartbeats()) {
    EXPECT_LE(h.leases_size(), 1);
  }
}

TEST_F(AgentTest, GivesEachJobItsOwnGpus) {
  AgentOptions o = Options(WriteEngine(BarrierEngine(2)));
  o.once = false;
  o.device = "cuda";
  o.gpu_ids = {0, 1};  // automatic slots: one per GPU
  v1::Lease a = MakeLease("job-a"), b = MakeLease("job-b");
  v1::Lease both = MakeLease("job-both");
  both.mutable_spec()->mutable_resources()->set_gpu_count(2);
  server_->service.Enqueue(a);
  server_->service.Enqueue(b);
  server_->service.Enqueue(both);
  auto agent = MakeAgent(o);
  absl::Status run_status;
  std::thread runner([&] { run_status = agent->Run(); });
  for (int i = 0; i < 1000 && server_->service.completes().size() < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  agent->RequestDrain();
  runner.join();
  EXPECT_TRUE(run_status.ok()) << run_status;
  EXPECT_EQ(server_->service.completes().size(), 3u);
  EXPECT_TRUE(server_->service.fails().empty());
  EXPECT_EQ(server_->service.last_registration().gpu_count(), 2);
  auto cvd = [&](const std::string& job) {
    auto t = ReadFile(JoinPath(dir_, "cvd-" + job));
    return t.ok() ? std::string(absl::StripAsciiWhitespace(*t)) : "missing";
  };
  EXPECT_EQ(cvd("job-a"), "0");
  EXPECT_EQ(cvd("job-b"), "1");
  EXPECT_EQ(cvd("job-both"), "0,1");
  auto argv = ReadFile(JoinPath(dir_, "argv-job-both"));
  ASSERT_TRUE(argv.ok());
  EXPECT_NE(argv->find("--gpus 2"), std::string::npos) << *argv;
  auto argv_a = ReadFile(JoinPath(dir_, "argv-job-a"));
  ASSERT_TRUE(argv_a.ok());
  EXPECT_EQ(argv_a->find("--gpus"), std::string::npos) << *argv_a;
  // Every lease request reported the free GPUs; none was sent with none
  // free, and the 2-GPU job was only handed out with both free.
  const auto requests = server_->service.lease_requests();
  ASSERT_FALSE(requests.empty());
  for (const v1::LeaseJobRequest& r : requests) {
    ASSERT_TRUE(r.has_free_gpu_count());
    EXPECT_GE(r.free_gpu_count(), 1);
    EXPECT_LE(r.free_gpu_count(), 2);
  }
}

TEST(AgentFlagsTest, GpusAndConcurrency) {
  std::vector<std::string> args = {"agent",          "--work-dir=/w",
                                   "--artifact-root=/a", "--device=cuda",
                                   "--gpus=0,2",     "--max-concurrent-jobs",
                                   "3"};
  auto argv = Argv(args);
  auto f = ParseAgentFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->options.gpu_ids, (std::vector<int>{0, 2}));
  EXPECT_EQ(f->options.max_concurrent_jobs, 3);
  auto parse = [](std::vector<std::string> a) {
    auto v = Argv(a);
    return ParseAgentFlags(static_cast<int>(v.size()), v.data()).status();
  };
  EXPECT_NE(parse({"agent", "--work-dir=/w", "--artifact-root=/a",
                   "--device=cuda", "--gpus=0,0"})
                .message()
                .find("--gpus"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--work-dir=/w", "--artifact-root=/a",
                   "--gpus=1"})
                .message()
                .find("--device cuda"),
            std::string::npos);
  EXPECT_NE(parse({"agent", "--work-dir=/w", "--artifact-root=/a",
                   "--max-concurrent-jobs=-1"})
                .message()
                .find("--max-concurrent-jobs"),
            std::string::npos);
}

}  // namespace
}  // namespace roundhouse::agent
