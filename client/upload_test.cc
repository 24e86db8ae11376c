#include "client/upload.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gtest/gtest.h"

namespace roundhouse::client {
namespace {

class UploadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_upload_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { RemoveTree(dir_).IgnoreError(); }

  void Write(const std::string& rel, const std::string& text = "x") {
    const std::string path = JoinPath(dir_, rel);
    ASSERT_TRUE(MakeDirs(path.substr(0, path.find_last_of('/'))).ok());
    ASSERT_TRUE(WriteFileAtomically(path, text).ok());
  }

  std::string dir_;
};

TEST_F(UploadTest, CheckDeliverableListsEveryMissingFile) {
  Write("README.md");
  Write("manifest.json", R"({"formats": {"auto_round": {"directory": ""}}})");
  absl::Status s = CheckDeliverable(dir_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("missing test_results.json, .gitattributes, "
                             "quantization_config.json"),
            std::string::npos)
      << s.message();
  Write("test_results.json");
  Write(".gitattributes");
  Write("quantization_config.json");
  EXPECT_TRUE(CheckDeliverable(dir_).ok());

  EXPECT_EQ(CheckDeliverable(JoinPath(dir_, "nope")).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(UploadTest, CheckDeliverableLooksInEveryFormatDirectory) {
  for (const char* f : {"README.md", "test_results.json", ".gitattributes"}) {
    Write(f);
  }
  Write("manifest.json",
        R"({"formats": {"auto_round": {"directory": "auto_round"},
                        "auto_gptq": {"directory": "auto_gptq"}}})");
  Write("auto_round/quantization_config.json");
  absl::Status s = CheckDeliverable(dir_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("missing auto_gptq/quantization_config.json"),
            std::string::npos)
      << s.message();
  Write("auto_gptq/quantization_config.json");
  EXPECT_TRUE(CheckDeliverable(dir_).ok());
}

TEST(UploadPlanTest, DefaultEndpointHasNoPrefix) {
  auto plan =
      PlanUpload("/srv/a/j-1", "acme/tiny-w4g32", "https://huggingface.co");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->command_line,
            "huggingface-cli upload acme/tiny-w4g32 /srv/a/j-1 . "
            "--repo-type model");
  EXPECT_TRUE(plan->env.empty());
  EXPECT_EQ(plan->argv.size(), 7u);
  // A trailing slash is still the default hub.
  plan = PlanUpload("/d", "a/b", "https://huggingface.co/");
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->env.empty());
}

TEST(UploadPlanTest, OtherEndpointIsPassedAsHfEndpointAndPathsAreQuoted) {
  auto plan = PlanUpload("/srv/my art/j'1", "a/b", "http://127.0.0.1:8080");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->command_line,
            "HF_ENDPOINT=http://127.0.0.1:8080 huggingface-cli upload a/b "
            "'/srv/my art/j'\\''1' . --repo-type model");
  ASSERT_EQ(plan->env.size(), 1u);
  EXPECT_EQ(plan->env[0], "HF_ENDPOINT=http://127.0.0.1:8080");
  EXPECT_EQ(plan->argv[3], "/srv/my art/j'1");  // argv is not quoted
}

TEST(UploadPlanTest, BadRepoAndEndpointNameTheFlag) {
  for (const char* repo : {"noslash", "a/b/c", "/abs", "a/..", "a b/c", ""}) {
    auto plan = PlanUpload("/d", repo, "https://huggingface.co");
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << repo;
    EXPECT_NE(plan.status().message().find("--repo"), std::string::npos);
  }
  for (const char* url : {"ftp://x", "huggingface.co", "http://", "http://h:0",
                          "http://h:99999", "http://h:x", "http://u@h"}) {
    auto plan = PlanUpload("/d", "a/b", url);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_NE(plan.status().message().find(absl::StrCat("--endpoint '", url)),
              std::string::npos)
        << plan.status().message();
  }
}

TEST(EndpointTest, Parse) {
  auto e = ParseEndpoint("https://huggingface.co");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "huggingface.co");
  EXPECT_EQ(e->port, 443);
  e = ParseEndpoint("http://hub.internal:8080/some/path");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "hub.internal");
  EXPECT_EQ(e->port, 8080);
  e = ParseEndpoint("http://[::1]:9000");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->port, 9000);
  e = ParseEndpoint("http://h");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->port, 80);
}

// A loopback listener on a kernel-chosen port.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~Listener() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(EndpointTest, ReachableAndUnreachable) {
  Listener l;
  const std::string url = absl::StrCat("http://127.0.0.1:", l.port());
  EXPECT_TRUE(CheckEndpointReachable(url, absl::Seconds(2)).ok());
  l.Close();
  absl::Status s = CheckEndpointReachable(url, absl::Seconds(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find(absl::StrCat("hub endpoint ", url)),
            std::string::npos)
      << s.message();
  s = CheckEndpointReachable("http://no-such-host.invalid", absl::Seconds(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("no-such-host.invalid"), std::string::npos);
}

TEST_F(UploadTest, FindProgramAndRunPropagateTheExitCode) {
  EXPECT_EQ(FindProgram("huggingface-cli", dir_).status().code(),
            absl::StatusCode::kNotFound);
  // A stand-in uploader: records its arguments and HF_ENDPOINT, exits 7.
  const std::string log = JoinPath(dir_, "calls.log");
  Write("bin/huggingface-cli",
        absl::StrCat("#!/bin/sh\necho \"$HF_ENDPOINT|$*\" >> ", log,
                     "\nexit 7\n"));
  ASSERT_EQ(::chmod(JoinPath(dir_, "bin/huggingface-cli").c_str(), 0755), 0);
  auto program = FindProgram("huggingface-cli",
                             absl::StrCat("/nonexistent:", dir_, "/bin"));
  ASSERT_TRUE(program.ok()) << program.status();
  EXPECT_EQ(*program, JoinPath(dir_, "bin/huggingface-cli"));

  auto plan = PlanUpload("/srv/a", "a/b", "http://127.0.0.1:1");
  ASSERT_TRUE(plan.ok());
  auto code = RunUpload(*program, *plan);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 7);
  auto calls = ReadFile(log);
  ASSERT_TRUE(calls.ok());
  EXPECT_EQ(*calls,
            "http://127.0.0.1:1|upload a/b /srv/a . --repo-type model\n");
}

}  // namespace
}  // namespace roundhouse::client
