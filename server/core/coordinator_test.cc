#include "server/core/coordinator.h"

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <vector>

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gtest/gtest.h"

namespace roundhouse::server {
namespace {

using roundhouse::v1::Job;
using roundhouse::v1::JobState;

class Recorder : public CoordinatorListener {
 public:
  void OnJobSubmitted(int) override { ++submitted; }
  void OnRetry(RetryReason r) override { retries.push_back(r); }
  void OnLeaseExpired() override { ++expired; }
  void OnJobFinished(JobState s, double) override { finished.push_back(s); }
  int submitted = 0;
  int expired = 0;
  std::vector<RetryReason> retries;
  std::vector<JobState> finished;
};

// A temp dir with a model root holding model "m" (config.json, calib.jsonl).
class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_coord_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    root_ = dir_ + "/models";
    ASSERT_TRUE(MakeDirs(root_ + "/m").ok());
    std::ofstream(root_ + "/m/config.json") << "{}";
    std::ofstream(root_ + "/m/calib.jsonl") << "{\"text\":\"x\"}\n";
    Open();
  }
  void TearDown() override {
    coord_.reset();
    RemoveTree(dir_).IgnoreError();
  }
  void Open() {
    coord_.reset();
    CoordinatorOptions o;
    o.db_path = dir_ + "/db.sqlite";
    o.models.model_roots = {root_};
    o.clock = &clock_;
    o.tick_interval = absl::ZeroDuration();
    o.lease_timeout = absl::Seconds(15);
    o.aging_interval = absl::Seconds(60);
    o.max_uncounted_retries = 3;
    auto c = Coordinator::Create(o, &rec_);
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = std::move(*c);
  }
  Job Submit(const std::string& json, const std::string& key = "") {
    roundhouse::v1::SubmitJobRequest req;
    req.set_spec_json(json);
    req.set_idempotency_key(key);
    auto r = coord_->SubmitJob(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->job : Job();
  }
  std::string Spec(int priority, const std::string& extra = "") {
    return absl::StrCat("{\"model\":\"m\",\"priority\":", priority, extra,
                        "}");
  }
  void Register(const std::string& id, const std::string& device = "cuda",
                int64_t memory = 80LL << 30, int gpus = -1) {
    roundhouse::v1::RegisterWorkerRequest r;
    r.set_worker_id(id);
    r.set_device(device);
    r.set_memory_bytes(memory);
    r.set_gpu_count(gpus >= 0 ? gpus : device == "cuda" ? 1 : 0);
    ASSERT_TRUE(coord_->RegisterWorker(r).ok());
  }
  // A lease request of an agent that reports its free GPUs.
  roundhouse::v1::Lease LeaseGpus(const std::string& worker, int free_gpus,
                                  int64_t free = 0) {
    roundhouse::v1::LeaseJobRequest r;
    r.set_worker_id(worker);
    r.set_wait_seconds(0);
    r.set_free_memory_bytes(free);
    r.set_free_gpu_count(free_gpus);
    auto resp = coord_->LeaseJob(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->lease() : roundhouse::v1::Lease();
  }
  roundhouse::v1::Lease Lease(const std::string& worker, int64_t free = 0) {
    roundhouse::v1::LeaseJobRequest r;
    r.set_worker_id(worker);
    r.set_wait_seconds(0);
    r.set_free_memory_bytes(free);
    auto resp = coord_->LeaseJob(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->lease() : roundhouse::v1::Lease();
  }
  roundhouse::v1::LeaseRef Ref(const roundhouse::v1::Lease& l,
                               const std::string& worker) {
    roundhouse::v1::LeaseRef ref;
    ref.set_job_id(l.job_id());
    ref.set_attempt(l.attempt());
    ref.set_lease_epoch(l.lease_epoch());
    ref.set_worker_id(worker);
    return ref;
  }
  absl::Status Fail(const roundhouse::v1::Lease& l, const std::string& worker,
                    roundhouse::v1::FailureClass fc, int64_t peak = 0) {
    roundhouse::v1::FailJobRequest r;
    *r.mutable_lease() = Ref(l, worker);
    r.mutable_error()->set_failure_class(fc);
    r.mutable_error()->set_message("boom");
    r.mutable_error()->set_peak_memory_bytes(peak);
    return coord_->FailJob(r);
  }
  absl::Status Complete(const roundhouse::v1::Lease& l,
                        const std::string& worker) {
    roundhouse::v1::CompleteJobRequest r;
    *r.mutable_lease() = Ref(l, worker);
    r.mutable_artifact()->set_directory("/art/" + l.job_id());
    r.mutable_artifact()->set_manifest_json("{\"files\":[]}");
    return coord_->CompleteJob(r);
  }
  roundhouse::v1::LeaseAction Beat(const roundhouse::v1::Lease& l,
                                   const std::string& worker) {
    roundhouse::v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    *r.add_leases() = Ref(l, worker);
    auto resp = coord_->Heartbeat(r);
    EXPECT_TRUE(resp.ok());
    return resp->actions(0);
  }
  JobState StateOf(const std::string& id) { return coord_->GetJob(id)->state(); }

  std::string dir_, root_;
  FakeClock clock_;
  Recorder rec_;
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, SubmitIsDurableAndIdempotent) {
  Job a = Submit(Spec(10), "key-1");
  Job b = Submit(Spec(90), "key-1");
  EXPECT_EQ(a.job_id(), b.job_id());
  EXPECT_EQ(b.spec().priority(), 10);
  Job c = Submit(Spec(10), "key-2");
  EXPECT_NE(a.job_id(), c.job_id());
  EXPECT_EQ(coord_->GetJob(a.job_id())->state(),
            roundhouse::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(rec_.submitted, 2);
}

TEST_F(CoordinatorTest, ConcurrentSameKeyMakesOneJob) {
  std::vector<std::string> ids(16);
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      roundhouse::v1::SubmitJobRequest req;
      req.set_spec_json(Spec(50));
      req.set_idempotency_key("same");
      auto r = coord_->SubmitJob(req);
      ASSERT_TRUE(r.ok()) << r.status();
      ids[i] = r->job.job_id();
      if (r->created) ++created;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 1);
  for (const auto& id : ids) EXPECT_EQ(id, ids[0]);
  auto list = coord_->ListJobs({});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->jobs_size(), 1);
  // Also after a restart (one row in SQLite).
  Open();
  EXPECT_EQ(coord_->ListJobs({})->jobs_size(), 1);
  EXPECT_EQ(Submit(Spec(50), "same").job_id(), ids[0]);
}

TEST_F(CoordinatorTest, PriorityThenFifo) {
  Register("w");
  Job low1 = Submit(Spec(10));
  clock_.Advance(absl::Seconds(1));
  Job high = Submit(Spec(90));
  clock_.Advance(absl::Seconds(1));
  Job low2 = Submit(Spec(10));
  EXPECT_EQ(Lease("w").job_id(), high.job_id());
  EXPECT_EQ(Lease("w").job_id(), low1.job_id());
  EXPECT_EQ(Lease("w").job_id(), low2.job_id());
  EXPECT_FALSE(Lease("w").job_id().size());
}

TEST_F(CoordinatorTest, AgingLetsOldLowPriorityJobRun) {
  Register("w");
  Job old_low = Submit(Spec(10));
  // 50 points of aging at 60 s per point, plus one more point.
  clock_.Advance(absl::Seconds(60 * 51));
  Job new_high = Submit(Spec(60));
  EXPECT_EQ(Lease("w").job_id(), old_low.job_id());
  EXPECT_EQ(Lease("w").job_id(), new_high.job_id());
}

TEST_F(CoordinatorTest, NoAgingYetMeansPriorityWins) {
  Register("w");
  Job old_low = Submit(Spec(10));
  clock_.Advance(absl::Seconds(60 * 49));
  Job new_high = Submit(Spec(60));
  EXPECT_EQ(Lease("w").job_id(), new_high.job_id());
  EXPECT_EQ(Lease("w").job_id(), old_low.job_id());
}

TEST_F(CoordinatorTest, ResourceFit) {
  Register("cpu-w", "cpu", 8LL << 30);
  Register("gpu-w", "cuda", 80LL << 30);
  Job cuda = Submit(Spec(90, ",\"resources\":{\"device\":\"cuda\"}"));
  Job big = Submit(
      Spec(80, ",\"resources\":{\"min_memory_bytes\":\"40000000000\"}"));
  Job any = Submit(Spec(10));
  // The cpu worker skips the cuda job and the one needing 40 GB.
  EXPECT_EQ(Lease("cpu-w").job_id(), any.job_id());
  EXPECT_EQ(Lease("cpu-w").job_id(), "");
  // The gpu worker with too little free memory gets only the cuda job.
  EXPECT_EQ(Lease("gpu-w", 10LL << 30).job_id(), cuda.job_id());
  EXPECT_EQ(Lease("gpu-w", 10LL << 30).job_id(), "");
  EXPECT_EQ(Lease("gpu-w", 50LL << 30).job_id(), big.job_id());
}

TEST_F(CoordinatorTest, GpuCountPlacement) {
  Register("g2", "cuda", 80LL << 30, /*gpus=*/2);
  Job two = Submit(Spec(90, ",\"resources\":{\"device\":\"cuda\","
                            "\"gpu_count\":2}"));
  Job a = Submit(Spec(50, ",\"resources\":{\"device\":\"cuda\"}"));
  Job b = Submit(Spec(40, ",\"resources\":{\"device\":\"cuda\"}"));
  // One GPU free: the 2-GPU job (first in the queue) is skipped.
  EXPECT_EQ(LeaseGpus("g2", 1).job_id(), a.job_id());
  EXPECT_EQ(LeaseGpus("g2", 0).job_id(), "");
  EXPECT_EQ(StateOf(two.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  // Both GPUs free again: the 2-GPU job runs.
  EXPECT_EQ(LeaseGpus("g2", 2).job_id(), two.job_id());
  EXPECT_EQ(LeaseGpus("g2", 0).job_id(), "");
  EXPECT_EQ(LeaseGpus("g2", 1).job_id(), b.job_id());
}

TEST_F(CoordinatorTest, TwoSingleGpuJobsShareATwoGpuWorker) {
  Register("g2", "cuda", 80LL << 30, /*gpus=*/2);
  Job a = Submit(Spec(50, ",\"resources\":{\"device\":\"cuda\"}"));
  Job b = Submit(Spec(40, ",\"resources\":{\"device\":\"cuda\"}"));
  EXPECT_EQ(LeaseGpus("g2", 2).job_id(), a.job_id());
  EXPECT_EQ(LeaseGpus("g2", 1).job_id(), b.job_id());
  EXPECT_EQ(StateOf(a.job_id()), roundhouse::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(StateOf(b.job_id()), roundhouse::v1::JOB_STATE_RUNNING);
  // A request without free_gpu_count (one-job agents) means all registered
  // GPUs are free.
  Job c = Submit(Spec(30, ",\"resources\":{\"device\":\"cuda\","
                          "\"gpu_count\":2}"));
  EXPECT_EQ(Lease("g2").job_id(), c.job_id());
}

TEST_F(CoordinatorTest, UnregisteredWorkerCannotLease) {
  roundhouse::v1::LeaseJobRequest r;
  r.set_worker_id("ghost");
  EXPECT_EQ(coord_->LeaseJob(r).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoordinatorTest, LeaseExpiryRequeuesAndFencesOldEpoch) {
  Register("w1");
  Register("w2");
  Job job = Submit(Spec(50));
  auto l1 = Lease("w1");
  EXPECT_EQ(l1.attempt(), 1);
  EXPECT_EQ(l1.lease_epoch(), 1);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(l1, "w1"), roundhouse::v1::LEASE_ACTION_CONTINUE);
  clock_.Advance(absl::Seconds(10));
  coord_->Tick();  // renewed at t=10, expires at t=25
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_RUNNING);
  clock_.Advance(absl::Seconds(6));
  coord_->Tick();
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(rec_.expired, 1);
  ASSERT_EQ(rec_.retries.size(), 1u);
  EXPECT_EQ(rec_.retries[0], RetryReason::kWorkerLost);
  auto l2 = Lease("w2");
  EXPECT_EQ(l2.job_id(), job.job_id());
  EXPECT_EQ(l2.attempt(), 2);
  EXPECT_EQ(l2.lease_epoch(), 2);
  // The old worker is fenced everywhere.
  EXPECT_EQ(Beat(l1, "w1"), roundhouse::v1::LEASE_ACTION_ABANDON);
  absl::Status s = Complete(l1, "w1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("lease epoch 1"), std::string::npos) << s;
  EXPECT_NE(s.message().find("stale"), std::string::npos) << s;
  EXPECT_EQ(Fail(l1, "w1", roundhouse::v1::FAILURE_CLASS_INTERNAL).code(),
            absl::StatusCode::kFailedPrecondition);
  Job now = *coord_->GetJob(job.job_id());
  EXPECT_EQ(now.state(), roundhouse::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(now.worker_id(), "w2");
  EXPECT_EQ(now.retries_counted(), 0);
  EXPECT_TRUE(Complete(l2, "w2").ok());
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_SUCCEEDED);
}

TEST_F(CoordinatorTest, UncountedRetriesAreCapped) {
  Register("w");
  Job job = Submit(Spec(50));
  for (int i = 0; i < 3; ++i) {
    auto l = Lease("w");
    ASSERT_EQ(l.job_id(), job.job_id());
    EXPECT_TRUE(Fail(l, "w", roundhouse::v1::FAILURE_CLASS_PREEMPTED).ok());
    EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  }
  auto l = Lease("w");
  clock_.Advance(absl::Seconds(16));
  coord_->Tick();
  Job j = *coord_->GetJob(job.job_id());
  EXPECT_EQ(j.state(), roundhouse::v1::JOB_STATE_FAILED);
  EXPECT_EQ(j.error().failure_class(), roundhouse::v1::FAILURE_CLASS_WORKER_LOST);
  EXPECT_EQ(j.attempt(), 4);
  EXPECT_EQ(j.retries_counted(), 0);
}

TEST_F(CoordinatorTest, InvalidSpecFailsAtOnce) {
  Register("w");
  Job job = Submit(Spec(50));
  auto l = Lease("w");
  EXPECT_TRUE(Fail(l, "w", roundhouse::v1::FAILURE_CLASS_INVALID_SPEC).ok());
  Job j = *coord_->GetJob(job.job_id());
  EXPECT_EQ(j.state(), roundhouse::v1::JOB_STATE_FAILED);
  EXPECT_EQ(j.error().failure_class(),
            roundhouse::v1::FAILURE_CLASS_INVALID_SPEC);
  EXPECT_EQ(Lease("w").job_id(), "");
}

TEST_F(CoordinatorTest, InternalErrorsUseRetryBudget) {
  Register("w");
  Job job = Submit(Spec(50, ",\"max_retries\":1"));
  auto l1 = Lease("w");
  EXPECT_TRUE(Fail(l1, "w", roundhouse::v1::FAILURE_CLASS_INTERNAL).ok());
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  auto l2 = Lease("w");
  EXPECT_TRUE(Fail(l2, "w", roundhouse::v1::FAILURE_CLASS_INTERNAL).ok());
  Job j = *coord_->GetJob(job.job_id());
  EXPECT_EQ(j.state(), roundhouse::v1::JOB_STATE_FAILED);
  EXPECT_EQ(j.retries_counted(), 1);
  EXPECT_EQ(j.attempt(), 2);
}

TEST_F(CoordinatorTest, OutOfMemoryFailsWithPeak) {
  Register("w");
  Job job = Submit(Spec(50));
  auto l = Lease("w");
  EXPECT_TRUE(
      Fail(l, "w", roundhouse::v1::FAILURE_CLASS_OUT_OF_MEMORY, 12345).ok());
  Job j = *coord_->GetJob(job.job_id());
  EXPECT_EQ(j.state(), roundhouse::v1::JOB_STATE_FAILED);
  EXPECT_EQ(j.error().failure_class(),
            roundhouse::v1::FAILURE_CLASS_OUT_OF_MEMORY);
  EXPECT_EQ(j.error().peak_memory_bytes(), 12345);
}

TEST_F(CoordinatorTest, OutOfMemoryRetriesOnceInLowMemoryMode) {
  Register("w");
  Job job = Submit(Spec(50, ",\"allow_low_memory_retry\":true"));
  auto l1 = Lease("w");
  EXPECT_FALSE(l1.low_memory());
  EXPECT_TRUE(Fail(l1, "w", roundhouse::v1::FAILURE_CLASS_OUT_OF_MEMORY).ok());
  auto l2 = Lease("w");
  EXPECT_EQ(l2.job_id(), job.job_id());
  EXPECT_TRUE(l2.low_memory());
  EXPECT_TRUE(Fail(l2, "w", roundhouse::v1::FAILURE_CLASS_OUT_OF_MEMORY).ok());
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_FAILED);
  ASSERT_EQ(rec_.retries.size(), 1u);
  EXPECT_EQ(rec_.retries[0], RetryReason::kOom);
}

TEST_F(CoordinatorTest, QualityFailureKeepsArtifact) {
  Register("w");
  Job job = Submit(Spec(50));
  auto l = Lease("w");
  roundhouse::v1::CompleteJobRequest r;
  *r.mutable_lease() = Ref(l, "w");
  r.mutable_artifact()->set_directory("/art/x");
  r.mutable_quality_failure()->set_message("cosine 0.80 < 0.95");
  ASSERT_TRUE(coord_->CompleteJob(r).ok());
  Job j = *coord_->GetJob(job.job_id());
  EXPECT_EQ(j.state(), roundhouse::v1::JOB_STATE_FAILED_QUALITY);
  EXPECT_EQ(j.artifact().directory(), "/art/x");
  EXPECT_EQ(j.error().failure_class(),
            roundhouse::v1::FAILURE_CLASS_QUALITY_GATE);
}

TEST_F(CoordinatorTest, DeadlineWhileQueued) {
  Job job = Submit(Spec(50, ",\"deadline_seconds\":30"));
  clock_.Advance(absl::Seconds(29));
  coord_->Tick();
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  clock_.Advance(absl::Seconds(2));
  coord_->Tick();
  EXPECT_EQ(StateOf(job.job_id()),
            roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED);
  Register("w");
  EXPECT_EQ(Lease("w").job_id(), "");
}

TEST_F(CoordinatorTest, DeadlineWhileRunningAbandonsWorker) {
  Register("w");
  Job job = Submit(Spec(50, ",\"deadline_seconds\":30"));
  auto l = Lease("w");
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(l, "w"), roundhouse::v1::LEASE_ACTION_CONTINUE);
  clock_.Advance(absl::Seconds(21));
  coord_->Tick();
  EXPECT_EQ(StateOf(job.job_id()),
            roundhouse::v1::JOB_STATE_DEADLINE_EXCEEDED);
  EXPECT_EQ(Beat(l, "w"), roundhouse::v1::LEASE_ACTION_ABANDON);
  EXPECT_EQ(Complete(l, "w").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoordinatorTest, CancelQueuedAndRunning) {
  Register("w");
  Job running = Submit(Spec(90));
  Job queued = Submit(Spec(10));
  auto l = Lease("w");
  ASSERT_EQ(l.job_id(), running.job_id());
  EXPECT_EQ(coord_->CancelJob(queued.job_id())->state(),
            roundhouse::v1::JOB_STATE_CANCELLED);
  Job c = *coord_->CancelJob(running.job_id());
  EXPECT_EQ(c.state(), roundhouse::v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(c.cancel_requested());
  EXPECT_EQ(Beat(l, "w"), roundhouse::v1::LEASE_ACTION_CANCEL);
  EXPECT_TRUE(Fail(l, "w", roundhouse::v1::FAILURE_CLASS_CANCELLED).ok());
  EXPECT_EQ(StateOf(running.job_id()), roundhouse::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Lease("w").job_id(), "");
}

TEST_F(CoordinatorTest, CancelOfRunningJobWhoseWorkerIsGone) {
  Register("w");
  Job job = Submit(Spec(50));
  auto l = Lease("w");
  ASSERT_TRUE(coord_->CancelJob(job.job_id()).ok());
  clock_.Advance(absl::Seconds(16));
  coord_->Tick();
  EXPECT_EQ(StateOf(job.job_id()), roundhouse::v1::JOB_STATE_CANCELLED);
}

TEST_F(CoordinatorTest, RestartKeepsQueuedRunningAndTerminalJobs) {
  Register("w");
  Job done = Submit(Spec(90));
  Job running = Submit(Spec(80));
  Job queued = Submit(Spec(10, ",\"labels\":{\"team\":\"a\"}"));
  auto l1 = Lease("w");
  ASSERT_TRUE(Complete(l1, "w").ok());
  auto l2 = Lease("w");
  ASSERT_EQ(l2.job_id(), running.job_id());
  Open();  // restart
  Job d = *coord_->GetJob(done.job_id());
  EXPECT_EQ(d.state(), roundhouse::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(d.artifact().directory(), "/art/" + done.job_id());
  EXPECT_EQ(d.artifact().manifest_json(), "{\"files\":[]}");
  Job r = *coord_->GetJob(running.job_id());
  EXPECT_EQ(r.state(), roundhouse::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(r.lease_epoch(), l2.lease_epoch());
  // The running worker may heartbeat on; the queued job is still leasable.
  EXPECT_EQ(Beat(l2, "w"), roundhouse::v1::LEASE_ACTION_CONTINUE);
  auto l3 = Lease("w");
  EXPECT_EQ(l3.job_id(), queued.job_id());
  EXPECT_EQ(coord_->GetJob(queued.job_id())->spec().labels().at("team"), "a");
  // A running job whose worker never comes back is requeued after a lease.
  clock_.Advance(absl::Seconds(16));
  coord_->Tick();
  EXPECT_EQ(StateOf(running.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
}

TEST_F(CoordinatorTest, ListFiltersAndPaginates) {
  for (int i = 0; i < 5; ++i) {
    Submit(Spec(50, i % 2 ? ",\"labels\":{\"team\":\"a\"}" : ""));
  }
  roundhouse::v1::ListJobsRequest req;
  (*req.mutable_label_selector())["team"] = "a";
  EXPECT_EQ(coord_->ListJobs(req)->jobs_size(), 2);
  roundhouse::v1::ListJobsRequest page;
  page.set_page_size(2);
  int seen = 0;
  while (true) {
    auto resp = coord_->ListJobs(page);
    ASSERT_TRUE(resp.ok());
    seen += resp->jobs_size();
    if (resp->next_page_token().empty()) break;
    page.set_page_token(resp->next_page_token());
  }
  EXPECT_EQ(seen, 5);
  roundhouse::v1::ListJobsRequest by_state;
  by_state.add_states(roundhouse::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(coord_->ListJobs(by_state)->jobs_size(), 0);
  roundhouse::v1::ListJobsRequest bad;
  bad.set_page_token("xyz");
  EXPECT_EQ(coord_->ListJobs(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, WatchSeesSnapshotThenChanges) {
  Register("w");
  Job job = Submit(Spec(50));
  std::vector<std::pair<JobState, std::string>> events;
  auto id = coord_->Watch(job.job_id(), [&](const Job& j, const std::string& k) {
    events.emplace_back(j.state(), k);
  });
  ASSERT_TRUE(id.ok());
  auto l = Lease("w");
  roundhouse::v1::HeartbeatRequest hb;
  hb.set_worker_id("w");
  *hb.add_leases() = Ref(l, "w");
  auto* p = hb.add_progress();
  p->set_stage("tuning");
  p->set_blocks_done(1);
  p->set_blocks_total(2);
  auto* b = p->add_blocks();
  b->set_block_index(0);
  b->set_seconds(4);
  ASSERT_TRUE(coord_->Heartbeat(hb).ok());
  // No ETA from the worker: estimated from the block time (1 left x 4 s).
  EXPECT_DOUBLE_EQ(coord_->GetJob(job.job_id())->progress().eta_seconds(), 4);
  ASSERT_TRUE(Complete(l, "w").ok());
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].second, "snapshot");
  EXPECT_EQ(events[1].first, roundhouse::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(events[2].second, "block");
  EXPECT_EQ(events[3].first, roundhouse::v1::JOB_STATE_SUCCEEDED);
  // A late watcher of a terminal job gets only the snapshot.
  int late = 0;
  EXPECT_EQ(*coord_->Watch(job.job_id(),
                           [&](const Job&, const std::string&) { ++late; }),
            0);
  EXPECT_EQ(late, 1);
}

TEST_F(CoordinatorTest, MissingModelRootIsRejectedAtStart) {
  CoordinatorOptions o;
  o.db_path = dir_ + "/other.sqlite";
  o.models.model_roots = {dir_ + "/no-such-root"};
  o.tick_interval = absl::ZeroDuration();
  auto c = Coordinator::Create(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("no-such-root"), std::string::npos);
}

TEST_F(CoordinatorTest, LeaseWaitIsWokenBySubmit) {
  Register("w");
  std::string got;
  std::thread t([&] {
    roundhouse::v1::LeaseJobRequest r;
    r.set_worker_id("w");
    r.set_wait_seconds(10);
    auto resp = coord_->LeaseJob(r);
    if (resp.ok()) got = resp->lease().job_id();
  });
  absl::SleepFor(absl::Milliseconds(50));
  Job job = Submit(Spec(50));
  t.join();
  EXPECT_EQ(got, job.job_id());
}

TEST_F(CoordinatorTest, StatsCountQueueAndWorkers) {
  Register("w1");
  Register("w2");
  Submit(Spec(10));
  Submit(Spec(10));
  Submit(Spec(90));
  Lease("w1");
  CoordinatorStats s = coord_->GetStats();
  EXPECT_EQ(s.queued_by_priority[10], 2);
  EXPECT_EQ(s.queued_by_priority.count(90), 0u);
  EXPECT_EQ(s.running, 1);
  EXPECT_EQ(s.workers_busy, 1);
  EXPECT_EQ(s.workers_idle, 1);
  clock_.Advance(absl::Seconds(16));
  s = coord_->GetStats();
  EXPECT_EQ(s.workers_lost, 2);
}

// A cuda job without min_memory_bytes gets the admission estimate from the
// model's config.json; placement compares it with the worker's free memory.
TEST_F(CoordinatorTest, MemoryEstimateIsStoredAndUsedForPlacement) {
  ASSERT_TRUE(MakeDirs(root_ + "/big").ok());
  std::ofstream(root_ + "/big/config.json")
      << R"({"model_type":"llama","hidden_size":2048,
             "intermediate_size":8192,"num_hidden_layers":4,
             "num_attention_heads":16,"num_key_value_heads":4,
             "vocab_size":32000,"torch_dtype":"bfloat16"})";
  std::ofstream(root_ + "/big/calib.jsonl") << "{\"text\":\"x\"}\n";
  Register("gpu", "cuda", 80LL << 30);
  const std::string spec =
      R"({"model":"big","priority":50,"resources":{"device":"cuda"},
          "scheme":{"nsamples":64,"seqlen":1024,"batch_size":4}})";
  Job j = Submit(spec);
  auto expected = EstimateJobMemory(j.spec(), root_ + "/big");
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_GT(*expected, int64_t{1} << 30);
  EXPECT_EQ(j.estimated_memory_bytes(), *expected);
  EXPECT_EQ(j.memory_estimate_note(), "");
  // Persisted.
  Open();
  EXPECT_EQ(coord_->GetJob(j.job_id())->estimated_memory_bytes(), *expected);
  Register("gpu", "cuda", 80LL << 30);
  // Too little free memory: the job stays queued.
  EXPECT_EQ(Lease("gpu", *expected - 1).job_id(), "");
  EXPECT_EQ(StateOf(j.job_id()), roundhouse::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Lease("gpu", *expected).job_id(), j.job_id());
}

TEST_F(CoordinatorTest, NoEstimateWithoutReadableConfigOrForCpuJobs) {
  // Model "m" has an empty config.json: no estimate, and why.
  Job cuda = Submit(Spec(50, ",\"resources\":{\"device\":\"cuda\"}"));
  EXPECT_EQ(cuda.estimated_memory_bytes(), 0);
  EXPECT_NE(cuda.memory_estimate_note().find("config.json"),
            std::string::npos)
      << cuda.memory_estimate_note();
  Job cpu = Submit(Spec(50, ",\"resources\":{\"device\":\"cpu\"}"));
  EXPECT_EQ(cpu.estimated_memory_bytes(), 0);
  EXPECT_EQ(cpu.memory_estimate_note(), "");
  // An explicit requirement is used as is.
  Job given = Submit(Spec(50, ",\"resources\":{\"device\":\"cuda\","
                              "\"min_memory_bytes\":\"1000\"}"));
  EXPECT_EQ(given.estimated_memory_bytes(), 0);
  EXPECT_EQ(given.memory_estimate_note(), "");
}

// A database written before the estimate columns existed is migrated at
// Open and keeps its jobs.
TEST(JobStoreTest, AddsEstimateColumnsToAnOldDatabase) {
  char tmpl[] = "/tmp/rh_store_test_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/old.sqlite";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, R"sql(
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,
  idempotency_key TEXT UNIQUE, state INTEGER NOT NULL,
  priority INTEGER NOT NULL, created_unix_seconds REAL NOT NULL,
  started_unix_seconds REAL NOT NULL DEFAULT 0,
  finished_unix_seconds REAL NOT NULL DEFAULT 0,
  attempt INTEGER NOT NULL DEFAULT 0, lease_epoch INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT NOT NULL DEFAULT '',
  retries_counted INTEGER NOT NULL DEFAULT 0,
  uncounted_retries INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  low_memory INTEGER NOT NULL DEFAULT 0,
  low_memory_retry_used INTEGER NOT NULL DEFAULT 0,
  model_path TEXT NOT NULL, labels BLOB, spec BLOB NOT NULL, progress BLOB,
  error BLOB, artifact BLOB);
INSERT INTO jobs (job_id, state, priority, created_unix_seconds, model_path,
  spec) VALUES ('job-old', 1, 50, 1.0, '/m', x'');
)sql",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    auto jobs = (*store)->LoadJobs();
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].job.estimated_memory_bytes(), 0);
    StoredJob j = (*jobs)[0];
    j.job.set_estimated_memory_bytes(12345);
    j.job.set_memory_estimate_note("note");
    ASSERT_TRUE((*store)->UpdateJob(j)->Wait().ok());
  }
  auto store = JobStore::Open(path);  // already migrated: opens again
  ASSERT_TRUE(store.ok()) << store.status();
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_EQ((*jobs)[0].job.estimated_memory_bytes(), 12345);
  EXPECT_EQ((*jobs)[0].job.memory_estimate_note(), "note");
  store->reset();
  RemoveTree(tmpl).IgnoreError();
}

}  // namespace
}  // namespace roundhouse::server
