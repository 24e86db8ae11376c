#include "worker/engine/job_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kMinimal[] = R"({"calibration": {"path": "calib.jsonl"}})";

TEST(JobConfigTest, DefaultsFollowTheReference) {
  auto c = ParseJobConfigText(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global.bits, 4);
  EXPECT_EQ(c->global.group_size, 128);
  EXPECT_TRUE(c->global.sym);
  EXPECT_EQ(c->tune.iters, 200);
  EXPECT_EQ(c->nsamples, 128);
  EXPECT_EQ(c->seqlen, 2048);
  EXPECT_EQ(c->tune.batch_size, 8);
  EXPECT_EQ(c->tune.gradient_accumulate_steps, 1);
  EXPECT_DOUBLE_EQ(c->tune.lr, 1.0 / 200);
  EXPECT_DOUBLE_EQ(c->tune.minmax_lr, 1.0 / 200);
  EXPECT_FALSE(c->tune.lr_set);
  EXPECT_EQ(c->tune.seed, 42);
  EXPECT_TRUE(c->tune.enable_minmax_tuning);
  EXPECT_TRUE(c->tune.enable_quanted_input);
  EXPECT_FALSE(c->tune.not_use_best_mse);
  EXPECT_EQ(c->export_formats, std::vector<std::string>{"auto_round"});
  EXPECT_TRUE(c->evaluation.enabled);
  EXPECT_DOUBLE_EQ(c->evaluation.min_token_cosine_similarity, 0.95);
  EXPECT_EQ(c->evaluation.eval_samples, 16);
  EXPECT_DOUBLE_EQ(c->evaluation.min_recall_at_1, 0.0);  // off
  EXPECT_EQ(c->compute_dtype, "auto");
  EXPECT_TRUE(c->deterministic);
  EXPECT_EQ(c->calibration.selection, "random");
  EXPECT_EQ(c->calibration.templ, "raw");
}

TEST(JobConfigTest, DerivedDefaults) {
  auto c = ParseJobConfigText(
      R"({"scheme": {"iters": 50, "nsamples": 4, "minmax_lr": 0.01},
          "calibration": {"path": "/data/c.jsonl"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->tune.lr, 1.0 / 50);
  EXPECT_DOUBLE_EQ(c->tune.minmax_lr, 0.01);
  EXPECT_EQ(c->tune.batch_size, 4);  // capped to nsamples
  auto rtn = ParseJobConfigText(
      R"({"scheme": {"iters": 0}, "calibration": {"path": "c"}})");
  ASSERT_TRUE(rtn.ok());
  EXPECT_DOUBLE_EQ(rtn->tune.lr, 5e-3);
}

TEST(JobConfigTest, FullSpecAsTheAgentWritesIt) {
  // MessageToJsonString output: int64 as strings, coordinator fields present.
  auto c = ParseJobConfigText(R"({
    "model": "/models/demo", "priority": 50, "labels": {"team": "x"},
    "deadline_seconds": 10, "max_retries": 2, "allow_low_memory_retry": true,
    "resources": {"device": "cuda", "min_memory_bytes": "1000"},
    "scheme": {"bits": 2, "group_size": 32, "sym": false, "seed": "7",
               "compute_dtype": "float32", "deterministic": true},
    "layer_config": [{"name": "mlp\\.down_proj", "bits": 8},
                     {"name": "model.layers.0.self_attn.q_proj", "bits": 16}],
    "ignore_layers": ["o_proj"],
    "calibration": {"path": "calib.jsonl", "field": "input_ids",
                    "selection": "stratified", "stratify_column": "source",
                    "template": "pack", "allow_fewer_samples": true},
    "export_formats": ["auto_round", "auto_gptq"],
    "evaluation": {"enabled": false, "min_token_cosine_similarity": 0.9,
                   "eval_samples": 4, "eval_path": "eval.jsonl",
                   "minRecallAt1": 0.75}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global.bits, 2);
  EXPECT_EQ(c->global.group_size, 32);
  EXPECT_FALSE(c->global.sym);
  EXPECT_EQ(c->tune.seed, 7);
  ASSERT_EQ(c->layer_config.size(), 2u);
  EXPECT_EQ(c->layer_config[0].pattern, "mlp\\.down_proj");
  EXPECT_EQ(*c->layer_config[0].bits, 8);
  EXPECT_FALSE(c->layer_config[0].group_size.has_value());
  EXPECT_EQ(*c->layer_config[1].bits, 16);
  EXPECT_EQ(c->ignore_layers, std::vector<std::string>{"o_proj"});
  EXPECT_EQ(c->calibration.templ, "pack");
  EXPECT_TRUE(c->calibration.allow_fewer_samples);
  EXPECT_EQ(c->export_formats.size(), 2u);
  EXPECT_FALSE(c->evaluation.enabled);
  EXPECT_EQ(c->evaluation.eval_path, "eval.jsonl");
  EXPECT_TRUE(c->evaluation.eval_samples_set);
  EXPECT_DOUBLE_EQ(c->evaluation.min_recall_at_1, 0.75);
  EXPECT_EQ(ResolvedSpecJson(*c)["evaluation"]["min_recall_at_1"], 0.75);
}

TEST(JobConfigTest, ColpaliPresetFillsUnsetFields) {
  auto c = ParseJobConfigText(
      R"({"scheme": {"seqlen": 128}, "calibration": {"path": "q.jsonl",
          "preset": "colpali_train_set", "query_prefix": "Query: "}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->calibration.field, "query");
  EXPECT_EQ(c->calibration.selection, "stratified");
  EXPECT_EQ(c->calibration.stratify_column, "source");
  EXPECT_EQ(c->calibration.templ, "colqwen3_query");
  EXPECT_EQ(c->calibration.query_prefix, "Query: ");
  EXPECT_EQ(c->nsamples, 256);
  EXPECT_EQ(c->seqlen, 128);  // explicit wins
  EXPECT_EQ(c->tune.seed, 42);
}

TEST(JobConfigTest, CamelCaseKeysAreAccepted) {
  auto c = ParseJobConfigText(
      R"({"scheme": {"groupSize": 64}, "calibration": {"path": "c",
          "allowFewerSamples": true}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global.group_size, 64);
  EXPECT_TRUE(c->calibration.allow_fewer_samples);
}

struct BadCase {
  const char* spec;
  const char* message_prefix;
};

class JobConfigErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(JobConfigErrorTest, NamesTheField) {
  auto c = ParseJobConfigText(GetParam().spec);
  ASSERT_FALSE(c.ok()) << GetParam().spec;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              StartsWith(GetParam().message_prefix));
}

#define CAL R"("calibration": {"path": "c"})"
INSTANTIATE_TEST_SUITE_P(
    AllFields, JobConfigErrorTest,
    ::testing::Values(
        BadCase{R"({"scheme": {"bits": -1}, )" CAL "}",
                "scheme.bits: must be one of 2, 3, 4, 8 (got -1)"},
        BadCase{R"({"scheme": {"bits": 16}, )" CAL "}", "scheme.bits:"},
        BadCase{R"({"scheme": {"bits": "four"}, )" CAL "}",
                "scheme.bits: must be an integer"},
        BadCase{R"({"scheme": {"group_size": 100}, )" CAL "}",
                "scheme.group_size: must be one of 32, 64, 128, -1"},
        BadCase{R"({"scheme": {"sym": 1}, )" CAL "}",
                "scheme.sym: must be true or false"},
        BadCase{R"({"scheme": {"iters": -3}, )" CAL "}", "scheme.iters:"},
        BadCase{R"({"scheme": {"nsamples": 0}, )" CAL "}",
                "scheme.nsamples:"},
        BadCase{R"({"scheme": {"seqlen": 1}, )" CAL "}", "scheme.seqlen:"},
        BadCase{R"({"scheme": {"batch_size": 0}, )" CAL "}",
                "scheme.batch_size:"},
        BadCase{R"({"scheme": {"gradient_accumulate_steps": 0}, )" CAL "}",
                "scheme.gradient_accumulate_steps:"},
        BadCase{R"({"scheme": {"lr": -0.1}, )" CAL "}", "scheme.lr:"},
        BadCase{R"({"scheme": {"minmax_lr": 0}, )" CAL "}",
                "scheme.minmax_lr:"},
        BadCase{R"({"scheme": {"seed": 1.5}, )" CAL "}", "scheme.seed:"},
        BadCase{R"({"scheme": {"compute_dtype": "int8"}, )" CAL "}",
                "scheme.compute_dtype:"},
        BadCase{R"({"scheme": {"deterministic": "yes"}, )" CAL "}",
                "scheme.deterministic:"},
        BadCase{R"({"scheme": {"enable_quanted_input": null}, )" CAL "}",
                "scheme.enable_quanted_input:"},
        BadCase{R"({"scheme": {"bitz": 4}, )" CAL "}",
                "scheme.bitz: unknown field"},
        BadCase{R"({"sheme": {}, )" CAL "}", "sheme: unknown field"},
        BadCase{R"({"scheme": 4, )" CAL "}", "scheme: must be a JSON object"},
        BadCase{R"({"layer_config": {}, )" CAL "}", "layer_config: must be"},
        BadCase{R"({"layer_config": [{"bits": 8}], )" CAL "}",
                "layer_config[0].name: must be a non-empty string"},
        BadCase{R"({"layer_config": [{"name": "x", "bits": 5}], )" CAL "}",
                "layer_config[0].bits: must be one of 2, 3, 4, 8, 16"},
        BadCase{R"({"layer_config": [{"name": "x"}, {"name": "y",
                    "group_size": 7}], )" CAL "}",
                "layer_config[1].group_size:"},
        BadCase{R"({"layer_config": [{"name": "x", "sym": "no"}], )" CAL "}",
                "layer_config[0].sym:"},
        BadCase{R"({"layer_config": [{"name": "x", "bit": 8}], )" CAL "}",
                "layer_config[0].bit: unknown field"},
        BadCase{R"({"ignore_layers": "o_proj", )" CAL "}", "ignore_layers:"},
        BadCase{R"({"ignore_layers": [""], )" CAL "}", "ignore_layers[0]:"},
        BadCase{R"({})", "calibration.path: required"},
        BadCase{R"({"calibration": {"path": 3}})", "calibration.path:"},
        BadCase{R"({"calibration": {"path": "c", "format": "csv"}})",
                "calibration.format:"},
        BadCase{R"({"calibration": {"path": "c", "selection": "top"}})",
                "calibration.selection:"},
        BadCase{R"({"calibration": {"path": "c", "selection":
                    "stratified"}})",
                "calibration.stratify_column: required"},
        BadCase{R"({"calibration": {"path": "c", "template": "chat"}})",
                "calibration.template:"},
        BadCase{R"({"calibration": {"path": "c", "drop_short": 1}})",
                "calibration.drop_short:"},
        BadCase{R"({"calibration": {"path": "c", "preset": "pile"}})",
                "calibration.preset:"},
        BadCase{R"({"calibration": {"path": "c", "color": 1}})",
                "calibration.color: unknown field"},
        BadCase{R"({"export_formats": ["gguf"], )" CAL "}",
                "export_formats[0]: must be one of"},
        BadCase{R"({"export_formats": ["auto_round", "auto_round"], )" CAL
                "}",
                "export_formats[1]:"},
        BadCase{R"({"export_formats": ["auto_awq"], )" CAL "}",
                "export_formats: \"auto_awq\" needs"},
        BadCase{R"({"evaluation": {"min_token_cosine_similarity": 2}, )" CAL
                "}",
                "evaluation.min_token_cosine_similarity:"},
        BadCase{R"({"evaluation": {"min_recall_at_1": 1.5}, )" CAL "}",
                "evaluation.min_recall_at_1: must be in [0, 1] (got 1.5)"},
        BadCase{R"({"evaluation": {"eval_samples": 0}, )" CAL "}",
                "evaluation.eval_samples:"},
        BadCase{R"({"evaluation": {"enabled": "no"}, )" CAL "}",
                "evaluation.enabled:"},
        BadCase{R"({"evaluation": {"x": 1}, )" CAL "}",
                "evaluation.x: unknown field"},
        BadCase{R"([1, 2])", "spec: must be a JSON object"},
        BadCase{R"({"scheme": )", "spec: not valid JSON"}));

TEST(JobConfigTest, ResolvedSpecDependsOnlyOnEffectiveSettings) {
  auto a = ParseJobConfigText(
      R"({"calibration": {"path": "c"}, "priority": 3})");
  auto b = ParseJobConfigText(
      R"({"scheme": {"bits": 4, "iters": 200}, "calibration": {"path": "c"},
          "labels": {"a": "b"}})");
  auto d = ParseJobConfigText(
      R"({"scheme": {"bits": 2}, "calibration": {"path": "c"}})");
  ASSERT_TRUE(a.ok() && b.ok() && d.ok());
  EXPECT_EQ(ResolvedSpecJson(*a), ResolvedSpecJson(*b));
  EXPECT_NE(ResolvedSpecJson(*a), ResolvedSpecJson(*d));
  EXPECT_THAT(ResolvedSpecJson(*a).dump(), HasSubstr("\"lr\":0.005"));
}

}  // namespace
}  // namespace roundhouse::engine
