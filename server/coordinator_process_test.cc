// Starts the real roundhouse-coordinator binary: flags as documented, the
// "listening on" line, durability across SIGKILL, graceful SIGTERM.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "roundhouse/v1/roundhouse.grpc.pb.h"

namespace roundhouse::server {
namespace {

namespace v1 = roundhouse::v1;

#ifdef RH_COORDINATOR_BINARY

class CoordinatorProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_proc_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(MakeDirs(dir_ + "/a/m").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/b/n").ok());
    std::ofstream(dir_ + "/a/m/config.json") << "{}";
    std::ofstream(dir_ + "/b/n/config.json") << "{}";
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    RemoveTree(dir_).IgnoreError();
  }

  // Starts the binary; returns the address from its "listening on" line.
  std::string Start() {
    log_ = dir_ + "/log" + std::to_string(starts_++);
    pid_ = fork();
    if (pid_ == 0) {
      freopen(log_.c_str(), "w", stderr);
      std::string db = "--db=" + dir_ + "/db.sqlite";
      std::string root_a = dir_ + "/a";
      std::string root_b = "--model-root=" + dir_ + "/b";
      execl(RH_COORDINATOR_BINARY, RH_COORDINATOR_BINARY, db.c_str(),
            "--model-root", root_a.c_str(), root_b.c_str(), "--listen",
            "127.0.0.1:0", "--metrics-listen=", "--lease-timeout-seconds=15",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    const std::string marker = "roundhouse-coordinator listening on ";
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      std::ifstream in(log_);
      std::string line;
      while (std::getline(in, line)) {
        size_t at = line.find(marker);
        if (at != std::string::npos) return line.substr(at + marker.size());
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return "";
  }
  int Stop(int sig) {
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  std::string Log() {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string dir_, log_;
  pid_t pid_ = -1;
  int starts_ = 0;
};

TEST_F(CoordinatorProcessTest, AcknowledgedJobsSurviveKillAndSigterm) {
  std::string address = Start();
  ASSERT_FALSE(address.empty()) << Log();
  auto stub = v1::JobService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::vector<std::string> ids;
  for (const char* model : {"m", dir_.c_str()}) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest req;
    // "m" is in the first root; an absolute path into the second root.
    req.set_spec_json(std::string(model) == "m"
                          ? R"({"model":"m"})"
                          : R"({"model":")" + dir_ + R"(/b/n"})");
    v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ids.push_back(resp.job().job_id());
  }
  // Acknowledged means durable: SIGKILL right after must lose nothing.
  int status = Stop(SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(status));
  address = Start();
  ASSERT_FALSE(address.empty()) << Log();
  stub = v1::JobService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  for (const auto& id : ids) {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::Job job;
    ASSERT_TRUE(stub->GetJob(&ctx, req, &job).ok()) << id;
    EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  }
  status = Stop(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << Log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << Log();
  EXPECT_TRUE(absl::StrContains(Log(), "stopped"));
}

TEST_F(CoordinatorProcessTest, MissingDbFlagIsAnError) {
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    execl(RH_COORDINATOR_BINARY, RH_COORDINATOR_BINARY,
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
}

#endif  // RH_COORDINATOR_BINARY

}  // namespace
}  // namespace roundhouse::server
