#include "worker/agent/engine_events.h"

#include <stdlib.h>

#include <string>

#include "common/files.h"
#include "common/sha256.h"
#include "gtest/gtest.h"

namespace roundhouse::agent {
namespace {

TEST(ParseEngineEventTest, DecodesEveryKnownEvent) {
  auto stage = ParseEngineEvent(R"({"event":"stage","stage":"tuning"})");
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->kind, EngineEvent::Kind::kStage);
  EXPECT_EQ(stage->stage, "tuning");

  auto plan = ParseEngineEvent(
      R"({"event":"plan","blocks_total":8,"resumed_blocks":3})");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->blocks_total, 8);
  EXPECT_EQ(plan->resumed_blocks, 3);

  auto block = ParseEngineEvent(
      R"({"event":"block","block_index":2,"blocks_total":8,)"
      R"("loss_before":0.5,"loss_after":0.125,"seconds":1.5})");
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->kind, EngineEvent::Kind::kBlock);
  EXPECT_EQ(block->block_index, 2);
  EXPECT_DOUBLE_EQ(block->loss_after, 0.125);
  EXPECT_DOUBLE_EQ(block->seconds, 1.5);

  auto error = ParseEngineEvent(
      R"({"event":"error","class":"out_of_memory","message":"boom",)"
      R"("peak_memory_bytes":123456789012})");
  ASSERT_TRUE(error.ok());
  EXPECT_EQ(error->error_class, "out_of_memory");
  EXPECT_EQ(error->peak_memory_bytes, 123456789012);

  auto done = ParseEngineEvent(
      R"({"event":"done","artifact_dir":"/a/b","manifest":{"x":1}})");
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->artifact_dir, "/a/b");
  EXPECT_EQ(done->manifest["x"], 1);

  auto future = ParseEngineEvent(R"({"event":"something_new"})");
  ASSERT_TRUE(future.ok());
  EXPECT_EQ(future->kind, EngineEvent::Kind::kOther);
}

TEST(ParseEngineEventTest, RejectsMalformedLinesNamingTheField) {
  EXPECT_FALSE(ParseEngineEvent("loading model...").ok());
  EXPECT_FALSE(ParseEngineEvent("[1,2]").ok());
  auto no_event = ParseEngineEvent(R"({"stage":"x"})");
  ASSERT_FALSE(no_event.ok());
  EXPECT_NE(no_event.status().message().find("'event'"), std::string::npos);
  auto bad_type =
      ParseEngineEvent(R"({"event":"block","block_index":"three"})");
  ASSERT_FALSE(bad_type.ok());
  EXPECT_NE(bad_type.status().message().find("'block_index'"),
            std::string::npos);
  EXPECT_FALSE(ParseEngineEvent(R"({"event":"block","block_index":-1})").ok());
  EXPECT_FALSE(ParseEngineEvent(R"({"event":"done","manifest":[1]})").ok());
}

EngineEvent Block(int index, int total, double seconds) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::kBlock;
  e.block_index = index;
  e.blocks_total = total;
  e.loss_before = 1.0 / (index + 1);
  e.loss_after = 0.5 / (index + 1);
  e.seconds = seconds;
  return e;
}

EngineEvent Stage(const std::string& s) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::kStage;
  e.stage = s;
  return e;
}

TEST(ProgressTrackerTest, EtaIsMeanBlockTimeTimesRemainingBlocks) {
  ProgressTracker t;
  EXPECT_EQ(t.Snapshot().stage(), "loading");
  EXPECT_EQ(t.Snapshot().eta_seconds(), -1);
  t.Apply(Stage("tuning"));
  EngineEvent plan;
  plan.kind = EngineEvent::Kind::kPlan;
  plan.blocks_total = 10;
  plan.resumed_blocks = 4;
  t.Apply(plan);
  auto p = t.Snapshot();
  EXPECT_EQ(p.blocks_done(), 4);
  EXPECT_DOUBLE_EQ(p.fraction(), 0.4);
  EXPECT_EQ(p.eta_seconds(), -1);  // no block timed in this run yet

  t.Apply(Block(4, 10, 2.0));
  t.Apply(Block(5, 10, 4.0));
  p = t.Snapshot();
  EXPECT_EQ(p.blocks_done(), 6);
  EXPECT_EQ(p.blocks_total(), 10);
  EXPECT_DOUBLE_EQ(p.fraction(), 0.6);
  // Resumed blocks cost nothing: mean is (2 + 4) / 2 over this run's blocks.
  EXPECT_DOUBLE_EQ(p.eta_seconds(), 3.0 * 4);
  ASSERT_EQ(p.blocks_size(), 2);
  EXPECT_EQ(p.blocks(1).block_index(), 5);
  EXPECT_DOUBLE_EQ(p.blocks(1).seconds(), 4.0);

  t.Apply(Stage("export"));
  EXPECT_EQ(t.Snapshot().eta_seconds(), -1);
  EngineEvent done;
  done.kind = EngineEvent::Kind::kDone;
  done.artifact_dir = "/x";
  t.Apply(done);
  p = t.Snapshot();
  EXPECT_EQ(p.stage(), "done");
  EXPECT_DOUBLE_EQ(p.fraction(), 1.0);
  EXPECT_EQ(p.eta_seconds(), 0);
  EXPECT_TRUE(t.has_done());
  EXPECT_FALSE(t.has_error());
}

class ManifestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_manifest_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(MakeDirs(JoinPath(dir_, "sub")).ok());
    ASSERT_TRUE(WriteFileAtomically(JoinPath(dir_, "sub/a.bin"), "hello").ok());
  }
  void TearDown() override { RemoveTree(dir_).IgnoreError(); }
  std::string dir_;
};

TEST_F(ManifestTest, UsesTheListedFilesAndAddsTheManifestItself) {
  const std::string manifest =
      R"({"files":[{"path":"sub/a.bin","size_bytes":5,"sha256":"abc"}]})";
  ASSERT_TRUE(
      WriteFileAtomically(JoinPath(dir_, "manifest.json"), manifest).ok());
  auto m = BuildArtifactManifest(dir_, nlohmann::json());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->directory(), dir_);
  EXPECT_EQ(m->manifest_json(), manifest);
  ASSERT_EQ(m->files_size(), 2);
  EXPECT_EQ(m->files(0).path(), "sub/a.bin");
  EXPECT_EQ(m->files(0).sha256(), "abc");  // as the engine recorded it
  EXPECT_EQ(m->files(1).path(), "manifest.json");
  EXPECT_EQ(m->files(1).sha256(), Sha256Hex(manifest));
  EXPECT_EQ(m->files(1).size_bytes(), static_cast<int64_t>(manifest.size()));
}

TEST_F(ManifestTest, ObjectFormAndHashingFallback) {
  auto from_event = BuildArtifactManifest(
      dir_, nlohmann::json::parse(
                R"({"files":{"sub/a.bin":{"size":5,"sha256":"s"}}})"));
  ASSERT_TRUE(from_event.ok()) << from_event.status();
  ASSERT_EQ(from_event->files_size(), 1);
  EXPECT_EQ(from_event->files(0).size_bytes(), 5);
  EXPECT_NE(from_event->manifest_json().find("sub/a.bin"), std::string::npos);

  auto hashed = BuildArtifactManifest(dir_, nlohmann::json());
  ASSERT_TRUE(hashed.ok()) << hashed.status();
  ASSERT_EQ(hashed->files_size(), 1);
  EXPECT_EQ(hashed->files(0).path(), "sub/a.bin");
  EXPECT_EQ(hashed->files(0).sha256(), Sha256Hex("hello"));
  EXPECT_EQ(hashed->files(0).size_bytes(), 5);
}

TEST_F(ManifestTest, ErrorsNameTheProblem) {
  auto missing = BuildArtifactManifest(JoinPath(dir_, "nope"), {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);
  auto bad = BuildArtifactManifest(
      dir_, nlohmann::json::parse(R"({"files":[{"path":"x","size":"big"}]})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'x'"), std::string::npos);
}

}  // namespace
}  // namespace roundhouse::agent
