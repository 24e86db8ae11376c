#include "worker/engine/inspect.h"

#include <stdlib.h>

#include <cstring>
#include <string>

#include "common/files.h"
#include "gmock/gmock.h"
#include "common/test_support.h"
#include "gtest/gtest.h"
#include "worker/engine/generator.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

using ::roundhouse::testing_support::InCi;
using ::roundhouse::testing_support::SharedDir;

#define REQUIRE_FIXTURE(path)                                               \
  do {                                                                      \
    if (!PathExists(path)) {                                                \
      if (InCi()) FAIL() << "fixture missing under CI=true: " << (path);    \
      GTEST_SKIP() << "fixture missing: " << (path)                         \
                   << " (set RH_SHARED_DIR to the shared folder)";          \
    }                                                                       \
  } while (0)

const json* FindLinear(const json& r, const std::string& name) {
  for (const json& l : r["linears"]) {
    if (l["name"] == name) return &l;
  }
  return nullptr;
}

TEST(InspectTest, Stories260KKeepsTheMlpIn16Bit) {
  const std::string dir = JoinPath(SharedDir(), "fixtures/stories260K-hf");
  REQUIRE_FIXTURE(JoinPath(dir, "model.safetensors"));
  auto r = InspectModel(dir, 4, 128);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["family"], "llama");
  EXPECT_EQ((*r)["config"]["num_layers"], 5);
  EXPECT_EQ((*r)["config"]["head_dim"], 8);
  EXPECT_EQ((*r)["config"]["vocab_size"], 512);
  EXPECT_EQ((*r)["prefixes"]["lm_head"], nullptr);
  ASSERT_EQ((*r)["linears"].size(), 35u);
  for (int b = 0; b < 5; ++b) {
    const std::string p = "model.layers." + std::to_string(b) + ".";
    for (const char* s : {"self_attn.q_proj", "self_attn.k_proj",
                          "self_attn.v_proj", "self_attn.o_proj"}) {
      const json* l = FindLinear(*r, p + s);
      ASSERT_NE(l, nullptr) << p + s;
      EXPECT_TRUE((*l)["quantizable"].get<bool>()) << p + s;
    }
    for (const char* s : {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      const json* l = FindLinear(*r, p + s);
      ASSERT_NE(l, nullptr) << p + s;
      EXPECT_FALSE((*l)["quantizable"].get<bool>()) << p + s;
      EXPECT_THAT((*l)["reason"].get<std::string>(), HasSubstr("172"));
    }
  }
  EXPECT_EQ((*r)["linears"][1]["shape"], json::parse("[32,64]"));  // k_proj
  EXPECT_EQ((*r)["quantizable_linears"], 20);
  EXPECT_EQ((*r)["kept_linears"], 15);
  EXPECT_EQ((*r)["layer_config"],
            json::parse(R"([{"name":"mlp\\.down_proj$","bits":16},
                            {"name":"mlp\\.gate_proj$","bits":16},
                            {"name":"mlp\\.up_proj$","bits":16}])"));
  // 512*64 embedding + 5 * 45,440 per block + 64 final norm (models.md §4a).
  EXPECT_EQ((*r)["total_params"], 260032);
  EXPECT_EQ((*r)["total_bytes"], 260032 * 4);
  ASSERT_EQ((*r)["components"].size(), 3u);
  EXPECT_EQ((*r)["components"][0]["name"], "language_model_blocks");
  EXPECT_EQ((*r)["components"][0]["params"], 5 * 45440);
  EXPECT_EQ((*r)["components"][1]["name"], "embeddings");
  EXPECT_EQ((*r)["components"][1]["params"], 512 * 64);
  // Per block the four fp32 attention projections (49,152 bytes) become
  // 2 x (2048 + 128 + 32) + 2 x (1024 + 64 + 16) = 6,624 bytes (G=128 > in,
  // so one group per row).
  EXPECT_EQ((*r)["estimate"]["bytes_after"], 1040128 - 5 * 49152 + 5 * 6624);

  std::string text = FormatInspectReport(*r);
  EXPECT_THAT(text, HasSubstr("mlp.gate_proj"));
  EXPECT_THAT(text, HasSubstr("keep 16-bit"));
  EXPECT_THAT(text, HasSubstr("quantize"));
  EXPECT_THAT(text, HasSubstr("language_model_blocks"));
}

TEST(InspectTest, GeneratedColQwen3Components) {
  std::string root = JoinPath(::testing::TempDir(), "inspect_XXXXXX");
  ASSERT_NE(::mkdtemp(root.data()), nullptr);
  const std::string dir = JoinPath(root, "m");
  GeneratorOptions o;
  o.family = "colqwen3";
  ASSERT_TRUE(GenerateCheckpoint(o, dir).ok());

  auto r = InspectModel(dir, 4, 128);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["family"], "colqwen3");
  EXPECT_EQ((*r)["quantizable_linears"], 14);
  EXPECT_EQ((*r)["kept_linears"], 0);
  EXPECT_TRUE((*r)["layer_config"].empty());
  std::vector<std::string> names;
  for (const json& c : (*r)["components"]) names.push_back(c["name"]);
  EXPECT_THAT(names, ::testing::ElementsAre("language_model_blocks",
                                            "embeddings", "final_norm",
                                            "vision_tower", "projection"));
  EXPECT_EQ((*r)["components"][4]["params"], 16 * 64 + 16);
  EXPECT_LT((*r)["estimate"]["bytes_after"].get<uint64_t>(),
            (*r)["estimate"]["bytes_before"].get<uint64_t>());

  // A group size that does not divide in=64 / in=128 keeps the Linears.
  r = InspectModel(dir, 4, 48);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["kept_linears"], 14);
  EXPECT_THAT((*r)["linears"][0]["reason"].get<std::string>(),
              HasSubstr("group_size 48"));
  EXPECT_EQ((*r)["estimate"]["bytes_after"], (*r)["estimate"]["bytes_before"]);
}

TEST(InspectTest, RejectsBadArguments) {
  EXPECT_THAT(std::string(InspectModel("/nonexistent", 1, 128).status().message()),
              HasSubstr("bits"));
  EXPECT_THAT(std::string(InspectModel("/nonexistent", 4, 0).status().message()),
              HasSubstr("group_size"));
  auto missing = InspectModel("/nonexistent-model-dir", 4, 128);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("/nonexistent-model-dir"));
}

}  // namespace
}  // namespace roundhouse::engine
