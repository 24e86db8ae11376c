#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cli.h"
#include "client/exit_codes.h"
#include "client/format.h"
#include "client/spec_merge.h"
#include "client/upload.h"
#include "common/files.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "roundhouse/v1/roundhouse.grpc.pb.h"

namespace roundhouse::client {
namespace {

namespace v1 = ::roundhouse::v1;
using json = nlohmann::json;

// ---------------------------------------------------------------------------
// Spec merging
// ---------------------------------------------------------------------------

TEST(MergeSpecTest, FlagsOverrideTheFileAndKeepTheRest) {
  json base = json::parse(R"({
    "model": "/models/a",
    "scheme": {"bits": 4, "group_size": 128, "iters": 200},
    "calibration": {"path": "old.jsonl", "field": "input_ids"},
    "export_formats": ["auto_round"],
    "labels": {"team": "search", "tier": "gold"}
  })");
  SpecOverrides o;
  o.model = "/models/b";
  o.bits = 2;
  o.sym = false;
  o.seed = 7;
  o.priority = 90;
  o.deadline_seconds = 3600;
  o.labels = {{"tier", "silver"}, {"run", "nightly"}};
  o.formats = {"auto_gptq", "auto_awq"};
  o.calibration_path = "new.jsonl";
  auto merged = MergeSpec(base, o);
  ASSERT_TRUE(merged.ok()) << merged.status();
  json want = json::parse(R"({
    "model": "/models/b",
    "scheme": {"bits": 2, "group_size": 128, "iters": 200, "sym": false,
               "seed": 7},
    "calibration": {"path": "new.jsonl", "field": "input_ids"},
    "export_formats": ["auto_gptq", "auto_awq"],
    "labels": {"team": "search", "tier": "silver", "run": "nightly"},
    "priority": 90,
    "deadline_seconds": 3600.0
  })");
  EXPECT_EQ(*merged, want) << merged->dump(2);
}

TEST(MergeSpecTest, FlagsAloneBuildASpecAndNothingIsInvented) {
  SpecOverrides o;
  o.model = "m";
  o.group_size = 32;
  o.iters = 0;
  o.nsamples = 8;
  o.seqlen = 64;
  o.batch_size = 4;
  auto merged = MergeSpec(json(), o);
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(*merged, json::parse(R"({"model":"m","scheme":{"group_size":32,
      "iters":0,"nsamples":8,"seqlen":64,"batch_size":4}})"));
  // No overrides: the file goes through untouched, unknown keys included
  // (the coordinator rejects them naming the key).
  json file = json::parse(R"({"model":"x","bogus_key":1})");
  EXPECT_EQ(*MergeSpec(file, SpecOverrides()), file);
}

TEST(MergeSpecTest, WrongShapesAreErrorsNamingTheKey) {
  EXPECT_FALSE(MergeSpec(json::array(), SpecOverrides()).ok());
  SpecOverrides o;
  o.bits = 4;
  auto bad = MergeSpec(json::parse(R"({"scheme": 4})"), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'scheme'"), std::string::npos);
  SpecOverrides l;
  l.labels = {{"a", "b"}};
  auto bad_labels = MergeSpec(json::parse(R"({"labels": ["a"]})"), l);
  ASSERT_FALSE(bad_labels.ok());
  EXPECT_NE(bad_labels.status().message().find("'labels'"), std::string::npos);
}

// ---------------------------------------------------------------------------
// Exit codes and formatting
// ---------------------------------------------------------------------------

TEST(ExitCodeTest, TerminalStatesHaveDistinctCodes) {
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_FAILED), 10);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_CANCELLED), 11);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_DEADLINE_EXCEEDED), 12);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_FAILED_QUALITY), 13);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_RUNNING), kExitRpc);
  EXPECT_TRUE(IsTerminal(v1::JOB_STATE_FAILED_QUALITY));
  EXPECT_FALSE(IsTerminal(v1::JOB_STATE_QUEUED));
}

TEST(FormatTest, Eta) {
  EXPECT_EQ(FormatEta(-1), "?");
  EXPECT_EQ(FormatEta(0), "0s");
  EXPECT_EQ(FormatEta(11.2), "12s");  // rounded up: never promise too early
  EXPECT_EQ(FormatEta(59), "59s");
  EXPECT_EQ(FormatEta(60), "1m00s");
  EXPECT_EQ(FormatEta(185), "3m05s");
  EXPECT_EQ(FormatEta(3600), "1h00m");
  EXPECT_EQ(FormatEta(7620), "2h07m");
  EXPECT_EQ(FormatEta(100 * 3600 + 60), "100h01m");
}

TEST(FormatTest, BytesAndStates) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.0 GiB");
  EXPECT_EQ(StateName(v1::JOB_STATE_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_EQ(*ParseState("running"), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(*ParseState("JOB_STATE_FAILED"), v1::JOB_STATE_FAILED);
  EXPECT_EQ(*ParseState("Failed_Quality"), v1::JOB_STATE_FAILED_QUALITY);
  auto bad = ParseState("sleeping");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'sleeping'"), std::string::npos);
  EXPECT_EQ(FormatTimestamp(0), "-");
  EXPECT_EQ(FormatTimestamp(1700000000), "2023-11-14 22:13:20");
}

v1::Job RunningJob() {
  v1::Job job;
  job.set_job_id("j-1");
  job.set_state(v1::JOB_STATE_RUNNING);
  v1::Progress* p = job.mutable_progress();
  p->set_stage("tuning");
  p->set_blocks_done(3);
  p->set_blocks_total(5);
  p->set_fraction(0.6);
  p->set_eta_seconds(11.5);
  v1::BlockProgress* b = p->add_blocks();
  b->set_block_index(2);
  b->set_loss_before(0.0123);
  b->set_loss_after(0.0081);
  b->set_seconds(4);
  return job;
}

TEST(FormatTest, ProgressLine) {
  EXPECT_EQ(FormatProgressLine(RunningJob()),
            "job j-1 state=RUNNING stage=tuning block 3/5 "
            "loss 0.0123->0.0081 eta 12s");
  v1::Job queued;
  queued.set_job_id("j-2");
  queued.set_state(v1::JOB_STATE_QUEUED);
  queued.mutable_progress()->set_stage("queued");
  queued.mutable_progress()->set_eta_seconds(-1);
  EXPECT_EQ(FormatProgressLine(queued), "job j-2 state=QUEUED stage=queued");
}

TEST(FormatTest, ProgressBar) {
  EXPECT_EQ(FormatProgressBar(RunningJob(), 10),
            "j-1 [######....]  60% tuning 3/5 loss 0.0123->0.0081 ETA 12s");
  v1::Job done = RunningJob();
  done.set_state(v1::JOB_STATE_SUCCEEDED);
  done.mutable_progress()->set_fraction(1);
  done.mutable_progress()->set_stage("done");
  done.mutable_progress()->set_blocks_done(5);
  EXPECT_EQ(FormatProgressBar(done, 4),
            "j-1 [####] 100% done 5/5 loss 0.0123->0.0081 SUCCEEDED");
}

TEST(FormatTest, OutcomeNamesArtifactOrClassifiedError) {
  v1::Job ok = RunningJob();
  ok.set_state(v1::JOB_STATE_SUCCEEDED);
  ok.mutable_artifact()->set_directory("/srv/a/j-1");
  EXPECT_EQ(FormatOutcome(ok), "job j-1 SUCCEEDED: artifact /srv/a/j-1");
  v1::Job oom = RunningJob();
  oom.set_state(v1::JOB_STATE_FAILED);
  oom.mutable_error()->set_failure_class(v1::FAILURE_CLASS_OUT_OF_MEMORY);
  oom.mutable_error()->set_message("CUDA out of memory");
  oom.mutable_error()->set_peak_memory_bytes(int64_t{3} << 30);
  EXPECT_EQ(FormatOutcome(oom),
            "job j-1 FAILED: OUT_OF_MEMORY: CUDA out of memory (peak 3.0 GiB)");
}

TEST(FormatTest, TableAndInspect) {
  v1::Job a = RunningJob();
  a.mutable_spec()->set_model("/models/llama");
  a.mutable_spec()->set_priority(50);
  a.set_attempt(1);
  a.set_created_unix_seconds(1700000000);
  const std::string table = FormatJobTable({a});
  std::vector<std::string> lines = absl::StrSplit(table, '\n');
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[0],
            "ID   STATE    PRI  ATTEMPT  STAGE   CREATED              MODEL");
  EXPECT_EQ(lines[1],
            "j-1  RUNNING  50   1        tuning  2023-11-14 22:13:20  "
            "/models/llama");

  a.mutable_artifact()->set_directory("/srv/a/j-1");
  v1::ArtifactFile* f = a.mutable_artifact()->add_files();
  f->set_path("model.safetensors");
  f->set_size_bytes(2048);
  f->set_sha256("abc123");
  a.mutable_spec()->mutable_scheme()->set_group_size(32);
  const std::string report = FormatInspect(a);
  EXPECT_NE(report.find("\"group_size\": 32"), std::string::npos) << report;
  EXPECT_NE(report.find("0.0123"), std::string::npos);
  EXPECT_NE(report.find("34.1%"), std::string::npos);  // loss reduction
  EXPECT_NE(report.find("model.safetensors"), std::string::npos);
  EXPECT_NE(report.find("2.0 KiB"), std::string::npos);
  EXPECT_NE(report.find("abc123"), std::string::npos);
}

// ---------------------------------------------------------------------------
// The CLI against an in-process fake JobService
// ---------------------------------------------------------------------------

class FakeJobService final : public v1::JobService::Service {
 public:
  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req,
                         v1::SubmitJobResponse* resp) override {
    absl::MutexLock lock(&mu_);
    submits_.push_back(*req);
    if (!submit_error_.ok()) return submit_error_;
    resp->mutable_job()->set_job_id("job-42");
    resp->mutable_job()->set_state(v1::JOB_STATE_QUEUED);
    resp->set_created(req->idempotency_key() != "seen");
    return grpc::Status::OK;
  }
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* req,
                      v1::Job* job) override {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(req->job_id());
    if (it == jobs_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("job '", req->job_id(), "' not found"));
    }
    *job = it->second;
    return grpc::Status::OK;
  }
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override {
    absl::MutexLock lock(&mu_);
    lists_.push_back(*req);
    // Two pages of one job each.
    if (req->page_token().empty()) {
      *resp->add_jobs() = jobs_.at("a");
      resp->set_next_page_token("p2");
    } else {
      *resp->add_jobs() = jobs_.at("b");
    }
    return grpc::Status::OK;
  }
  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* req,
                         v1::Job* job) override {
    absl::MutexLock lock(&mu_);
    *job = jobs_.at(req->job_id());
    job->set_cancel_requested(true);
    return grpc::Status::OK;
  }
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    std::vector<v1::JobEvent> events;
    bool break_stream = false;
    {
      absl::MutexLock lock(&mu_);
      events = watch_events_;
      if (broken_watches_ > 0) {
        --broken_watches_;
        break_stream = true;
      }
    }
    if (break_stream) {
      // Like a coordinator going away mid-stream: one event, then an error.
      v1::JobEvent e = events.at(1);
      e.mutable_job()->set_job_id(req->job_id());
      writer->Write(e);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server restarting");
    }
    for (v1::JobEvent e : events) {
      e.mutable_job()->set_job_id(req->job_id());
      writer->Write(e);
    }
    return grpc::Status::OK;
  }

  void SetJob(const v1::Job& job) {
    absl::MutexLock lock(&mu_);
    jobs_[job.job_id()] = job;
  }
  void SetSubmitError(grpc::Status s) {
    absl::MutexLock lock(&mu_);
    submit_error_ = s;
  }
  // Events streamed by WatchJob: queued, running (block 1/2), then `final`.
  void SetWatchOutcome(v1::JobState final_state) {
    absl::MutexLock lock(&mu_);
    watch_events_.clear();
    v1::JobEvent e;
    e.set_kind("snapshot");
    e.mutable_job()->set_state(v1::JOB_STATE_QUEUED);
    watch_events_.push_back(e);
    e.set_kind("block");
    e.mutable_job()->set_state(v1::JOB_STATE_RUNNING);
    v1::Progress* p = e.mutable_job()->mutable_progress();
    p->set_stage("tuning");
    p->set_blocks_done(1);
    p->set_blocks_total(2);
    p->set_fraction(0.5);
    p->set_eta_seconds(3);
    v1::BlockProgress* b = p->add_blocks();
    b->set_loss_before(0.5);
    b->set_loss_after(0.25);
    watch_events_.push_back(e);
    e.set_kind("state");
    e.mutable_job()->set_state(final_state);
    if (final_state == v1::JOB_STATE_SUCCEEDED) {
      e.mutable_job()->mutable_artifact()->set_directory("/srv/a/job-42");
    } else {
      e.mutable_job()->mutable_error()->set_failure_class(
          v1::FAILURE_CLASS_INTERNAL);
      e.mutable_job()->mutable_error()->set_message(
          "engine exited with signal 9");
    }
    watch_events_.push_back(e);
  }
  std::vector<v1::SubmitJobRequest> submits() {
    absl::MutexLock lock(&mu_);
    return submits_;
  }
  std::vector<v1::ListJobsRequest> lists() {
    absl::MutexLock lock(&mu_);
    return lists_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, v1::Job> jobs_;
  std::vector<v1::SubmitJobRequest> submits_;
  std::vector<v1::ListJobsRequest> lists_;
  std::vector<v1::JobEvent> watch_events_;
  grpc::Status submit_error_ = grpc::Status::OK;
  int broken_watches_ = 0;

 public:
  void BreakNextWatches(int n) {
    absl::MutexLock lock(&mu_);
    broken_watches_ = n;
  }
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    char tmpl[] = "/tmp/rh_cli_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
    RemoveTree(dir_).IgnoreError();
  }

  int Run(std::vector<std::string> args, bool tty = false) {
    out_.str("");
    err_.str("");
    CliIo io;
    io.out = &out_;
    io.err = &err_;
    io.stdout_is_tty = tty;
    io.default_coordinator = absl::StrCat("127.0.0.1:", port_);
    io.rpc_timeout = absl::Seconds(5);
    return RunCli(args, io);
  }

  FakeJobService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string dir_;
  std::ostringstream out_, err_;
};

TEST_F(CliTest, SubmitSendsTheMergedSpecAndPrintsTheId) {
  const std::string spec = JoinPath(dir_, "spec.json");
  ASSERT_TRUE(
      WriteFileAtomically(
          spec, R"({"model":"/m","scheme":{"bits":4},"labels":{"a":"1"}})")
          .ok());
  EXPECT_EQ(Run({"submit", spec, "--bits=8", "--asym", "--label", "b=2",
                 "--format", "auto_gptq", "--idempotency-key", "k1"}),
            0)
      << err_.str();
  EXPECT_EQ(out_.str(), "job-42\n");
  auto submits = service_.submits();
  ASSERT_EQ(submits.size(), 1u);
  EXPECT_EQ(submits[0].idempotency_key(), "k1");
  EXPECT_EQ(json::parse(submits[0].spec_json()),
            json::parse(R"({"model":"/m","scheme":{"bits":8,"sym":false},
                "labels":{"a":"1","b":"2"},"export_formats":["auto_gptq"]})"));
}

TEST_F(CliTest, SubmitJsonAndDuplicateKey) {
  EXPECT_EQ(
      Run({"submit", "--model", "/m", "--json", "--idempotency-key", "seen"}),
      0);
  json job = json::parse(out_.str());
  EXPECT_EQ(job["job_id"], "job-42");
  EXPECT_EQ(job["state"], "JOB_STATE_QUEUED");
  EXPECT_NE(err_.str().find("already exists"), std::string::npos);
}

TEST_F(CliTest, UsageErrorsExitTwoNamingTheProblem) {
  EXPECT_EQ(Run({"submit", "--bits", "four", "--model", "m"}), kExitUsage);
  EXPECT_NE(err_.str().find("--bits"), std::string::npos);
  EXPECT_EQ(Run({"submit", "--model", "m", "--sym", "--asym"}), kExitUsage);
  EXPECT_EQ(Run({"submit", "--model", "m", "--label", "novalue"}), kExitUsage);
  EXPECT_NE(err_.str().find("--label"), std::string::npos);
  EXPECT_EQ(Run({"submit", JoinPath(dir_, "missing.json")}), kExitUsage);
  EXPECT_NE(err_.str().find("missing.json"), std::string::npos);
  const std::string bad = JoinPath(dir_, "bad.json");
  ASSERT_TRUE(WriteFileAtomically(bad, "{\"model\": ").ok());
  EXPECT_EQ(Run({"submit", bad}), kExitUsage);
  EXPECT_NE(err_.str().find("bad.json"), std::string::npos);
  EXPECT_EQ(Run({"submit"}), kExitUsage);
  EXPECT_EQ(Run({"frobnicate"}), kExitUsage);
  EXPECT_EQ(Run({"get"}), kExitUsage);
  EXPECT_EQ(Run({"list", "--state", "sleeping"}), kExitUsage);
  EXPECT_EQ(Run({"watch", "j", "--bogus"}), kExitUsage);
  EXPECT_NE(err_.str().find("--bogus"), std::string::npos);
  EXPECT_TRUE(service_.submits().empty());
  EXPECT_EQ(Run({"--help"}), 0);
  EXPECT_NE(out_.str().find("13  job FAILED_QUALITY"), std::string::npos);
}

TEST_F(CliTest, ServerValidationErrorIsShownWithExitThree) {
  service_.SetSubmitError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "unknown key 'bitz' in scheme"));
  EXPECT_EQ(Run({"submit", "--model", "/m"}), kExitRpc);
  EXPECT_NE(err_.str().find("INVALID_ARGUMENT: unknown key 'bitz' in scheme"),
            std::string::npos)
      << err_.str();
}

TEST_F(CliTest, UnreachableCoordinatorExitsThree) {
  // A port nobody listens on: bind-and-close a server to learn one.
  int dead_port = 0;
  {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                       &dead_port);
    FakeJobService unused;
    b.RegisterService(&unused);
    auto s = b.BuildAndStart();
    s->Shutdown(absl::ToChronoTime(absl::Now()));
  }
  EXPECT_EQ(
      Run({"get", "j", "--coordinator", absl::StrCat("127.0.0.1:", dead_port)}),
      kExitRpc);
  EXPECT_NE(err_.str().find("UNAVAILABLE"), std::string::npos) << err_.str();
  EXPECT_NE(err_.str().find("is the coordinator running"), std::string::npos);
  EXPECT_EQ(Run({"watch", "j", "--coordinator",
                 absl::StrCat("127.0.0.1:", dead_port)}),
            kExitRpc);
}

struct WaitCase {
  v1::JobState state;
  int exit_code;
};

class CliWaitTest : public CliTest,
                    public ::testing::WithParamInterface<WaitCase> {};

TEST_P(CliWaitTest, SubmitWaitExitsWithTheJobsState) {
  service_.SetWatchOutcome(GetParam().state);
  EXPECT_EQ(Run({"submit", "--model", "/m", "--wait"}), GetParam().exit_code);
  std::vector<std::string> lines =
      absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 4u) << out_.str();
  EXPECT_EQ(lines[0], "job-42");
  EXPECT_EQ(lines[1], "job job-42 state=QUEUED");
  EXPECT_EQ(lines[2],
            "job job-42 state=RUNNING stage=tuning block 1/2 "
            "loss 0.5->0.25 eta 3s");
  if (GetParam().state == v1::JOB_STATE_SUCCEEDED) {
    // The outcome, then the artifact's files and the upload hint.
    ASSERT_EQ(lines.size(), 7u) << out_.str();
    EXPECT_EQ(lines[4], "job job-42 SUCCEEDED: artifact /srv/a/job-42");
    EXPECT_EQ(lines[5], "artifact:  /srv/a/job-42 (0 files, 0 B)");
    EXPECT_EQ(lines[6],
              "upload:    roundhouse upload --job job-42 --repo ORG/NAME");
  } else {
    EXPECT_NE(err_.str().find("INTERNAL: engine exited with signal 9"),
              std::string::npos)
        << err_.str();
  }
}

INSTANTIATE_TEST_SUITE_P(
    States, CliWaitTest,
    ::testing::Values(WaitCase{v1::JOB_STATE_SUCCEEDED, 0},
                      WaitCase{v1::JOB_STATE_FAILED, 10},
                      WaitCase{v1::JOB_STATE_CANCELLED, 11},
                      WaitCase{v1::JOB_STATE_DEADLINE_EXCEEDED, 12},
                      WaitCase{v1::JOB_STATE_FAILED_QUALITY, 13}));

TEST_F(CliTest, WatchJsonPrintsOneEventPerLine) {
  service_.SetWatchOutcome(v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Run({"watch", "job-7", "--json"}), 0);
  std::vector<std::string> lines =
      absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << out_.str();
  EXPECT_EQ(json::parse(lines[0])["kind"], "snapshot");
  json block = json::parse(lines[1]);
  EXPECT_EQ(block["job"]["job_id"], "job-7");
  EXPECT_EQ(block["job"]["progress"]["blocks_done"], 1);
  EXPECT_EQ(json::parse(lines[2])["job"]["state"], "JOB_STATE_SUCCEEDED");
}

TEST_F(CliTest, WatchOnATerminalRedrawsOneLine) {
  service_.SetWatchOutcome(v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Run({"watch", "job-7"}, /*tty=*/true), 0);
  const std::string out = out_.str();
  // Three redraws of the same line, then the outcome on its own line.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\r'), 3);
  EXPECT_NE(out.find("\rjob-7 [###############...............]  50% tuning "
                     "1/2 loss 0.5->0.25 ETA 3s\x1b[K"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("\njob job-7 SUCCEEDED: artifact /srv/a/job-42\n"),
            std::string::npos)
      << out;
}

TEST_F(CliTest, WatchReconnectsAfterTheStreamBreaks) {
  service_.SetWatchOutcome(v1::JOB_STATE_SUCCEEDED);
  service_.BreakNextWatches(1);
  EXPECT_EQ(Run({"watch", "job-7"}), 0) << err_.str();
  EXPECT_NE(err_.str().find("reconnecting"), std::string::npos);
  EXPECT_NE(out_.str().find("SUCCEEDED: artifact /srv/a/job-42"),
            std::string::npos);
}

TEST_F(CliTest, GetInspectCancelAndNotFound) {
  v1::Job a;
  a.set_job_id("a");
  a.set_state(v1::JOB_STATE_RUNNING);
  a.mutable_spec()->set_model("/models/x");
  v1::BlockProgress* b = a.mutable_progress()->add_blocks();
  b->set_loss_before(0.2);
  b->set_loss_after(0.1);
  service_.SetJob(a);
  EXPECT_EQ(Run({"get", "a"}), 0);
  EXPECT_NE(out_.str().find("state:     RUNNING"), std::string::npos)
      << out_.str();
  EXPECT_EQ(Run({"get", "a", "--json"}), 0);
  EXPECT_EQ(json::parse(out_.str())["spec"]["model"], "/models/x");
  EXPECT_EQ(Run({"inspect", "a"}), 0);
  EXPECT_NE(out_.str().find("50.0%"), std::string::npos) << out_.str();
  EXPECT_EQ(Run({"cancel", "a"}), 0);
  EXPECT_EQ(out_.str(), "job a: cancel requested (state RUNNING)\n");
  EXPECT_EQ(Run({"get", "zzz"}), kExitRpc);
  EXPECT_NE(err_.str().find("NOT_FOUND: job 'zzz' not found"),
            std::string::npos);
}

TEST_F(CliTest, ListFollowsPagesWithAllAndSendsFilters) {
  v1::Job a, b;
  a.set_job_id("a");
  a.set_state(v1::JOB_STATE_QUEUED);
  b.set_job_id("b");
  b.set_state(v1::JOB_STATE_SUCCEEDED);
  service_.SetJob(a);
  service_.SetJob(b);
  EXPECT_EQ(Run({"list", "--state", "queued", "--state=succeeded", "--label",
                 "team=search", "--page-size", "1"}),
            0);
  EXPECT_NE(out_.str().find("\na "), std::string::npos);
  EXPECT_EQ(out_.str().find("\nb "), std::string::npos);
  EXPECT_NE(err_.str().find("--page-token p2"), std::string::npos);
  auto lists = service_.lists();
  ASSERT_EQ(lists.size(), 1u);
  ASSERT_EQ(lists[0].states_size(), 2);
  EXPECT_EQ(lists[0].states(1), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(lists[0].label_selector().at("team"), "search");
  EXPECT_EQ(lists[0].page_size(), 1);

  EXPECT_EQ(Run({"list", "--all", "--json"}), 0);
  json all = json::parse(out_.str());
  ASSERT_EQ(all["jobs"].size(), 2u);
  EXPECT_EQ(all["jobs"][1]["job_id"], "b");
}

// ---------------------------------------------------------------------------
// upload
// ---------------------------------------------------------------------------

TEST(FormatTest, ArtifactFilesDeliverableFirstWithSizesAndUploadHint) {
  v1::Job job;
  job.set_job_id("j-1");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  v1::ArtifactManifest* a = job.mutable_artifact();
  a->set_directory("/srv/a/j-1");
  for (auto [path, size] : std::vector<std::pair<std::string, int64_t>>{
           {".gitattributes", 200},
           {"README.md", 4096},
           {"config.json", 700},
           {"model.safetensors", 3 << 20},
           {"quantization_config.json", 300},
           {"test_results.json", 2048}}) {
    v1::ArtifactFile* f = a->add_files();
    f->set_path(path);
    f->set_size_bytes(size);
  }
  const std::string out = FormatArtifactFiles(job);
  EXPECT_EQ(out.find("artifact:  /srv/a/j-1 (6 files, 3.0 MiB)\n"), 0u) << out;
  const size_t readme = out.find("  README.md "),
               tr = out.find("  test_results.json "),
               qc = out.find("  quantization_config.json "),
               ga = out.find("  .gitattributes "),
               model = out.find("  model.safetensors ");
  ASSERT_NE(model, std::string::npos) << out;
  EXPECT_LT(readme, tr);
  EXPECT_LT(tr, qc);
  EXPECT_LT(qc, ga);
  EXPECT_LT(ga, model);
  EXPECT_NE(out.find("4.0 KiB"), std::string::npos);
  EXPECT_NE(out.find("upload:    roundhouse upload --job j-1 --repo "
                     "ORG/NAME\n"),
            std::string::npos);
  // `get` shows them; a job without an artifact shows nothing.
  EXPECT_NE(FormatJobSummary(job).find("  README.md "), std::string::npos);
  EXPECT_EQ(FormatArtifactFiles(v1::Job()), "");
}

class UploadCliTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    art_ = JoinPath(dir_, "art");
    ASSERT_TRUE(MakeDirs(art_).ok());
    for (const char* f : {"README.md", "test_results.json", ".gitattributes",
                          "quantization_config.json", "model.safetensors"}) {
      ASSERT_TRUE(WriteFileAtomically(JoinPath(art_, f), "x").ok());
    }
    ASSERT_TRUE(
        WriteFileAtomically(JoinPath(art_, "manifest.json"),
                            R"({"formats":{"auto_round":{"directory":""}}})")
            .ok());
    const char* path = getenv("PATH");
    saved_path_ = path ? path : "";
  }
  void TearDown() override {
    setenv("PATH", saved_path_.c_str(), 1);
    CliTest::TearDown();
  }
  std::string Command(const std::string& prefix = "") {
    return absl::StrCat(prefix, "huggingface-cli upload a/b ", art_,
                        " . --repo-type model\n");
  }
  // A fake huggingface-cli as the only program on PATH; exits `code`.
  void FakeUploader(int code) {
    const std::string bin = JoinPath(dir_, "bin");
    const std::string exe = JoinPath(bin, "huggingface-cli");
    ASSERT_TRUE(MakeDirs(bin).ok());
    ASSERT_TRUE(
        WriteFileAtomically(
            exe, absl::StrCat("#!/bin/sh\necho \"$HF_ENDPOINT $*\" > ",
                              JoinPath(dir_, "call"), "\nexit ", code, "\n"))
            .ok());
    ASSERT_EQ(chmod(exe.c_str(), 0755), 0);
    setenv("PATH", bin.c_str(), 1);
  }
  std::string art_;
  std::string saved_path_;
};

TEST_F(UploadCliTest, PrintsTheCommandForADirectoryOrAJob) {
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b"}), 0) << err_.str();
  EXPECT_EQ(out_.str(), Command());
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b", "--endpoint",
                 "http://127.0.0.1:8080"}),
            0);
  EXPECT_EQ(out_.str(), Command("HF_ENDPOINT=http://127.0.0.1:8080 "));

  v1::Job job;
  job.set_job_id("ok");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.mutable_artifact()->set_directory(art_);
  service_.SetJob(job);
  EXPECT_EQ(Run({"upload", "--job", "ok", "--repo", "a/b"}), 0) << err_.str();
  EXPECT_EQ(out_.str(), Command());
}

TEST_F(UploadCliTest, RefusesJobsWithoutAGoodArtifact) {
  v1::Job job;
  job.set_job_id("bad");
  job.set_state(v1::JOB_STATE_FAILED_QUALITY);
  job.mutable_artifact()->set_directory(art_);
  service_.SetJob(job);
  EXPECT_EQ(Run({"upload", "--job", "bad", "--repo", "a/b"}),
            kExitFailedQuality);
  EXPECT_NE(err_.str().find("quality gate"), std::string::npos);
  job.set_job_id("running");
  job.set_state(v1::JOB_STATE_RUNNING);
  service_.SetJob(job);
  EXPECT_EQ(Run({"upload", "--job", "running", "--repo", "a/b"}),
            kExitLocalError);
  job.set_job_id("elsewhere");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.mutable_artifact()->set_directory(JoinPath(dir_, "not-here"));
  service_.SetJob(job);
  EXPECT_EQ(Run({"upload", "--job", "elsewhere", "--repo", "a/b"}),
            kExitLocalError);
  EXPECT_NE(err_.str().find("does not exist here"), std::string::npos);
  EXPECT_EQ(Run({"upload", "--job", "nope", "--repo", "a/b"}), kExitRpc);
}

TEST_F(UploadCliTest, IncompleteFolderNamesTheMissingFile) {
  ASSERT_TRUE(RemoveTree(JoinPath(art_, "README.md")).ok());
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b"}), kExitLocalError);
  EXPECT_NE(err_.str().find("missing README.md"), std::string::npos)
      << err_.str();
  EXPECT_EQ(out_.str(), "");
}

TEST_F(UploadCliTest, UsageErrors) {
  EXPECT_EQ(Run({"upload", "--dir", art_}), kExitUsage);
  EXPECT_NE(err_.str().find("--repo ORG/NAME"), std::string::npos);
  EXPECT_EQ(Run({"upload", "--repo", "a/b"}), kExitUsage);
  EXPECT_EQ(Run({"upload", "--dir", art_, "--job", "x", "--repo", "a/b"}),
            kExitUsage);
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "nope"}), kExitUsage);
  EXPECT_EQ(
      Run({"upload", "--dir", art_, "--repo", "a/b", "--endpoint", "ftp://x"}),
      kExitUsage);
  EXPECT_NE(err_.str().find("--endpoint 'ftp://x'"), std::string::npos);
}

TEST_F(UploadCliTest, ExecuteChecksTheEndpointThenTheProgramThenRunsIt) {
  // Unreachable endpoint: exit 3 naming it; the uploader is never looked up.
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b", "--execute",
                 "--endpoint", "http://127.0.0.1:1"}),
            kExitRpc);
  EXPECT_NE(err_.str().find("hub endpoint http://127.0.0.1:1"),
            std::string::npos)
      << err_.str();

  // A reachable endpoint: a loopback listener.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string endpoint =
      absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port));

  setenv("PATH", JoinPath(dir_, "empty").c_str(), 1);
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b", "--execute",
                 "--endpoint", endpoint}),
            kExitLocalError);
  EXPECT_NE(err_.str().find("'huggingface-cli' is not on PATH"),
            std::string::npos)
      << err_.str();

  FakeUploader(0);
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b", "--execute",
                 "--endpoint", endpoint}),
            0)
      << err_.str();
  auto call = ReadFile(JoinPath(dir_, "call"));
  ASSERT_TRUE(call.ok());
  EXPECT_EQ(*call, absl::StrCat(endpoint, " upload a/b ", art_,
                                " . --repo-type model\n"));
  FakeUploader(5);
  EXPECT_EQ(Run({"upload", "--dir", art_, "--repo", "a/b", "--execute",
                 "--endpoint", endpoint}),
            5);
  EXPECT_NE(err_.str().find("exited with 5"), std::string::npos);
  close(fd);
}

}  // namespace
}  // namespace roundhouse::client
