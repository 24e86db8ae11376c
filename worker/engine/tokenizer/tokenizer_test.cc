#include "worker/engine/tokenizer/tokenizer.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/tokenizer/tokenizer_testdata.h"

namespace roundhouse::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> Small() {
  auto tok = Tokenizer::LoadFromJson(testdata::SmallTokenizerJson(), "small");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(tok).value();
}

std::vector<int32_t> Enc(const Tokenizer& t, const std::string& s,
                         bool special = true) {
  auto ids = t.Encode(s, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{-1};
}

TEST(TokenizerTest, MergesFollowRankOrder) {
  auto t = Small();
  EXPECT_THAT(Enc(*t, "abc"), ElementsAre(6));
  // " ab": (a,b) has a lower rank than (Ġ,a), so Ġ + ab, then (Ġ,ab).
  EXPECT_THAT(Enc(*t, "ab ab"), ElementsAre(5, 8));
  // " ac": only (Ġ,a) applies.
  EXPECT_THAT(Enc(*t, " ac"), ElementsAre(7, 3));
  // " abc": (a,b), then (ab,c) outranks (Ġ,ab).
  EXPECT_THAT(Enc(*t, " abc"), ElementsAre(4, 6));
  EXPECT_THAT(Enc(*t, "aaa"), ElementsAre(1, 1, 1));
  EXPECT_THAT(Enc(*t, ""), ElementsAre());
}

TEST(TokenizerTest, UnknownCharactersMapToUnk) {
  auto t = Small();
  EXPECT_THAT(Enc(*t, "x"), ElementsAre(0));
  EXPECT_THAT(Enc(*t, "axb"), ElementsAre(1, 0, 2));
}

TEST(TokenizerTest, AddedTokensAreMatchedBeforeBpe) {
  auto t = Small();
  EXPECT_THAT(Enc(*t, "ab<|endoftext|>c"), ElementsAre(5, 9, 3));
  EXPECT_THAT(Enc(*t, "<|endoftext|><|endoftext|>"), ElementsAre(9, 9));
  // An incomplete added token is plain text.
  EXPECT_THAT(Enc(*t, "<|endoftext|"), ::testing::Not(::testing::Contains(9)));
  // lstrip on <x> removes the whitespace before it.
  EXPECT_THAT(Enc(*t, "a  <x>b"), ElementsAre(1, 10, 2));
  EXPECT_THAT(Enc(*t, "a  <s>b"), ElementsAre(1, 4, 4, 11, 2));
}

TEST(TokenizerTest, NfcNormalizerComposes) {
  auto t = Small();
  EXPECT_THAT(Enc(*t, "e\xCC\x81"), ElementsAre(14));  // e + U+0301 -> é
  EXPECT_THAT(Enc(*t, "\xC3\xA9"), ElementsAre(14));
}

TEST(TokenizerTest, LongWordsUseTheSameMergeOrder) {
  auto t = Small();
  std::string s20, s40, abc30;
  for (int i = 0; i < 20; ++i) s20 += "ab";
  for (int i = 0; i < 40; ++i) s40 += "ab";  // 80 symbols: heap path
  for (int i = 0; i < 30; ++i) abc30 += "abc";
  EXPECT_EQ(Enc(*t, s20), std::vector<int32_t>(20, 5));
  EXPECT_EQ(Enc(*t, s40), std::vector<int32_t>(40, 5));
  EXPECT_EQ(Enc(*t, abc30), std::vector<int32_t>(30, 6));
  // A long whitespace run stays one piece and does not blow the stack.
  EXPECT_EQ(Enc(*t, std::string(100000, ' ')), std::vector<int32_t>(100000, 4));
}

TEST(TokenizerTest, InvalidUtf8IsReplacedLikeTextDecoder) {
  auto t = Small();
  EXPECT_EQ(SanitizeUtf8("a\xFF"
                         "b"),
            "a\xEF\xBF\xBD"
            "b");
  // Truncated 4-byte sequence: one U+FFFD for the maximal subpart.
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98x"), "\xEF\xBF\xBDx");
  // Surrogate: E0..EF lead with an out-of-range second byte -> per byte.
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xF4\x90\x80\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
  size_t bad = 99;
  EXPECT_TRUE(IsValidUtf8("plain ascii and \xE2\x82\xAC"));
  EXPECT_FALSE(IsValidUtf8("0123456789\xC3", &bad));
  EXPECT_EQ(bad, 10u);
  // Encode never fails on invalid input: it encodes the sanitized text.
  EXPECT_EQ(Enc(*t,
                "a\xFF"
                "b"),
            Enc(*t,
                "a\xEF\xBF\xBD"
                "b"));
  EXPECT_THAT(Enc(*t,
                  "a\xFF"
                  "b"),
              ElementsAre(1, 0, 0, 0, 2));
}

TEST(TokenizerTest, TemplateProcessingAddsSpecialTokens) {
  auto tok = Tokenizer::LoadFromJson(
      testdata::SmallTokenizerJson(R"({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [], "special_tokens": {}})"),
      "template");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(Enc(**tok, "abc"), ElementsAre(11, 6));
  EXPECT_THAT(Enc(**tok, "abc", /*special=*/false), ElementsAre(6));
}

TEST(TokenizerTest, ConcurrentEncodesAgree) {
  auto t = Small();
  const std::string text = "ab abc<|endoftext|> ac e\xCC\x81 \xFF  <x>aaa";
  const std::vector<int32_t> expected = Enc(*t, text);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 500; ++i) {
        auto ids = t->Encode(text);
        if (!ids.ok() || *ids != expected) ++mismatches[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(TokenizerTest, Lookups) {
  auto t = Small();
  EXPECT_EQ(t->TokenToId("<|endoftext|>"), 9);
  EXPECT_EQ(t->TokenToId("ab"), 5);
  EXPECT_EQ(t->TokenToId("zz"), std::nullopt);
  EXPECT_EQ(t->IdToToken(8),
            "\xC4\xA0"
            "ab");
  EXPECT_EQ(t->IdToToken(99), std::nullopt);
  EXPECT_EQ(t->vocab_size(), 15);
}

TEST(TokenizerTest, LoadErrorsNameTheFileAndField) {
  auto missing = Tokenizer::LoadFromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent"));

  auto garbage = Tokenizer::LoadFromJson("{\"model\": [", "bad.json");
  EXPECT_THAT(garbage.status().message(), HasSubstr("bad.json"));
  EXPECT_THAT(garbage.status().message(), HasSubstr("malformed"));

  std::string json = testdata::SmallTokenizerJson();
  std::string bad_merge = json;
  bad_merge.replace(bad_merge.find("[\"ab\", \"c\"]"), 11, "[\"ab\", \"q\"]");
  auto m = Tokenizer::LoadFromJson(bad_merge, "t.json");
  EXPECT_THAT(m.status().message(), HasSubstr("model.merges[1]"));

  std::string bad_norm = json;
  bad_norm.replace(bad_norm.find("{\"type\": \"NFC\"}"), 15,
                   "{\"type\": \"Lowercase\"}");
  auto n = Tokenizer::LoadFromJson(bad_norm, "t.json");
  EXPECT_THAT(n.status().message(), HasSubstr("normalizer"));
  EXPECT_THAT(n.status().message(), HasSubstr("Lowercase"));

  std::string wordpiece = json;
  wordpiece.replace(wordpiece.find("\"type\": \"BPE\""), 13,
                    "\"type\": \"WordPiece\"");
  EXPECT_THAT(Tokenizer::LoadFromJson(wordpiece, "t.json").status().message(),
              HasSubstr("model.type"));

  std::string bad_regex = json;
  bad_regex.replace(bad_regex.find("(?i:"), 4, "((?i:");
  EXPECT_THAT(Tokenizer::LoadFromJson(bad_regex, "t.json").status().message(),
              HasSubstr("pre_tokenizer"));
}

}  // namespace
}  // namespace roundhouse::tokenizer
