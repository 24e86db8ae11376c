#include "worker/engine/generator.h"

#include <stdlib.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string MakeTempDir() {
  std::string tmpl = JoinPath(::testing::TempDir(), "gen_test_XXXXXX");
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

class GeneratorFamilyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GeneratorFamilyTest, TinyCheckpointHasTheDiscoveredLayout) {
  const std::string family = GetParam();
  std::string dir = JoinPath(MakeTempDir(), family);
  GeneratorOptions o;
  o.family = family;
  o.num_layers = 3;
  ASSERT_TRUE(GenerateCheckpoint(o, dir).ok());
  EXPECT_FALSE(PathExists(absl::StrCat(dir, ".tmp-", ::getpid())));

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto l = DiscoverLayout(dir, **ckpt);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(ModelFamilyName(l->family), family);
  EXPECT_EQ(l->text.num_layers, 3);
  EXPECT_EQ(l->text.hidden_size, 64);
  EXPECT_EQ(l->text.intermediate_size, 128);
  EXPECT_EQ(l->text.num_heads, 4);
  EXPECT_EQ(l->text.num_kv_heads, 2);
  EXPECT_EQ(l->text.head_dim, 16);
  EXPECT_EQ(l->text.vocab_size, 320);
  EXPECT_EQ(l->text.torch_dtype, "float32");
  for (int b = 0; b < 3; ++b) {
    auto names = l->BlockLinearNames(b);
    ASSERT_EQ(names.size(), 7u);
    auto q = (*ckpt)->Info(names[0] + ".weight");
    ASSERT_TRUE(q.ok());
    EXPECT_EQ((*q)->shape, (std::vector<int64_t>{64, 64}));
    auto down = (*ckpt)->Info(names[6] + ".weight");
    ASSERT_TRUE(down.ok());
    EXPECT_EQ((*down)->shape, (std::vector<int64_t>{64, 128}));
  }
  const bool vl = family == "qwen3_vl" || family == "colqwen3";
  EXPECT_EQ(l->vision_prefix.empty(), !vl);
  EXPECT_EQ(l->lm_head.has_value(), family == "llama");
  EXPECT_EQ(l->text.qk_norm, family != "llama" && family != "qwen2");
  EXPECT_EQ(l->text.attention_bias, family == "qwen2");
  EXPECT_EQ(l->projection_weight.has_value(), family == "colqwen3");

  // Side files.
  for (const char* f : {"config.json", "generation_config.json",
                        "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(PathExists(JoinPath(dir, f))) << f;
  }
  for (const char* f : {"configuration_colqwen3.py", "modeling_colqwen3.py",
                        "processing_colqwen3.py"}) {
    EXPECT_EQ(PathExists(JoinPath(dir, f)), family == "colqwen3") << f;
  }
  EXPECT_EQ(PathExists(JoinPath(dir, "preprocessor_config.json")), vl);
  auto tok = ReadFile(JoinPath(dir, "tokenizer.json"));
  ASSERT_TRUE(tok.ok());
  json t = json::parse(*tok);
  EXPECT_EQ(t["model"]["vocab"].size(), 256u);
  EXPECT_EQ(t["model"]["vocab"]["a"], 97);
  EXPECT_EQ(t["model"]["vocab"]["\xC4\xA0"], 32);  // GPT-2 symbol for ' '
  EXPECT_TRUE(t["model"]["merges"].empty());
  ASSERT_GE(t["added_tokens"].size(), 3u);
  EXPECT_EQ(t["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(t["added_tokens"][0]["id"], 256);
  EXPECT_EQ(t["added_tokens"][2]["content"], "<|im_end|>");
  EXPECT_EQ(t["added_tokens"].size(), vl ? 7u : 3u);

  auto cfg = ReadConfigJson(dir);
  ASSERT_TRUE(cfg.ok());
  ASSERT_TRUE((*cfg)["architectures"].is_array());
  if (family == "colqwen3") {
    EXPECT_EQ((*cfg)["architectures"][0], "ColQwen3");
    EXPECT_EQ((*cfg)["embed_dim"], 16);
    EXPECT_EQ((*cfg)["auto_map"]["AutoModel"], "modeling_colqwen3.ColQwen3");
    EXPECT_TRUE((*cfg)["text_config"].contains("rope_scaling"));
  }
  if (family == "qwen3_vl") {
    EXPECT_EQ((*cfg)["text_config"]["rope_parameters"]["mrope_section"],
              json::parse("[3,2,2]"));  // [24,20,20] scaled to head_dim 16
  }
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, GeneratorFamilyTest,
                         ::testing::Values("llama", "qwen2", "qwen3",
                                           "qwen3_vl", "colqwen3"));

TEST(GeneratorTest, DeterministicPerSeed) {
  std::string root = MakeTempDir();
  GeneratorOptions o;
  o.family = "qwen3";
  o.seed = 5;
  ASSERT_TRUE(GenerateCheckpoint(o, JoinPath(root, "a")).ok());
  ASSERT_TRUE(GenerateCheckpoint(o, JoinPath(root, "b")).ok());
  o.seed = 6;
  ASSERT_TRUE(GenerateCheckpoint(o, JoinPath(root, "c")).ok());
  auto a = ReadFile(JoinPath(root, "a/model.safetensors"));
  auto b = ReadFile(JoinPath(root, "b/model.safetensors"));
  auto c = ReadFile(JoinPath(root, "c/model.safetensors"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_EQ(a->size(), c->size());

  // Statistics of the init: std 0.02 weights, ones for norms.
  auto ckpt = Checkpoint::Open(JoinPath(root, "a"));
  ASSERT_TRUE(ckpt.ok());
  auto w = (*ckpt)->Load("model.embed_tokens.weight");
  ASSERT_TRUE(w.ok());
  EXPECT_NEAR(w->std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(w->mean().item<double>(), 0.0, 0.002);
  auto n = (*ckpt)->Load("model.layers.0.self_attn.q_norm.weight");
  ASSERT_TRUE(n.ok());
  EXPECT_TRUE(torch::equal(*n, torch::ones({16})));
}

TEST(GeneratorTest, Bfloat16ShardedWithCalibration) {
  std::string dir = JoinPath(MakeTempDir(), "m");
  GeneratorOptions o;
  o.family = "colqwen3";
  o.dtype = "bfloat16";
  o.max_shard_bytes = 40'000;
  o.calib_samples = 4;
  o.calib_seqlen = 32;
  ASSERT_TRUE(GenerateCheckpoint(o, dir).ok());
  EXPECT_TRUE(PathExists(JoinPath(dir, "model.safetensors.index.json")));
  EXPECT_FALSE(PathExists(JoinPath(dir, "model.safetensors")));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_GT((*ckpt)->files().size(), 2u);
  auto l = DiscoverLayout(dir, **ckpt);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->text.torch_dtype, "bfloat16");
  auto info = (*ckpt)->Info(l->embed_tokens);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ((*info)->dtype, DType::kBF16);

  auto calib = ReadFile(JoinPath(dir, "calib.jsonl"));
  ASSERT_TRUE(calib.ok());
  std::vector<std::string> lines =
      absl::StrSplit(*calib, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);
  for (const std::string& line : lines) {
    json j = json::parse(line);
    ASSERT_EQ(j["input_ids"].size(), 32u);
    std::string text = j["text"];
    ASSERT_EQ(text.size(), 32u);
    EXPECT_EQ(j["input_ids"][0], static_cast<int>(text[0]));
    EXPECT_TRUE(j.contains("source"));
  }
}

TEST(GeneratorTest, RejectsBadOptionsAndExistingOutput) {
  std::string root = MakeTempDir();
  GeneratorOptions o;
  o.family = "gpt2";
  auto st = GenerateCheckpoint(o, JoinPath(root, "x"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("gpt2"));
  o = GeneratorOptions();
  o.preset = "huge";
  EXPECT_THAT(std::string(GenerateCheckpoint(o, JoinPath(root, "x")).message()),
              HasSubstr("huge"));
  o = GeneratorOptions();
  o.vocab_size = 100;
  EXPECT_THAT(std::string(GenerateCheckpoint(o, JoinPath(root, "x")).message()),
              HasSubstr("vocab_size"));
  o = GeneratorOptions();
  o.dtype = "int8";
  EXPECT_THAT(std::string(GenerateCheckpoint(o, JoinPath(root, "x")).message()),
              HasSubstr("int8"));
  o = GeneratorOptions();
  o.num_kv_heads = 3;
  EXPECT_FALSE(GenerateCheckpoint(o, JoinPath(root, "x")).ok());
  o = GeneratorOptions();
  o.calib_samples = 2;
  EXPECT_FALSE(GenerateCheckpoint(o, JoinPath(root, "x")).ok());
  EXPECT_FALSE(PathExists(JoinPath(root, "x")));

  // Existing non-empty output is refused; an empty directory is filled.
  ASSERT_TRUE(MakeDirs(JoinPath(root, "full")).ok());
  ASSERT_TRUE(WriteFileAtomically(JoinPath(root, "full/f"), "x").ok());
  o = GeneratorOptions();
  EXPECT_FALSE(GenerateCheckpoint(o, JoinPath(root, "full")).ok());
  ASSERT_TRUE(MakeDirs(JoinPath(root, "empty")).ok());
  EXPECT_TRUE(GenerateCheckpoint(o, JoinPath(root, "empty")).ok());
  EXPECT_TRUE(PathExists(JoinPath(root, "empty/model.safetensors")));
}

}  // namespace
}  // namespace roundhouse::engine
