#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "common/files.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "roundhouse/v1/roundhouse.grpc.pb.h"
#include "server/coordinator_server.h"
#include "server/grpc_status.h"

namespace roundhouse::server {
namespace {

namespace v1 = roundhouse::v1;

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_server_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(MakeDirs(dir_ + "/models/m").ok());
    std::ofstream(dir_ + "/models/m/config.json") << "{}";
    CoordinatorServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = metrics_listen_;
    o.coordinator.db_path = dir_ + "/db.sqlite";
    o.coordinator.models.model_roots = {dir_ + "/models"};
    o.coordinator.tick_interval = absl::Milliseconds(50);
    auto s = CoordinatorServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel_);
    workers_ = v1::WorkerService::NewStub(channel_);
  }
  void TearDown() override {
    server_.reset();
    RemoveTree(dir_).IgnoreError();
  }
  v1::Job Submit(const std::string& json) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest req;
    req.set_spec_json(json);
    v1::SubmitJobResponse resp;
    grpc::Status s = jobs_->SubmitJob(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.job();
  }
  void Register(const std::string& id) {
    grpc::ClientContext ctx;
    v1::RegisterWorkerRequest req;
    req.set_worker_id(id);
    req.set_device("cpu");
    req.set_memory_bytes(1 << 30);
    v1::RegisterWorkerResponse resp;
    ASSERT_TRUE(workers_->RegisterWorker(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.lease_timeout_seconds(), 15);
  }
  v1::Lease Lease(const std::string& id) {
    grpc::ClientContext ctx;
    v1::LeaseJobRequest req;
    req.set_worker_id(id);
    req.set_wait_seconds(2);
    v1::LeaseJobResponse resp;
    EXPECT_TRUE(workers_->LeaseJob(&ctx, req, &resp).ok());
    return resp.lease();
  }
  static v1::LeaseRef Ref(const v1::Lease& l, const std::string& worker) {
    v1::LeaseRef ref;
    ref.set_job_id(l.job_id());
    ref.set_attempt(l.attempt());
    ref.set_lease_epoch(l.lease_epoch());
    ref.set_worker_id(worker);
    return ref;
  }

  std::string metrics_listen_;  // empty: no HTTP endpoint (its stop is slow)
  std::string dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

TEST(GrpcStatusTest, ConvertsCodeAndCapsMessage) {
  grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError(std::string(5000, 'x')));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message().size(), kMaxGrpcStatusMessageBytes);
  EXPECT_TRUE(absl::EndsWith(s.error_message(), "..."));
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcStatus(absl::FailedPreconditionError("x")).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServerTest, InvalidSpecIsInvalidArgumentNamingTheField) {
  grpc::ClientContext ctx;
  v1::SubmitJobRequest req;
  req.set_spec_json(R"({"model":"m","bogus_key":1})");
  v1::SubmitJobResponse resp;
  grpc::Status s = jobs_->SubmitJob(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "spec: "))
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "bogus_key"));
}

TEST_F(ServerTest, WorkerFlowWithWatcherAndFencing) {
  Register("w1");
  v1::Job job = Submit(R"({"model":"m"})");
  ASSERT_FALSE(job.job_id().empty());

  std::vector<v1::JobEvent> events;
  grpc::Status watch_status;
  grpc::ClientContext watch_ctx;
  v1::WatchJobRequest wreq;
  wreq.set_job_id(job.job_id());
  auto reader = jobs_->WatchJob(&watch_ctx, wreq);
  v1::JobEvent first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_EQ(first.kind(), "snapshot");
  EXPECT_EQ(first.job().state(), v1::JOB_STATE_QUEUED);
  std::thread watcher([&] {
    v1::JobEvent e;
    while (reader->Read(&e)) events.push_back(e);
    watch_status = reader->Finish();
  });

  v1::Lease lease = Lease("w1");
  ASSERT_EQ(lease.job_id(), job.job_id());
  EXPECT_EQ(lease.model_path(), *RealPath(dir_ + "/models/m"));
  {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest req;
    req.set_worker_id("w1");
    *req.add_leases() = Ref(lease, "w1");
    auto* p = req.add_progress();
    p->set_stage("tuning");
    p->set_blocks_done(1);
    p->set_blocks_total(2);
    auto* b = p->add_blocks();
    b->set_block_index(0);
    b->set_loss_before(0.5);
    b->set_loss_after(0.25);
    v1::HeartbeatResponse resp;
    ASSERT_TRUE(workers_->Heartbeat(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.actions_size(), 1);
    EXPECT_EQ(resp.actions(0), v1::LEASE_ACTION_CONTINUE);
  }
  {
    // A stale epoch cannot complete.
    grpc::ClientContext ctx;
    v1::CompleteJobRequest req;
    *req.mutable_lease() = Ref(lease, "w1");
    req.mutable_lease()->set_lease_epoch(lease.lease_epoch() + 7);
    v1::Ack ack;
    grpc::Status s = workers_->CompleteJob(&ctx, req, &ack);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "stale"));
  }
  {
    grpc::ClientContext ctx;
    v1::CompleteJobRequest req;
    *req.mutable_lease() = Ref(lease, "w1");
    req.mutable_artifact()->set_directory("/artifacts/x");
    v1::Ack ack;
    ASSERT_TRUE(workers_->CompleteJob(&ctx, req, &ack).ok());
  }
  watcher.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(events.back().job().artifact().directory(), "/artifacts/x");
  bool saw_block = false;
  for (const auto& e : events) {
    if (e.job().progress().blocks_size() == 1) {
      saw_block = true;
      EXPECT_EQ(e.job().progress().blocks(0).loss_after(), 0.25);
    }
  }
  EXPECT_TRUE(saw_block);

  // A late watcher gets the terminal snapshot, then OK.
  grpc::ClientContext late_ctx;
  auto late = jobs_->WatchJob(&late_ctx, wreq);
  v1::JobEvent e;
  ASSERT_TRUE(late->Read(&e));
  EXPECT_EQ(e.kind(), "snapshot");
  EXPECT_EQ(e.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(late->Read(&e));
  EXPECT_TRUE(late->Finish().ok());
}

TEST_F(ServerTest, SlowWatcherGetsCoalescedEventsAndTheFinalState) {
  Register("w1");
  v1::Job job = Submit(R"({"model":"m"})");
  grpc::ClientContext watch_ctx;
  v1::WatchJobRequest wreq;
  wreq.set_job_id(job.job_id());
  auto reader = jobs_->WatchJob(&watch_ctx, wreq);
  v1::JobEvent e;
  ASSERT_TRUE(reader->Read(&e));  // snapshot; then stop reading for a while
  v1::Lease lease = Lease("w1");
  ASSERT_EQ(lease.job_id(), job.job_id());
  // ~2000 progress events of ~4 KB each: far more than the HTTP/2 window, so
  // without coalescing the server would have to queue megabytes.
  constexpr int kBeats = 2000;
  v1::HeartbeatRequest hb;
  hb.set_worker_id("w1");
  *hb.add_leases() = Ref(lease, "w1");
  auto* p = hb.add_progress();
  p->set_stage("tuning");
  p->set_blocks_total(kBeats + 1);
  for (int b = 0; b < 100; ++b) {
    auto* blk = p->add_blocks();
    blk->set_block_index(b);
    blk->set_loss_before(1.0 / (b + 1));
    blk->set_loss_after(0.5 / (b + 1));
    blk->set_seconds(1);
  }
  for (int i = 1; i <= kBeats; ++i) {
    p->set_blocks_done(i);
    grpc::ClientContext ctx;
    v1::HeartbeatResponse resp;
    ASSERT_TRUE(workers_->Heartbeat(&ctx, hb, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::CompleteJobRequest req;
    *req.mutable_lease() = Ref(lease, "w1");
    v1::Ack ack;
    ASSERT_TRUE(workers_->CompleteJob(&ctx, req, &ack).ok());
  }
  int received = 0;
  int last_done = 0;
  v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
  while (reader->Read(&e)) {
    ++received;
    EXPECT_GE(e.job().progress().blocks_done(), last_done);  // never older
    last_done = e.job().progress().blocks_done();
    last_state = e.job().state();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last_state, v1::JOB_STATE_SUCCEEDED);
  EXPECT_LT(received, kBeats);
}

TEST_F(ServerTest, WatchUnknownJobIsNotFound) {
  grpc::ClientContext ctx;
  v1::WatchJobRequest req;
  req.set_job_id("job-nope");
  auto reader = jobs_->WatchJob(&ctx, req);
  v1::JobEvent e;
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, WatcherCancellationIsClean) {
  v1::Job job = Submit(R"({"model":"m"})");
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    v1::WatchJobRequest req;
    req.set_job_id(job.job_id());
    auto reader = jobs_->WatchJob(&ctx, req);
    v1::JobEvent e;
    ASSERT_TRUE(reader->Read(&e));
    ctx.TryCancel();
    while (reader->Read(&e)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The job can still be cancelled and watched afterwards.
  grpc::ClientContext ctx;
  v1::CancelJobRequest req;
  req.set_job_id(job.job_id());
  v1::Job out;
  ASSERT_TRUE(jobs_->CancelJob(&ctx, req, &out).ok());
  EXPECT_EQ(out.state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(ServerTest, HealthServiceReportsServing) {
  grpc::GenericStub stub(channel_);
  grpc::ClientContext ctx;
  grpc::ByteBuffer request;  // HealthCheckRequest{service: ""} is empty
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request, &response, [&](grpc::Status s) {
                   status = s;
                   done.Notify();
                 });
  done.WaitForNotification();
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes += std::string(s.begin(), s.end());
  // HealthCheckResponse{status: SERVING (1)} = field 1 varint 1.
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

// Fetches http://127.0.0.1:port/metrics and returns the body.
std::string HttpGetMetrics(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const char req[] = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, req, sizeof(req) - 1) < 0) {
    close(fd);
    return "";
  }
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  close(fd);
  size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

class ServerWithHttpMetricsTest : public ServerTest {
 protected:
  ServerWithHttpMetricsTest() { metrics_listen_ = "127.0.0.1:0"; }
};

TEST_F(ServerWithHttpMetricsTest, ScrapePassesPromtool) {
  Register("w1");
  Submit(R"({"model":"m","priority":70})");
  Lease("w1");
  ASSERT_GT(server_->metrics_port(), 0);
  std::string text = HttpGetMetrics(server_->metrics_port());
  for (const char* name :
       {"roundhouse_jobs_submitted_total{priority=\"70\"} 1",
        "roundhouse_jobs_completed_total{outcome=\"deadline_exceeded\"} 0",
        "roundhouse_jobs_running 1", "roundhouse_job_attempts_total 1",
        "roundhouse_workers{state=\"busy\"} 1",
        "roundhouse_job_retries_total{reason=\"oom\"} 0",
        "roundhouse_queue_oldest_enqueue_timestamp_seconds",
        "roundhouse_job_queue_wait_seconds_bucket",
        "roundhouse_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"86400\"}",
        "roundhouse_lease_expirations_total 0",
        "roundhouse_job_resumes_total 0",
        "roundhouse_worker_last_heartbeat_timestamp_seconds{worker=\"w1\"}",
        "roundhouse_rpc_requests_total{code=\"OK\",method=\"SubmitJob\"} 1",
        "roundhouse_rpc_duration_seconds_bucket", "roundhouse_build_info{"}) {
    EXPECT_TRUE(absl::StrContains(text, name)) << name << "\n" << text;
  }
  if (access("/usr/bin/promtool", X_OK) != 0 &&
      system("command -v promtool >/dev/null 2>&1") != 0) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL() << "promtool is not installed (required under CI=true)";
    }
    GTEST_SKIP() << "promtool is not installed; skipping the lint";
  }
  std::string path = dir_ + "/scrape.txt";
  std::ofstream(path) << text;
  std::string cmd = "promtool check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), p)) out += buf;
  int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace roundhouse::server
