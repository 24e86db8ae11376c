#include "worker/engine/model_config.h"

#include <stdlib.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/generator.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string MakeTempDir() {
  std::string tmpl = JoinPath(::testing::TempDir(), "mc_test_XXXXXX");
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

json LlamaConfig() {
  return json::parse(R"({
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
    "num_hidden_layers": 5, "num_attention_heads": 8,
    "num_key_value_heads": 4, "vocab_size": 512, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true,
    "torch_dtype": "float32"})");
}

json VlConfig(const std::string& model_type) {
  return json::parse(absl::StrCat(R"({"model_type": ")", model_type, R"(",
    "text_config": {"hidden_size": 2560, "intermediate_size": 9728,
      "num_hidden_layers": 36, "num_attention_heads": 32,
      "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
      "vocab_size": 151936},
    "vision_config": {"depth": 24}})"));
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(ModelConfigTest, ParsesLlamaWithDefaults) {
  json c = LlamaConfig();
  auto t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->hidden_size, 64);
  EXPECT_EQ(t->head_dim, 8);  // hidden / heads
  EXPECT_EQ(t->num_kv_heads, 4);
  EXPECT_DOUBLE_EQ(t->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(t->rope_theta, 10000.0);
  EXPECT_TRUE(t->tie_word_embeddings);
  EXPECT_FALSE(t->qk_norm);
  EXPECT_FALSE(t->attention_bias);
  EXPECT_EQ(t->torch_dtype, "float32");
  c.erase("num_key_value_heads");
  t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->num_kv_heads, 8);
}

TEST(ModelConfigTest, FamilyFlags) {
  json c = LlamaConfig();
  auto q2 = ParseTextConfig(c, ModelFamily::kQwen2);
  ASSERT_TRUE(q2.ok());
  EXPECT_TRUE(q2->attention_bias);
  EXPECT_FALSE(q2->o_proj_bias);
  EXPECT_FALSE(q2->qk_norm);
  auto q3 = ParseTextConfig(c, ModelFamily::kQwen3);
  ASSERT_TRUE(q3.ok());
  EXPECT_TRUE(q3->qk_norm);
  EXPECT_FALSE(q3->attention_bias);
  c["attention_bias"] = true;
  c["mlp_bias"] = true;
  auto ll = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_TRUE(ll.ok());
  EXPECT_TRUE(ll->attention_bias);
  EXPECT_TRUE(ll->o_proj_bias);
  EXPECT_TRUE(ll->mlp_bias);
}

TEST(ModelConfigTest, MissingAndMistypedFieldsNameTheKey) {
  json c = LlamaConfig();
  c.erase("hidden_size");
  auto t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), HasSubstr("config.json: hidden_size is missing"));

  json vl = VlConfig("qwen3_vl");
  vl["text_config"].erase("hidden_size");
  t = ParseTextConfig(vl, ModelFamily::kQwen3VL);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()),
              HasSubstr("config.json: text_config.hidden_size is missing"));

  vl = VlConfig("colqwen3");
  vl.erase("text_config");
  t = ParseTextConfig(vl, ModelFamily::kColQwen3);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), HasSubstr("text_config is missing"));

  c = LlamaConfig();
  c["num_attention_heads"] = "eight";
  t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), HasSubstr("num_attention_heads"));

  c = LlamaConfig();
  c["num_key_value_heads"] = 3;
  t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), HasSubstr("num_key_value_heads"));

  c = LlamaConfig();
  c["hidden_size"] = 60;  // not a multiple of 8 heads, no head_dim
  t = ParseTextConfig(c, ModelFamily::kLlama);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), HasSubstr("head_dim"));
}

TEST(ModelConfigTest, RopeSpellings) {
  // transformers 4.57: rope_scaling + rope_theta.
  json a = VlConfig("colqwen3");
  a["text_config"]["rope_scaling"] = json::parse(
      R"({"mrope_interleaved": true, "mrope_section": [24, 20, 20],
          "rope_type": "default"})");
  a["text_config"]["rope_theta"] = 5000000;
  // transformers 5: rope_parameters with the theta inside.
  json b = VlConfig("colqwen3");
  b["text_config"]["rope_parameters"] = json::parse(
      R"({"mrope_interleaved": true, "mrope_section": [24, 20, 20],
          "rope_theta": 5000000, "rope_type": "default"})");
  for (const json& c : {a, b}) {
    auto t = ParseTextConfig(c, ModelFamily::kColQwen3);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_DOUBLE_EQ(t->rope_theta, 5e6);
    EXPECT_THAT(t->mrope_section, ::testing::ElementsAre(24, 20, 20));
    EXPECT_TRUE(t->mrope_interleaved);
    EXPECT_EQ(t->rope_type, "default");
    EXPECT_TRUE(t->qk_norm);
  }
  b["text_config"]["rope_parameters"]["rope_theta"] = 1000.0;
  auto t = ParseTextConfig(b, ModelFamily::kColQwen3);
  ASSERT_TRUE(t.ok());
  EXPECT_DOUBLE_EQ(t->rope_theta, 1000.0);
  // Llama 3 style scaling keeps its type.
  json l = LlamaConfig();
  l["rope_scaling"] = json::parse(
      R"({"rope_type": "llama3", "factor": 8.0})");
  t = ParseTextConfig(l, ModelFamily::kLlama);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->rope_type, "llama3");
  // An mrope_section larger than the head is refused.
  b["text_config"]["rope_parameters"]["mrope_section"] = {40, 20, 20};
  EXPECT_FALSE(ParseTextConfig(b, ModelFamily::kColQwen3).ok());
}

TEST(ModelConfigTest, DtypeAndTieSpellings) {
  json c = VlConfig("colqwen3");
  c["dtype"] = "bfloat16";
  auto t = ParseTextConfig(c, ModelFamily::kColQwen3);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->torch_dtype, "bfloat16");
  EXPECT_FALSE(t->tie_word_embeddings);
  c.erase("dtype");
  c["torch_dtype"] = "float16";
  c["text_config"]["tie_word_embeddings"] = true;
  t = ParseTextConfig(c, ModelFamily::kColQwen3);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->torch_dtype, "float16");
  EXPECT_TRUE(t->tie_word_embeddings);
  c["text_config"].erase("tie_word_embeddings");
  c["tie_word_embeddings"] = true;
  t = ParseTextConfig(c, ModelFamily::kColQwen3);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->tie_word_embeddings);
}

TEST(ModelConfigTest, DetectFamily) {
  EXPECT_EQ(*DetectFamily(json{{"model_type", "qwen2"}}), ModelFamily::kQwen2);
  EXPECT_EQ(*DetectFamily(json{{"model_type", "colqwen3"}}),
            ModelFamily::kColQwen3);
  EXPECT_EQ(*DetectFamily(json{{"architectures", {"ColQwen3"}}}),
            ModelFamily::kColQwen3);
  EXPECT_EQ(*DetectFamily(json{{"architectures", {"Qwen3ForCausalLM"}}}),
            ModelFamily::kQwen3);
  auto bad = DetectFamily(json{{"model_type", "gpt2"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(Message(bad.status()), HasSubstr("gpt2"));
  EXPECT_FALSE(DetectFamily(json::object()).ok());
  EXPECT_EQ(*ParseModelFamily("qwen3_vl"), ModelFamily::kQwen3VL);
  EXPECT_FALSE(ParseModelFamily("mistral").ok());
}

// Copies a checkpoint directory with tensor names rewritten and the config
// edited, to test the other spellings of the same model.
void RewriteCheckpoint(const std::string& from, const std::string& to,
                       const std::vector<std::pair<std::string, std::string>>&
                           renames,
                       const std::function<void(json&)>& edit_config,
                       const std::vector<std::pair<std::string, torch::Tensor>>&
                           extra = {}) {
  auto ckpt = Checkpoint::Open(from);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  SafetensorsWriter w(to, 0);
  for (const std::string& name : (*ckpt)->TensorNames()) {
    std::string n = name;
    for (const auto& [a, b] : renames) {
      if (n.rfind(a, 0) == 0) {
        n = b + n.substr(a.size());
        break;
      }
    }
    auto t = (*ckpt)->Load(name);
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(w.Add(n, *t).ok());
  }
  for (const auto& [n, t] : extra) ASSERT_TRUE(w.Add(n, t).ok());
  ASSERT_TRUE(w.Finish().ok());
  auto config = ReadConfigJson(from);
  ASSERT_TRUE(config.ok());
  edit_config(*config);
  ASSERT_TRUE(
      WriteFileAtomically(JoinPath(to, "config.json"), config->dump()).ok());
}

class ColQwen3LayoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    base_ = JoinPath(root_, "base");
    GeneratorOptions o;
    o.family = "colqwen3";
    ASSERT_TRUE(GenerateCheckpoint(o, base_).ok());
  }
  std::string root_, base_;
};

TEST_F(ColQwen3LayoutTest, CanonicalTomoroNames) {
  auto ckpt = Checkpoint::Open(base_);
  ASSERT_TRUE(ckpt.ok());
  auto l = DiscoverLayout(base_, **ckpt);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->family, ModelFamily::kColQwen3);
  EXPECT_EQ(l->lm_prefix, "vlm.model.language_model.");
  EXPECT_EQ(l->block_prefix, "vlm.model.language_model.layers");
  EXPECT_EQ(l->vision_prefix, "vlm.model.visual.");
  EXPECT_EQ(l->embed_tokens, "vlm.model.language_model.embed_tokens.weight");
  EXPECT_EQ(l->final_norm, "vlm.model.language_model.norm.weight");
  EXPECT_FALSE(l->lm_head.has_value());
  EXPECT_EQ(l->projection_weight, "embedding_proj_layer.weight");
  EXPECT_EQ(l->projection_bias, "embedding_proj_layer.bias");
  EXPECT_EQ(l->embed_dim, 16);
  EXPECT_EQ(l->text.mrope_section.size(), 3u);
  EXPECT_EQ(l->BlockName(1), "vlm.model.language_model.layers.1");
  EXPECT_THAT(l->BlockLinearNames(0),
              ::testing::ElementsAre(
                  "vlm.model.language_model.layers.0.self_attn.q_proj",
                  "vlm.model.language_model.layers.0.self_attn.k_proj",
                  "vlm.model.language_model.layers.0.self_attn.v_proj",
                  "vlm.model.language_model.layers.0.self_attn.o_proj",
                  "vlm.model.language_model.layers.0.mlp.gate_proj",
                  "vlm.model.language_model.layers.0.mlp.up_proj",
                  "vlm.model.language_model.layers.0.mlp.down_proj"));
}

TEST_F(ColQwen3LayoutTest, LegacyUnprefixedNamesCustomProjAndDimsKey) {
  const std::string dir = JoinPath(root_, "legacy");
  RewriteCheckpoint(base_, dir,
                    {{"vlm.model.language_model.", "language_model."},
                     {"vlm.model.visual.", "visual."},
                     {"embedding_proj_layer.", "custom_text_proj."}},
                    [](json& c) {
                      c.erase("embed_dim");
                      c["dims"] = 16;
                      // rope_parameters spelling and torch_dtype key.
                      json& t = c["text_config"];
                      json rope = t["rope_scaling"];
                      rope["rope_theta"] = t["rope_theta"];
                      t.erase("rope_scaling");
                      t.erase("rope_theta");
                      t["rope_parameters"] = rope;
                      c["torch_dtype"] = c["dtype"];
                      c.erase("dtype");
                    });
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  auto l = DiscoverLayout(dir, **ckpt);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->lm_prefix, "language_model.");
  EXPECT_EQ(l->vision_prefix, "visual.");
  EXPECT_EQ(l->projection_weight, "custom_text_proj.weight");
  EXPECT_EQ(l->embed_dim, 16);
  EXPECT_DOUBLE_EQ(l->text.rope_theta, 5e6);
  EXPECT_EQ(l->text.torch_dtype, "float32");
}

TEST_F(ColQwen3LayoutTest, ModelPrefixWithLmHeadAndNoProjectionBias) {
  const std::string dir = JoinPath(root_, "modelprefix");
  auto base = Checkpoint::Open(base_);
  ASSERT_TRUE(base.ok());
  auto emb = (*base)->Load("vlm.model.language_model.embed_tokens.weight");
  ASSERT_TRUE(emb.ok());
  RewriteCheckpoint(base_, dir,
                    {{"vlm.model.language_model.", "model.language_model."},
                     {"vlm.model.visual.", "model.visual."},
                     {"embedding_proj_layer.bias", "unrelated.bias"}},
                    [](json&) {}, {{"vlm.lm_head.weight", *emb}});
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  auto l = DiscoverLayout(dir, **ckpt);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->lm_prefix, "model.language_model.");
  EXPECT_EQ(l->vision_prefix, "model.visual.");
  EXPECT_EQ(l->lm_head, "vlm.lm_head.weight");
  EXPECT_FALSE(l->projection_bias.has_value());
}

TEST_F(ColQwen3LayoutTest, EmbedDimDisagreementIsAnError) {
  const std::string dir = JoinPath(root_, "baddim");
  RewriteCheckpoint(base_, dir, {}, [](json& c) { c["embed_dim"] = 320; });
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  auto l = DiscoverLayout(dir, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()), HasSubstr("embed_dim"));
  EXPECT_THAT(Message(l.status()), HasSubstr("config.json"));
}

TEST(ModelConfigLayoutTest, ShapeAndPresenceErrorsNameTheTensor) {
  std::string root = MakeTempDir();
  std::string base = JoinPath(root, "base");
  GeneratorOptions o;
  o.family = "llama";
  ASSERT_TRUE(GenerateCheckpoint(o, base).ok());

  // Config claims more kv heads than k_proj holds.
  std::string wrong = JoinPath(root, "wrong");
  RewriteCheckpoint(base, wrong, {}, [](json& c) {
    c["num_key_value_heads"] = 4;
  });
  auto ckpt = Checkpoint::Open(wrong);
  ASSERT_TRUE(ckpt.ok());
  auto l = DiscoverLayout(wrong, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()),
              HasSubstr("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_THAT(Message(l.status()), HasSubstr("expected [64,64]"));

  // More layers in the config than in the checkpoint.
  std::string missing = JoinPath(root, "missing");
  RewriteCheckpoint(base, missing, {}, [](json& c) {
    c["num_hidden_layers"] = 3;
  });
  ckpt = Checkpoint::Open(missing);
  ASSERT_TRUE(ckpt.ok());
  l = DiscoverLayout(missing, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()), HasSubstr("model.layers.2."));

  // Fewer layers in the config than in the checkpoint.
  std::string extra = JoinPath(root, "extra");
  RewriteCheckpoint(base, extra, {}, [](json& c) {
    c["num_hidden_layers"] = 1;
  });
  ckpt = Checkpoint::Open(extra);
  ASSERT_TRUE(ckpt.ok());
  l = DiscoverLayout(extra, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()), HasSubstr("model.layers.1."));

  // A config field missing: the error names the file.
  std::string nohidden = JoinPath(root, "nohidden");
  RewriteCheckpoint(base, nohidden, {}, [](json& c) {
    c.erase("intermediate_size");
  });
  ckpt = Checkpoint::Open(nohidden);
  ASSERT_TRUE(ckpt.ok());
  l = DiscoverLayout(nohidden, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()),
              HasSubstr(nohidden + "/config.json: intermediate_size is missing"));

  // Untied without lm_head.
  std::string nohead = JoinPath(root, "nohead");
  RewriteCheckpoint(base, nohead, {{"lm_head.weight", "other.weight"}},
                    [](json&) {});
  ckpt = Checkpoint::Open(nohead);
  ASSERT_TRUE(ckpt.ok());
  l = DiscoverLayout(nohead, **ckpt);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(Message(l.status()), HasSubstr("lm_head.weight"));
}

TEST(ModelConfigLayoutTest, ReadConfigJsonErrorsNameTheFile) {
  std::string dir = MakeTempDir();
  auto c = ReadConfigJson(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsNotFound(c.status()));
  EXPECT_THAT(Message(c.status()), HasSubstr(dir + "/config.json"));
  ASSERT_TRUE(WriteFileAtomically(JoinPath(dir, "config.json"), "{oops").ok());
  c = ReadConfigJson(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr(dir + "/config.json"));
}

}  // namespace
}  // namespace roundhouse::engine
