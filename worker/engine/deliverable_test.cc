#include "worker/engine/deliverable.h"

#include <stdlib.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

// A manifest body shaped like the one pipeline.cc builds.
json Manifest(const std::string& model = "acme/tiny-llama",
              const std::string& family = "llama") {
  return json{
      {"spec",
       {{"model", model},
        {"calibration", {{"path", "calib.jsonl"}, {"preset", ""}}}}},
      {"resolved_spec",
       {{"scheme",
         {{"bits", 4},
          {"group_size", 32},
          {"sym", true},
          {"iters", 50},
          {"nsamples", 16},
          {"seqlen", 64},
          {"batch_size", 4},
          {"lr", 0.02},
          {"minmax_lr", 0.02},
          {"seed", 42}}},
        {"layer_config",
         json::array({{{"name", "mlp\\.down_proj"}, {"bits", 8}}})},
        {"ignore_layers", json::array()},
        {"calibration",
         {{"path", "calib.jsonl"},
          {"format", "jsonl"},
          {"field", "input_ids"},
          {"selection", "random"},
          {"stratify_column", ""},
          {"template", "raw"}}},
        {"evaluation",
         {{"enabled", true},
          {"min_token_cosine_similarity", 0.95},
          {"eval_samples", 8}}}}},
      {"versions",
       {{"roundhouse", "0.3.0"}, {"libtorch", "1.13.1"}, {"cuda", false}}},
      {"device", "cpu"},
      {"compute_dtype", "float32"},
      {"model_family", family},
      {"inputs",
       {{"calibration_sha256", "ab12cd"}, {"calibration_samples", 16}}},
      {"layers", json::array({{{"name", "model.layers.0.mlp.down_proj"},
                               {"quantized", true},
                               {"bits", 8},
                               {"group_size", 32},
                               {"sym", true}},
                              {{"name", "model.layers.0.mlp.up_proj"},
                               {"quantized", true},
                               {"bits", 4},
                               {"group_size", 32},
                               {"sym", true}},
                              {{"name", "model.layers.0.self_attn.k_proj"},
                               {"quantized", false},
                               {"reason", "shape not divisible by 32"}}})},
      {"formats",
       {{"auto_round",
         {{"directory", ""}, {"packing_format", "auto_round:auto_gptq"}}}}},
      {"evaluation", {{"enabled", true}, {"passed", true}}}};
}

// test_results.json shaped like the evaluation stage's report.
json Results() {
  return json{
      {"evaluation",
       {{"enabled", true},
        {"info", {{"samples", 8}, {"tokens", 500}, {"device", "cpu"}}},
        {"metrics",
         {{"hidden_states",
           {{"token_cosine_similarity",
             {{"mean", 0.9912}, {"min", 0.95}, {"p5", 0.97}}},
            {"mse", 0.0025}}},
          {"perplexity", {{"fp", 10.0}, {"quantized", 10.5}}},
          {"size", {{"original_bytes", 4194304}, {"exported_bytes", 1048576}}},
          {"performance",
           {{"tokens_per_second", {{"fp", 2000.0}, {"quantized", 1500.0}}}}}}},
        {"notes", {{"performance", "wall time of one forward"}}},
        {"gate", {{"passed", true}, {"failures", json::array()}}}}}};
}

std::vector<ArtifactFileInfo> Files() {
  return {{"config.json", 700},
          {"model.safetensors", 3 * 1024 * 1024},
          {"quantization_config.json", 300},
          {"test_results.json", 2000}};
}

std::string Card(const json& m, const json& r) {
  auto card = RenderModelCard(m, r, Files());
  EXPECT_TRUE(card.ok()) << card.status();
  return card.ok() ? *card : "";
}

TEST(DeliverableCardTest, FrontMatterForAHubModel) {
  const std::string card = Card(Manifest(), Results());
  EXPECT_TRUE(absl::StartsWith(card, "---\n")) << card;
  EXPECT_THAT(card, HasSubstr("base_model: \"acme/tiny-llama\"\n"));
  EXPECT_THAT(card, HasSubstr("library_name: transformers\n"));
  EXPECT_THAT(card, HasSubstr("- \"auto-round\"\n"));
  EXPECT_THAT(card, HasSubstr("- \"4-bit\"\n"));
  EXPECT_THAT(card, HasSubstr("- \"gptq\"\n"));
  EXPECT_THAT(card, HasSubstr("- \"llama\"\n"));
  // The engine cannot know the license: none is claimed.
  EXPECT_THAT(card, Not(HasSubstr("license:")));
  EXPECT_THAT(card, HasSubstr("# tiny-llama (AutoRound W4 G32 sym)"));
}

TEST(DeliverableCardTest, LocalPathIsNotABaseModel) {
  const std::string card = Card(Manifest("/models/demo-llama"), Results());
  EXPECT_THAT(card, Not(HasSubstr("base_model:")));
  EXPECT_THAT(card, HasSubstr("# demo-llama (AutoRound"));
  EXPECT_THAT(card, HasSubstr("- base model: `/models/demo-llama`"));
}

TEST(DeliverableCardTest, ConfigurationOverridesAndKeptLayers) {
  const std::string card = Card(Manifest(), Results());
  EXPECT_THAT(card, HasSubstr("| bits | 4 |"));
  EXPECT_THAT(card, HasSubstr("| group size | 32 |"));
  EXPECT_THAT(card, HasSubstr("| symmetric | yes |"));
  EXPECT_THAT(card, HasSubstr("| tuning iterations per block | 50 |"));
  EXPECT_THAT(card, HasSubstr("| calibration samples (nsamples) | 16 |"));
  EXPECT_THAT(card, HasSubstr("| sequence length (seqlen) | 64 |"));
  EXPECT_THAT(card, HasSubstr("| seed | 42 |"));
  EXPECT_THAT(card, HasSubstr("`auto_round` (packing `auto_round:auto_gptq`)"));
  EXPECT_THAT(card, HasSubstr("quantized | 2 of 3 |"));
  EXPECT_THAT(card, HasSubstr("| `mlp\\.down_proj` | 8 | - | - |"));
  EXPECT_THAT(card, HasSubstr("- `model.layers.0.mlp.down_proj`: W8 G32 sym"));
  EXPECT_THAT(card, Not(HasSubstr("- `model.layers.0.mlp.up_proj`")));
  EXPECT_THAT(card, HasSubstr("- `model.layers.0.self_attn.k_proj`: shape "
                              "not divisible by 32"));
}

TEST(DeliverableCardTest, CalibrationRecipe) {
  json m = Manifest();
  m["spec"]["calibration"]["preset"] = "colpali_train_set";
  const std::string card = Card(m, Results());
  EXPECT_THAT(card, HasSubstr("| source | calib.jsonl |"));
  EXPECT_THAT(card, HasSubstr("| preset | colpali_train_set |"));
  EXPECT_THAT(card, HasSubstr("| field | input_ids |"));
  EXPECT_THAT(card, HasSubstr("| selection | random |"));
  EXPECT_THAT(card, HasSubstr("| template | raw |"));
  EXPECT_THAT(card, HasSubstr("| samples used | 16 |"));
  EXPECT_THAT(card, HasSubstr("| content sha256 | `ab12cd` |"));
  // Empty settings are not shown.
  EXPECT_THAT(card, Not(HasSubstr("stratified by")));
}

TEST(DeliverableCardTest, ResultsTableFromTheReport) {
  const std::string card = Card(Manifest(), Results());
  EXPECT_THAT(card, HasSubstr("Quality gate: **passed**"));
  EXPECT_THAT(card, HasSubstr("`min_token_cosine_similarity` = 0.95"));
  EXPECT_THAT(card, HasSubstr("(8 held-out samples, 500 tokens)"));
  EXPECT_THAT(card, HasSubstr("| final hidden states / token cosine "
                              "similarity / mean | 0.9912 |"));
  EXPECT_THAT(card, HasSubstr("| final hidden states / token cosine "
                              "similarity / 5th percentile | 0.97 |"));
  EXPECT_THAT(card, HasSubstr("| final hidden states / MSE | 0.0025 |"));
  EXPECT_THAT(card, HasSubstr("| perplexity | original 10 → quantized 10.5 "
                              "(+5.00%) |"));
  EXPECT_THAT(card, HasSubstr("| size / original bytes | 4.00 MiB (4194304 "
                              "bytes) |"));
  EXPECT_THAT(card, HasSubstr("| inference / throughput (tokens/s) | "
                              "original 2000 → quantized 1500 (-25.00%) |"));
  EXPECT_THAT(card, HasSubstr("- inference: wall time of one forward"));
  // Quality rows come before size and speed, similarity before MSE.
  EXPECT_LT(card.find("token cosine"), card.find("/ MSE"));
  EXPECT_LT(card.find("token cosine"), card.find("| perplexity"));
  EXPECT_LT(card.find("| perplexity"), card.find("| size /"));
  EXPECT_LT(card.find("| size /"), card.find("| inference /"));
}

// The layout pipeline.cc writes: metrics, thresholds and notes at the top,
// the gate inside "evaluation" (with the run's info merged in).
TEST(DeliverableCardTest, PipelineReportLayout) {
  json r = {
      {"schema_version", 1},
      {"verdict", "failed_quality"},
      {"evaluation",
       {{"enabled", true},
        {"passed", false},
        {"message", "the quantized model produced 3 NaN/Inf output values"},
        {"source", "held_out"},
        {"samples", 4},
        {"tokens", 96},
        {"format", "auto_round"},
        {"gate",
         {{"passed", false},
          {"failures",
           {"the quantized model produced 3 NaN/Inf output "
            "values"}}}}}},
      {"thresholds",
       {{"min_token_cosine_similarity", 0.95}, {"min_recall_at_1", 0.0}}},
      {"metrics",
       {{"hidden_states",
         {{"non_finite_values", {{"fp", 0}, {"quantized", 3}}}}},
        {"performance",
         {{"resident_weight_bytes", {{"fp", 4096}, {"quantized", 1024}}}}}}},
      {"notes", {{"perplexity", "skipped: no LM head"}}},
      {"configuration", {{"scheme", {{"bits", 4}}}}},
      {"versions", {{"roundhouse", "0.3.0"}}}};
  const std::string card = Card(Manifest(), r);
  EXPECT_THAT(card, HasSubstr("(4 held-out samples, 96 tokens, source: "
                              "held_out)"));
  EXPECT_THAT(card, HasSubstr("Quality gate: **FAILED**: the quantized model "
                              "produced 3 NaN/Inf output values"));
  EXPECT_THAT(card, HasSubstr("`min_recall_at_1` = 0 (off); "
                              "`min_token_cosine_similarity` = 0.95"));
  EXPECT_THAT(card, HasSubstr("| final hidden states / NaN/Inf values | "
                              "original 0 → quantized 3 |"));
  EXPECT_THAT(card, HasSubstr("| inference / resident weights | original "
                              "4.00 KiB (4096 bytes) → quantized 1.00 KiB "
                              "(1024 bytes) (-75.00%) |"));
  EXPECT_THAT(card, HasSubstr("- perplexity: skipped: no LM head"));
  // Configuration and versions are not measurements.
  EXPECT_THAT(card, Not(HasSubstr("| configuration")));
  EXPECT_THAT(card, Not(HasSubstr("schema")));
}

TEST(DeliverableCardTest, MissingMetricsAreOmittedNotInvented) {
  json r = Results();
  auto& metrics = r["evaluation"]["metrics"];
  metrics.erase("perplexity");
  metrics.erase("performance");
  const std::string card = Card(Manifest(), r);
  EXPECT_THAT(card, Not(HasSubstr("perplexity")));
  EXPECT_THAT(card, Not(HasSubstr("Recall@")));
  EXPECT_THAT(card, Not(HasSubstr("MaxSim")));
  EXPECT_THAT(card, Not(HasSubstr("tokens/s")));
  EXPECT_THAT(card, HasSubstr("token cosine similarity / mean | 0.9912"));
}

TEST(DeliverableCardTest, ManifestSummaryWhenThereIsNoReport) {
  json m = Manifest();
  m["evaluation"] = {{"enabled", true},
                     {"source", "held_out"},
                     {"samples", 4},
                     {"tokens", 120},
                     {"mean_token_cosine_similarity", 0.98},
                     {"min_token_cosine_similarity", 0.9},
                     {"threshold", 0.95},
                     {"perplexity_fp", 8.0},
                     {"perplexity_quantized", 8.4},
                     {"passed", true}};
  const std::string card = Card(m, json());
  EXPECT_THAT(card, HasSubstr("| token cosine similarity (mean) | 0.98 |"));
  EXPECT_THAT(card, HasSubstr("| perplexity | original 8 → quantized 8.4 "
                              "(+5.00%) |"));
  EXPECT_THAT(card, HasSubstr("(4 held-out samples, 120 tokens, source: "
                              "held_out)"));
  // Summary bookkeeping is not a metric row.
  EXPECT_THAT(card, Not(HasSubstr("| threshold |")));
  EXPECT_THAT(card, Not(HasSubstr("| samples |")));
}

TEST(DeliverableCardTest, EvaluationDisabled) {
  json m = Manifest();
  m["evaluation"] = {{"enabled", false}, {"passed", true}};
  const std::string card = Card(m, {{"evaluation", {{"enabled", false}}}});
  EXPECT_THAT(card, HasSubstr("Evaluation was disabled for this job"));
  EXPECT_THAT(card, HasSubstr("- Not evaluated"));
  EXPECT_THAT(card, Not(HasSubstr("| metric | value |")));
  EXPECT_THAT(card, Not(HasSubstr("Quality gate")));
}

TEST(DeliverableCardTest, FailedGateIsProminent) {
  json r = Results();
  r["evaluation"]["gate"] = {
      {"passed", false},
      {"failures", {"mean token cosine similarity 0.8 < 0.95"}}};
  const std::string card = Card(Manifest(), r);
  EXPECT_THAT(card, HasSubstr("> **Warning: this checkpoint failed the "
                              "quality gate (mean token cosine similarity "
                              "0.8 < 0.95).**"));
  EXPECT_THAT(card, HasSubstr("Quality gate: **FAILED**"));
}

TEST(DeliverableCardTest, ColQwen3LoadingAndLimitations) {
  json m = Manifest("TomoroAI/tomoro-colqwen3-embed-4b", "colqwen3");
  json r = Results();
  r["evaluation"]["metrics"]["retrieval"] = {
      {"recall_at_1", 0.75},
      {"recall_at_5", 1.0},
      {"maxsim_pearson", 0.99},
      {"self_recall_at_1", {{"fp", 1.0}, {"quantized", 0.875}}}};
  const std::string card = Card(m, r);
  EXPECT_THAT(card, HasSubstr("pipeline_tag: visual-document-retrieval"));
  EXPECT_THAT(card, HasSubstr("trust_remote_code=True"));
  EXPECT_THAT(card, HasSubstr("from auto_round import AutoRoundConfig"));
  EXPECT_THAT(card, HasSubstr("vision tower and the projection head are "
                              "unquantized, stored as in the original "
                              "checkpoint (bf16"));
  EXPECT_THAT(card, HasSubstr("Calibration used text only"));
  EXPECT_THAT(card, HasSubstr("The evaluation ran on text"));
  EXPECT_THAT(card, HasSubstr("With vLLM: not covered"));
  EXPECT_THAT(card, Not(HasSubstr("vllm serve")));
  EXPECT_THAT(card, HasSubstr("| retrieval pool / Recall@1 | 0.75 |"));
  EXPECT_THAT(card, HasSubstr("| retrieval pool / Recall@5 | 1 |"));
  EXPECT_THAT(card, HasSubstr("| retrieval pool / MaxSim score Pearson r | "
                              "0.99 |"));
  EXPECT_THAT(card, HasSubstr("| retrieval pool / self Recall@1 | original "
                              "1 → quantized 0.875 (-12.50%) |"));
}

TEST(DeliverableCardTest, LlamaLoadingSnippets) {
  const std::string card = Card(Manifest(), Results());
  EXPECT_THAT(card, HasSubstr("AutoModelForCausalLM.from_pretrained("));
  EXPECT_THAT(card, HasSubstr("pip install auto-round transformers"));
  EXPECT_THAT(card, HasSubstr("AutoRoundConfig(backend=\"auto\")"));
  EXPECT_THAT(card, HasSubstr("vllm serve REPO"));
  EXPECT_THAT(card, Not(HasSubstr("trust_remote_code")));
}

TEST(DeliverableCardTest, SeveralFormatsUseSubfolders) {
  json m = Manifest();
  m["formats"] = {
      {"auto_round",
       {{"directory", "auto_round"},
        {"packing_format", "auto_round:auto_gptq"}}},
      {"auto_awq",
       {{"directory", "auto_awq"}, {"packing_format", "auto_awq"}}}};
  std::vector<ArtifactFileInfo> files = {{"auto_awq/model.safetensors", 1000},
                                         {"auto_round/model.safetensors", 2000},
                                         {"auto_round/config.json", 10}};
  auto card = RenderModelCard(m, Results(), files);
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_THAT(*card, HasSubstr("### Format `auto_awq`"));
  EXPECT_THAT(*card, HasSubstr("subfolder=\"auto_round\""));
  EXPECT_THAT(*card, HasSubstr("pip install transformers autoawq"));
  EXPECT_THAT(*card, HasSubstr("| weights, `auto_round` (1 safetensors file)"
                               " | 1.95 KiB (2000 bytes) |"));
  EXPECT_THAT(*card, HasSubstr("| weights, `auto_awq` (1 safetensors file) "
                               "| 1000 B |"));
  EXPECT_THAT(*card, HasSubstr("| whole folder before this card (3 files) | "
                               "2.94 KiB (3010 bytes) |"));
  EXPECT_THAT(*card, HasSubstr("- \"awq\""));
}

TEST(DeliverableCardTest, Deterministic) {
  EXPECT_EQ(Card(Manifest(), Results()), Card(Manifest(), Results()));
}

TEST(DeliverableCardTest, MalformedInputsNameTheField) {
  struct Case {
    std::function<void(json*, json*)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](json* m, json*) { (*m)["resolved_spec"]["scheme"]["bits"] = "4"; },
       "manifest.resolved_spec.scheme.bits: expected an integer"},
      {[](json* m, json*) { (*m)["spec"].erase("model"); },
       "manifest.spec.model: missing"},
      {[](json* m, json*) { (*m).erase("formats"); }, "manifest.formats"},
      {[](json* m, json*) { (*m)["formats"]["auto_round"]["directory"] = 3; },
       "manifest.formats.auto_round.directory: expected a string"},
      {[](json* m, json*) {
         (*m)["formats"]["auto_round"]["directory"] = "../x";
       },
       "manifest.formats.auto_round.directory: must be a relative path"},
      {[](json* m, json*) { (*m)["layers"][1].erase("name"); },
       "manifest.layers[1].name: missing"},
      {[](json* m, json*) {
         (*m)["resolved_spec"]["layer_config"][0]["sym"] = "yes";
       },
       "manifest.resolved_spec.layer_config[0].sym: expected a boolean"},
      {[](json*, json* r) { *r = json::array(); },
       "test_results: expected an object"},
      {[](json*, json* r) { (*r)["evaluation"]["metrics"] = 5; },
       "test_results.evaluation.metrics: expected an object"},
      {[](json*, json* r) { (*r)["evaluation"]["enabled"] = "true"; },
       "test_results.evaluation.enabled: expected a boolean"},
  };
  for (const Case& c : cases) {
    json m = Manifest();
    json r = Results();
    c.mutate(&m, &r);
    auto card = RenderModelCard(m, r, Files());
    ASSERT_FALSE(card.ok()) << c.field;
    EXPECT_EQ(card.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(card.status().message()), HasSubstr(c.field));
  }
}

TEST(DeliverableGitAttributesTest, WeightsAndLargeFilesGoToLfs) {
  const std::string g =
      RenderGitAttributes({{"model.safetensors", 5},
                           {"tokenizer.json", kLfsThresholdBytes + 1},
                           {"vocab.json", 100},
                           {"sub/big.bin", kLfsThresholdBytes + 1}});
  EXPECT_EQ(g,
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            "*.bin filter=lfs diff=lfs merge=lfs -text\n"
            "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
            "*.pt filter=lfs diff=lfs merge=lfs -text\n"
            "/tokenizer.json filter=lfs diff=lfs merge=lfs -text\n");
}

// ---- WriteDeliverable on a directory ---------------------------------------

class WriteDeliverableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = JoinPath(::testing::TempDir(), "deliverable_XXXXXX");
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { ASSERT_TRUE(RemoveTree(dir_).ok()); }

  // A config.json whose quantization_config keys are NOT in sorted order,
  // as the exporter writes them.
  void WriteExport(const std::string& sub) {
    const std::string d = sub.empty() ? dir_ : JoinPath(dir_, sub);
    ASSERT_TRUE(MakeDirs(d).ok());
    ASSERT_TRUE(WriteFileAtomically(JoinPath(d, "config.json"), kConfig).ok());
    ASSERT_TRUE(
        WriteFileAtomically(JoinPath(d, "model.safetensors"), "weights").ok());
  }

  static constexpr char kConfig[] =
      "{\"model_type\": \"llama\", \"quantization_config\": "
      "{\"quant_method\": \"auto-round\", \"packing_format\": "
      "\"auto_round:auto_gptq\", \"bits\": 4, \"group_size\": 32}}";
  static constexpr char kQuantConfig[] =
      "{\n  \"quant_method\": \"auto-round\",\n  \"packing_format\": "
      "\"auto_round:auto_gptq\",\n  \"bits\": 4,\n  \"group_size\": 32\n}\n";

  std::string dir_;
};

TEST_F(WriteDeliverableTest, WritesEveryFileDeterministically) {
  WriteExport("");
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir_, "test_results.json"),
                                  Results().dump(2))
                  .ok());
  ASSERT_TRUE(WriteDeliverable(dir_, Manifest(), Results()).ok());
  auto qc = ReadFile(JoinPath(dir_, kQuantizationConfigFile));
  ASSERT_TRUE(qc.ok());
  EXPECT_EQ(*qc, kQuantConfig);  // key order kept
  auto ga = ReadFile(JoinPath(dir_, kGitAttributesFile));
  ASSERT_TRUE(ga.ok());
  EXPECT_THAT(*ga, HasSubstr("*.safetensors filter=lfs diff=lfs merge=lfs "
                             "-text\n"));
  auto card = ReadFile(JoinPath(dir_, kModelCardFile));
  ASSERT_TRUE(card.ok());
  EXPECT_THAT(*card, HasSubstr("# tiny-llama"));
  // 4 files before the card: config, weights, quantization_config, report.
  EXPECT_THAT(*card, HasSubstr("whole folder before this card (4 files)"));
  for (const char* f : kDeliverableTopLevelFiles) {
    EXPECT_TRUE(PathExists(JoinPath(dir_, f))) << f;
  }

  // A second call (a resumed run) produces the same bytes.
  ASSERT_TRUE(WriteDeliverable(dir_, Manifest(), Results()).ok());
  auto card2 = ReadFile(JoinPath(dir_, kModelCardFile));
  ASSERT_TRUE(card2.ok());
  EXPECT_EQ(*card, *card2);
}

TEST_F(WriteDeliverableTest, OneQuantizationConfigPerFormatDirectory) {
  WriteExport("auto_round");
  WriteExport("auto_gptq");
  json m = Manifest();
  m["formats"] = {{"auto_round", {{"directory", "auto_round"}}},
                  {"auto_gptq", {{"directory", "auto_gptq"}}}};
  ASSERT_TRUE(WriteDeliverable(dir_, m, Results()).ok());
  for (const char* sub : {"auto_round", "auto_gptq"}) {
    auto qc = ReadFile(JoinPath(JoinPath(dir_, sub), kQuantizationConfigFile));
    ASSERT_TRUE(qc.ok()) << sub;
    EXPECT_EQ(*qc, kQuantConfig);
  }
  EXPECT_FALSE(PathExists(JoinPath(dir_, kQuantizationConfigFile)));
  EXPECT_TRUE(PathExists(JoinPath(dir_, kModelCardFile)));
}

TEST_F(WriteDeliverableTest, MissingConfigNamesTheFile) {
  auto st = WriteDeliverable(dir_, Manifest(), Results());
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr(JoinPath(dir_, "config.json")));
  EXPECT_FALSE(PathExists(JoinPath(dir_, kModelCardFile)));
}

TEST_F(WriteDeliverableTest, ConfigWithoutQuantizationConfig) {
  ASSERT_TRUE(
      WriteFileAtomically(JoinPath(dir_, "config.json"), "{\"a\": 1}").ok());
  auto st = WriteDeliverable(dir_, Manifest(), Results());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("config.json: quantization_config is missing"));
}

TEST_F(WriteDeliverableTest, MalformedManifestWritesNothing) {
  WriteExport("");
  json m = Manifest();
  m["resolved_spec"]["scheme"]["group_size"] = -1.5;
  auto st = WriteDeliverable(dir_, m, Results());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("manifest.resolved_spec.scheme.group_size"));
  EXPECT_FALSE(PathExists(JoinPath(dir_, kModelCardFile)));
  EXPECT_FALSE(PathExists(JoinPath(dir_, kGitAttributesFile)));
  EXPECT_FALSE(PathExists(JoinPath(dir_, kQuantizationConfigFile)));
}

}  // namespace
}  // namespace roundhouse::engine
