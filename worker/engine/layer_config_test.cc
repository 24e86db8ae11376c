#include "worker/engine/layer_config.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

Shapes StoriesLike() {
  return {{"model.layers.0.self_attn.q_proj", {64, 64}},
          {"model.layers.0.self_attn.k_proj", {32, 64}},
          {"model.layers.0.mlp.gate_proj", {172, 64}},
          {"model.layers.0.mlp.down_proj", {64, 172}},
          {"model.layers.1.self_attn.q_proj", {64, 64}},
          {"model.layers.1.self_attn.o_proj", {64, 96}}};
}

std::string Message(const absl::StatusOr<std::vector<ResolvedLayer>>& r) {
  return std::string(r.status().message());
}

TEST(LayerConfigTest, DefaultsAndReferenceSkips) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true}, {}, {});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 6u);
  EXPECT_TRUE((*r)[0].quantize);
  EXPECT_EQ((*r)[0].params.bits, 4);
  EXPECT_EQ((*r)[0].reason, "");
  EXPECT_FALSE((*r)[2].quantize);
  EXPECT_EQ((*r)[2].reason, "shape not divisible by 32");
  EXPECT_EQ((*r)[2].params.bits, 16);
  EXPECT_EQ((*r)[3].reason, "shape not divisible by 32");
  EXPECT_TRUE((*r)[5].quantize);  // 96 % 32 == 0
}

TEST(LayerConfigTest, GroupLargerThanInIsOneGroupPerRow) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 128, true}, {}, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].quantize);  // in = 64 < 128
  // in = 96 > 64 and 96 % 64 != 0 with the global group size: kept 16-bit.
  auto r64 = ResolveLayerConfig(StoriesLike(), {4, 64, true}, {}, {});
  ASSERT_TRUE(r64.ok()) << r64.status();
  EXPECT_FALSE((*r64)[5].quantize);
  EXPECT_EQ((*r64)[5].reason, "group size does not divide in");
}

TEST(LayerConfigTest, RulesExactRegexAndIgnore) {
  std::vector<LayerRule> rules = {
      {"model.layers.1.self_attn.q_proj", 8, std::nullopt, false},
      {R"(layers\.[01]\.self_attn\.q_proj)", 2, 64, std::nullopt},
      {"k_proj", 16, std::nullopt, std::nullopt},
  };
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true}, rules,
                              {"layers.1.self_attn.o"});
  ASSERT_TRUE(r.ok()) << r.status();
  // Layer 0 q_proj: regex rule.
  EXPECT_TRUE((*r)[0].quantize);
  EXPECT_EQ((*r)[0].params.bits, 2);
  EXPECT_EQ((*r)[0].params.group_size, 64);
  EXPECT_TRUE((*r)[0].params.sym);
  // k_proj: bits 16.
  EXPECT_FALSE((*r)[1].quantize);
  EXPECT_EQ((*r)[1].reason, "bits=16");
  // Layer 1 q_proj: the exact rule wins over the earlier-listed regex.
  EXPECT_EQ((*r)[4].params.bits, 8);
  EXPECT_EQ((*r)[4].params.group_size, 32);
  EXPECT_FALSE((*r)[4].params.sym);
  // Ignored.
  EXPECT_FALSE((*r)[5].quantize);
  EXPECT_EQ((*r)[5].reason, "ignored");
}

TEST(LayerConfigTest, BadRegexNamesPattern) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true},
                              {{"q_proj[", 4, std::nullopt, std::nullopt}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Message(r).find("q_proj["), std::string::npos) << Message(r);
}

TEST(LayerConfigTest, UnmatchedPatternNamesPattern) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true},
                              {{"lm_head", 8, std::nullopt, std::nullopt}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Message(r).find("lm_head"), std::string::npos) << Message(r);
  auto ig = ResolveLayerConfig(StoriesLike(), {4, 32, true}, {}, {"vision"});
  ASSERT_FALSE(ig.ok());
  EXPECT_NE(Message(ig).find("vision"), std::string::npos) << Message(ig);
}

TEST(LayerConfigTest, BadBitsAndGroupNameTheField) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true},
                              {{"q_proj", -1, std::nullopt, std::nullopt}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Message(r).find("bits"), std::string::npos) << Message(r);
  EXPECT_NE(Message(r).find("q_proj"), std::string::npos) << Message(r);
  auto g = ResolveLayerConfig(StoriesLike(), {4, 48, true}, {}, {});
  ASSERT_FALSE(g.ok());
  EXPECT_NE(Message(g).find("group_size"), std::string::npos) << Message(g);
  auto gb = ResolveLayerConfig(StoriesLike(), {5, 32, true}, {}, {});
  ASSERT_FALSE(gb.ok());
  EXPECT_NE(Message(gb).find("bits"), std::string::npos) << Message(gb);
}

TEST(LayerConfigTest, RuleGroupNotDividingNamesLayer) {
  auto r = ResolveLayerConfig(StoriesLike(), {4, 32, true},
                              {{"o_proj", std::nullopt, 64, std::nullopt}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Message(r).find("model.layers.1.self_attn.o_proj"),
            std::string::npos)
      << Message(r);
}

}  // namespace
}  // namespace roundhouse::engine
