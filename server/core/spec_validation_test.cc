#include "server/core/spec_validation.h"

#include <unistd.h>

#include <fstream>

#include "common/files.h"
#include "gtest/gtest.h"

namespace roundhouse::server {
namespace {

class SpecValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rh_spec_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(MakeDirs(dir_ + "/models/m").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/models/empty").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/outside").ok());
    std::ofstream(dir_ + "/models/m/config.json") << "{}";
    std::ofstream(dir_ + "/models/m/calib.jsonl") << "{}\n";
    std::ofstream(dir_ + "/outside/config.json") << "{}";
    // hub cache: models--org--tiny/{refs/main, snapshots/<commit>}
    std::string repo = dir_ + "/hub/models--org--tiny";
    ASSERT_TRUE(MakeDirs(repo + "/refs").ok());
    ASSERT_TRUE(MakeDirs(repo + "/snapshots/abc123").ok());
    ASSERT_TRUE(MakeDirs(repo + "/snapshots/def456").ok());
    std::ofstream(repo + "/refs/main") << "abc123\n";
    std::ofstream(repo + "/snapshots/abc123/config.json") << "{}";
    std::ofstream(repo + "/snapshots/def456/config.json") << "{}";
    opts_.model_roots = {dir_ + "/models"};
    opts_.hf_cache = dir_ + "/hub";
  }
  void TearDown() override { RemoveTree(dir_).IgnoreError(); }

  absl::Status Check(const std::string& json) {
    auto spec = ParseSpecJson(json);
    if (!spec.ok()) return spec.status();
    return ValidateSpec(opts_, *spec).status();
  }
  void ExpectError(const std::string& json, const std::string& fragment) {
    absl::Status s = Check(json);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(s.message().find(fragment), std::string::npos)
        << "message: " << s.message() << "\nexpected: " << fragment;
  }

  std::string dir_;
  ModelResolverOptions opts_;
};

TEST_F(SpecValidationTest, AcceptsAFullSpec) {
  auto spec = ParseSpecJson(R"({
    "model": "m",
    "scheme": {"bits": 4, "group_size": 32, "sym": true, "iters": 50,
               "nsamples": 16, "seqlen": 64, "batch_size": 4, "seed": 42},
    "layer_config": [{"name": "mlp\\.down_proj", "bits": 16}],
    "calibration": {"path": "calib.jsonl", "field": "input_ids"},
    "export_formats": ["auto_round", "auto_gptq"],
    "labels": {"team": "search"}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto v = ValidateSpec(opts_, *spec);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->model_path, *RealPath(dir_ + "/models/m"));
  EXPECT_EQ(v->spec.priority(), 50);
}

TEST_F(SpecValidationTest, UnknownFieldIsNamed) {
  ExpectError(R"({"model":"m","bitz":4})", "spec: ");
  ExpectError(R"({"model":"m","bitz":4})", "bitz");
  ExpectError(R"({"model":"m","scheme":{"grp":1}})", "grp");
}

TEST_F(SpecValidationTest, BadRegexNamesTheEntry) {
  ExpectError(R"({"model":"m","layer_config":[{"name":"ok"},{"name":"(x"}]})",
              "layer_config[1].name: invalid regex");
  ExpectError(R"({"model":"m","ignore_layers":["[a"]})",
              "ignore_layers[0]: invalid regex");
}

TEST_F(SpecValidationTest, NumericFields) {
  ExpectError(R"({"model":"m","scheme":{"bits":-4}})", "scheme.bits: -4");
  ExpectError(R"({"model":"m","scheme":{"bits":16}})", "scheme.bits: 16");
  ExpectError(R"({"model":"m","layer_config":[{"name":"a","bits":5}]})",
              "layer_config[0].bits: 5");
  ExpectError(R"({"model":"m","scheme":{"group_size":100}})",
              "scheme.group_size");
  ExpectError(R"({"model":"m","scheme":{"iters":-1}})", "scheme.iters");
  ExpectError(R"({"model":"m","scheme":{"nsamples":0}})", "scheme.nsamples");
  ExpectError(R"({"model":"m","scheme":{"seqlen":-2}})", "scheme.seqlen");
  ExpectError(R"({"model":"m","scheme":{"batch_size":0}})",
              "scheme.batch_size");
  ExpectError(R"({"model":"m","scheme":{"lr":-0.1}})", "scheme.lr");
  ExpectError(R"({"model":"m","priority":101})", "priority");
  ExpectError(R"({"model":"m","deadline_seconds":-1})", "deadline_seconds");
  ExpectError(R"({"model":"m","resources":{"device":"tpu"}})",
              "resources.device");
  ExpectError(R"({"model":"m","max_retries":-1})", "max_retries");
  ExpectError(R"({"model":"m","scheme":{"compute_dtype":"fp8"}})",
              "scheme.compute_dtype");
}

TEST_F(SpecValidationTest, ExportFormats) {
  ExpectError(R"({"model":"m","export_formats":["gguf"]})",
              "export_formats[0]: \"gguf\" is not one of");
  ExpectError(R"({"model":"m","export_formats":["auto_awq"]})",
              "export_formats[0]: auto_awq requires a 4-bit asymmetric");
  EXPECT_TRUE(Check(R"({"model":"m","scheme":{"sym":false},
                        "export_formats":["auto_awq"]})")
                  .ok());
}

TEST_F(SpecValidationTest, ModelConfinedToRoots) {
  ExpectError(R"({"model":")" + dir_ + R"(/outside"})",
              "is outside the configured model roots");
  ExpectError(R"({"model":"../outside"})",
              "is outside the configured model roots");
  ExpectError(R"({"model":"missing"})", "does not exist");
  ExpectError(R"({"model":"empty"})", "has no config.json");
  ExpectError(R"({})", "model: required");
  ExpectError(R"({"model":"m","calibration":{"path":"nope.jsonl"}})",
              "calibration.path");
  ExpectError(R"({"model":"m","calibration":{"preset":"c4"}})",
              "calibration.preset: \"c4\" is not one of");
  ExpectError(R"({"model":"m","calibration":{"selection":"stratified"}})",
              "calibration.stratify_column");
  EXPECT_TRUE(Check(R"({"model":"m","calibration":{"preset":
                        "colpali_train_set","selection":"stratified"}})")
                  .ok());
  ExpectError(R"({"model":"m","evaluation":{"eval_path":"nope.jsonl"}})",
              "evaluation.eval_path");
  ExpectError(R"({"model":"m","evaluation":{"min_recall_at_1":1.5}})",
              "evaluation.min_recall_at_1: 1.5 is outside [0, 1]");
  ExpectError(R"({"model":"m","evaluation":{"min_recall_at_1":-0.1}})",
              "evaluation.min_recall_at_1");
  EXPECT_TRUE(Check(R"({"model":"m","evaluation":{"min_recall_at_1":0.8}})")
                  .ok());
  EXPECT_TRUE(Check(R"({"model":"m","calibration":{"path":"calib.jsonl"},
                        "evaluation":{"eval_path":"calib.jsonl"}})")
                  .ok());
}

TEST_F(SpecValidationTest, SymlinkOutOfRootIsRejected) {
  ASSERT_EQ(symlink((dir_ + "/outside").c_str(),
                    (dir_ + "/models/link").c_str()),
            0);
  ExpectError(R"({"model":"link"})", "is outside the configured model roots");
}

TEST_F(SpecValidationTest, HfReferences) {
  auto main = ResolveModel(opts_, "hf://org/tiny");
  ASSERT_TRUE(main.ok()) << main.status();
  EXPECT_NE(main->find("snapshots/abc123"), std::string::npos);
  auto pinned = ResolveModel(opts_, "hf://org/tiny@def456");
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_NE(pinned->find("snapshots/def456"), std::string::npos);
  EXPECT_FALSE(ResolveModel(opts_, "hf://org/tiny@v9").ok());
  EXPECT_FALSE(ResolveModel(opts_, "hf://org/other").ok());
  EXPECT_FALSE(ResolveModel(opts_, "hf://org/../x").ok());
  EXPECT_FALSE(ResolveModel(opts_, "hf://justname").ok());
  // A snapshot that is a symlink out of the cache is refused.
  std::string repo = dir_ + "/hub/models--org--tiny";
  ASSERT_EQ(symlink((dir_ + "/outside").c_str(),
                    (repo + "/snapshots/evil").c_str()),
            0);
  auto evil = ResolveModel(opts_, "hf://org/tiny@evil");
  EXPECT_FALSE(evil.ok());
  EXPECT_NE(evil.status().message().find("outside the hub cache"),
            std::string::npos)
      << evil.status();
}

}  // namespace
}  // namespace roundhouse::server
