#include "worker/engine/tokenizer/calibration.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/tokenizer/tokenizer_testdata.h"

namespace roundhouse::calibration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CalibrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(
        ::testing::TempDir(), "/calib_",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(MakeDirs(dir_ + "/tok").ok());
    Write("tok/tokenizer.json", tokenizer::testdata::SmallTokenizerJson());
    Write("tok/tokenizer_config.json",
          R"({"pad_token": "<|endoftext|>", "eos_token": "<x>",
              "bos_token": null})");
  }
  std::string Write(const std::string& rel, const std::string& content) {
    const std::string path = dir_ + "/" + rel;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    return path;
  }
  // n records {"input_ids": [first, first+1, ...], "source": ...}.
  std::string IdsJsonl(const std::string& name,
                       const std::vector<std::string>& sources, int len) {
    std::string s;
    for (size_t i = 0; i < sources.size(); ++i) {
      s += "{\"input_ids\": [";
      for (int k = 0; k < len; ++k) {
        s += absl::StrCat(k ? "," : "", 1000 * (i + 1) + k);
      }
      s += absl::StrCat("], \"source\": \"", sources[i], "\"}\n");
    }
    return Write(name, s);
  }
  std::string dir_;
};

std::vector<std::string> Repeat(const std::string& v, int n) {
  return std::vector<std::string>(n, v);
}

TEST_F(CalibrationTest, RandomSelectionIsSeededAndDisjoint) {
  CalibrationOptions o;
  o.path = IdsJsonl("d.jsonl", Repeat("s", 50), 4);
  o.nsamples = 10;
  o.eval_samples = 5;
  o.seqlen = 16;
  auto a = BuildCalibrationSet(o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->samples.size(), 10u);
  ASSERT_EQ(a->eval_samples.size(), 5u);
  std::set<int32_t> firsts;
  for (const auto& s : a->samples) firsts.insert(s.input_ids[0]);
  for (const auto& s : a->eval_samples) firsts.insert(s.input_ids[0]);
  EXPECT_EQ(firsts.size(), 15u);                  // tuning and eval disjoint
  EXPECT_EQ(a->samples[0].input_ids.size(), 4u);  // L = longest, not seqlen
  EXPECT_EQ(a->content_sha256.size(), 64u);
  auto again = BuildCalibrationSet(o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->content_sha256, a->content_sha256);
  o.seed = 7;
  auto other = BuildCalibrationSet(o);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->content_sha256, a->content_sha256);
}

TEST_F(CalibrationTest, StratifiedEvenSharesAndRemainder) {
  std::vector<std::string> sources = Repeat("a", 30);
  for (auto s : Repeat("b", 10)) sources.push_back(s);
  for (auto s : Repeat("c", 2)) sources.push_back(s);
  CalibrationOptions o;
  o.path = IdsJsonl("d.jsonl", sources, 3);
  o.selection = "stratified";
  o.stratify_column = "source";
  o.nsamples = 12;  // share 4 each; c has 2, the remainder 2 comes from a/b
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->samples.size(), 12u);
  EXPECT_EQ(set->per_stratum["c"], 2);
  EXPECT_GE(set->per_stratum["a"], 4);
  EXPECT_GE(set->per_stratum["b"], 4);
  EXPECT_EQ(set->per_stratum["a"] + set->per_stratum["b"], 10);
  for (const auto& s : set->samples) {
    const int32_t rec = s.input_ids[0] / 1000;  // 1-based record number
    EXPECT_EQ(s.stratum, rec <= 30 ? "a" : rec <= 40 ? "b" : "c");
  }
}

TEST_F(CalibrationTest, ColQwen3QueryTemplateLeftPads) {
  CalibrationOptions o;
  o.path =
      Write("q.jsonl", "{\"query\": \"  ab  \"}\n{\"query\": \"abc abc\"}\n");
  o.field = "query";
  o.templ = "colqwen3_query";
  o.tokenizer_dir = dir_ + "/tok";
  o.nsamples = 2;
  o.seqlen = 64;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->pad_token_id, 9);
  ASSERT_EQ(set->samples.size(), 2u);
  const std::vector<int32_t> ten(10, 9);
  for (const auto& s : set->samples) {
    ASSERT_EQ(s.input_ids.size(), 13u);
    // The ten augmentation tokens are real tokens at the end.
    EXPECT_EQ(std::vector<int32_t>(s.input_ids.end() - 10, s.input_ids.end()),
              ten);
    EXPECT_EQ(std::vector<int8_t>(s.attention_mask.end() - 10,
                                  s.attention_mask.end()),
              std::vector<int8_t>(10, 1));
    if (s.attention_mask[0] == 0) {  // "ab" (stripped), left padded by 2
      EXPECT_THAT(s.attention_mask,
                  ElementsAre(0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1));
      EXPECT_EQ(s.input_ids[2], 5);
    } else {  // "abc abc" -> abc Ġ abc
      EXPECT_EQ(
          std::vector<int32_t>(s.input_ids.begin(), s.input_ids.begin() + 3),
          (std::vector<int32_t>{6, 4, 6}));
    }
  }
}

TEST_F(CalibrationTest, RawTemplateRightPadsAndTruncates) {
  CalibrationOptions o;
  o.path = Write("t.txt", "abc\n\nab ab ab ab ab ab\n");
  o.tokenizer_dir = dir_ + "/tok";
  o.nsamples = 2;
  o.seqlen = 4;
  o.pad_token_id = 0;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->samples.size(), 2u);
  for (const auto& s : set->samples) {
    ASSERT_EQ(s.input_ids.size(), 4u);
    if (s.input_ids[0] == 6) {
      EXPECT_THAT(s.input_ids, ElementsAre(6, 0, 0, 0));
      EXPECT_THAT(s.attention_mask, ElementsAre(1, 0, 0, 0));
    } else {
      EXPECT_THAT(s.input_ids, ElementsAre(5, 8, 8, 8));
      EXPECT_THAT(s.attention_mask, ElementsAre(1, 1, 1, 1));
    }
  }
}

TEST_F(CalibrationTest, PackCutsFullChunks) {
  CalibrationOptions o;
  o.path = IdsJsonl("d.jsonl", Repeat("s", 6), 5);  // 30 tokens
  o.templ = "pack";
  o.nsamples = 3;
  o.seqlen = 8;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->samples.size(), 3u);
  std::multiset<int32_t> seen;
  for (const auto& s : set->samples) {
    EXPECT_EQ(s.input_ids.size(), 8u);
    EXPECT_EQ(s.attention_mask, std::vector<int8_t>(8, 1));
    seen.insert(s.input_ids.begin(), s.input_ids.end());
  }
  EXPECT_EQ(seen.size(), 24u);
  o.nsamples = 4;  // 32 tokens > 30
  auto fewer = BuildCalibrationSet(o);
  EXPECT_THAT(fewer.status().message(), HasSubstr("only 3 usable"));
}

TEST_F(CalibrationTest, PackReaddsBosPerChunk) {
  ASSERT_TRUE(MakeDirs(dir_ + "/tok_bos").ok());
  Write("tok_bos/tokenizer.json",
        tokenizer::testdata::SmallTokenizerJson(
            R"({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}]})"));
  Write("tok_bos/tokenizer_config.json", R"({"bos_token": "<s>"})");
  CalibrationOptions o;
  // Documents encode to [<s> abc], [<s> ab Ġab], [<s> a a a].
  o.path = Write("docs.txt", "abc\nab ab\naaa\n");
  o.tokenizer_dir = dir_ + "/tok_bos";
  o.templ = "pack";
  o.nsamples = 2;
  o.seqlen = 4;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->samples.size(), 2u);
  std::multiset<int32_t> bodies;
  for (const auto& s : set->samples) {
    ASSERT_EQ(s.input_ids.size(), 4u);
    EXPECT_EQ(s.input_ids[0], 11);  // BOS re-added to every chunk
    bodies.insert(s.input_ids.begin() + 1, s.input_ids.end());
  }
  EXPECT_EQ(bodies, (std::multiset<int32_t>{6, 5, 8, 1, 1, 1}));
}

TEST_F(CalibrationTest, DropShortFilterOfTheReference) {
  CalibrationOptions o;
  o.path = Write("d.jsonl",
                 "{\"input_ids\": [1, 2, 3]}\n"                      // short
                 "{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}\n"    // ok
                 "{\"input_ids\": [7, 7, 7, 7, 7, 1, 2, 7, 9]}\n");  // rep.
  o.nsamples = 1;
  o.seqlen = 8;
  o.drop_short = true;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->samples[0].input_ids, ElementsAre(1, 2, 3, 4, 5, 6, 7, 8));
  o.nsamples = 2;
  auto two = BuildCalibrationSet(o);
  EXPECT_FALSE(two.ok());
  EXPECT_THAT(two.status().message(), HasSubstr("only 1 usable"));
  EXPECT_THAT(two.status().message(), HasSubstr("3 records"));
  o.allow_fewer = true;
  auto allowed = BuildCalibrationSet(o);
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->samples.size(), 1u);
}

TEST_F(CalibrationTest, DirectoryReadsAllFilesInSortedOrder) {
  ASSERT_TRUE(MakeDirs(dir_ + "/data/sub").ok());
  Write("data/b.txt", "abc\nab\n");
  Write("data/sub/a.jsonl", "{\"text\": \"ab ab\"}\n");
  Write("data/ignored.csv", "x,y\n");
  CalibrationOptions o;
  o.path = dir_ + "/data";
  o.tokenizer_dir = dir_ + "/tok";
  o.nsamples = 3;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->records_read, 3);
  EXPECT_EQ(set->samples.size(), 3u);
}

TEST_F(CalibrationTest, ErrorsNameFileLineAndField) {
  CalibrationOptions o;
  o.tokenizer_dir = dir_ + "/tok";
  o.nsamples = 1;

  o.path = dir_ + "/missing.jsonl";
  auto missing = BuildCalibrationSet(o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing.jsonl"));

  o.path = Write("f.jsonl", "{\"text\": \"ab\"}\n{\"txt\": \"ab\"}\n");
  auto field = BuildCalibrationSet(o);
  EXPECT_THAT(field.status().message(), HasSubstr("f.jsonl:2"));
  EXPECT_THAT(field.status().message(), HasSubstr("\"text\" not found"));

  o.path = Write("u.jsonl", "{\"text\": \"ab\"}\n{\"text\": \"a\xFF\"}\n");
  auto utf8 = BuildCalibrationSet(o);
  EXPECT_THAT(utf8.status().message(), HasSubstr("u.jsonl:2"));
  EXPECT_THAT(utf8.status().message(), HasSubstr("invalid UTF-8"));

  o.path = Write("e.jsonl", "\n\n");
  EXPECT_THAT(BuildCalibrationSet(o).status().message(),
              HasSubstr("empty dataset"));

  o.path = Write("j.jsonl", "{\"text\": \"ab\"\n");
  EXPECT_THAT(BuildCalibrationSet(o).status().message(),
              HasSubstr("j.jsonl:1: not a JSON object"));

  o.path = Write("ok.jsonl", "{\"text\": \"ab\"}\n");
  CalibrationOptions no_tok = o;
  no_tok.tokenizer_dir = "";
  EXPECT_THAT(BuildCalibrationSet(no_tok).status().message(),
              HasSubstr("calibration.tokenizer_dir"));

  ASSERT_TRUE(MakeDirs(dir_ + "/badtok").ok());
  Write("badtok/tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  CalibrationOptions bad_tok = o;
  bad_tok.tokenizer_dir = dir_ + "/badtok";
  auto bt = BuildCalibrationSet(bad_tok);
  EXPECT_THAT(bt.status().message(), HasSubstr("badtok/tokenizer.json"));
  EXPECT_THAT(bt.status().message(), HasSubstr("malformed"));

  CalibrationOptions bad_opt = o;
  bad_opt.nsamples = 0;
  EXPECT_THAT(BuildCalibrationSet(bad_opt).status().message(),
              HasSubstr("calibration.nsamples"));
  bad_opt = o;
  bad_opt.templ = "chat";
  EXPECT_THAT(BuildCalibrationSet(bad_opt).status().message(),
              HasSubstr("calibration.template"));

  CalibrationOptions strat = o;
  strat.selection = "stratified";
  strat.stratify_column = "source";
  EXPECT_THAT(BuildCalibrationSet(strat).status().message(),
              HasSubstr("ok.jsonl:1: stratify column \"source\" not found"));

  CalibrationOptions many = o;
  many.nsamples = 5;
  EXPECT_THAT(BuildCalibrationSet(many).status().message(),
              HasSubstr("only 1 usable samples"));
}

TEST_F(CalibrationTest, PresetOnTheDemoQueries) {
  const std::string demo = std::string(ROUNDHOUSE_SOURCE_DIR) +
                           "/worker/engine/tokenizer/demo/queries.jsonl";
  CalibrationOptions o = ColpaliTrainSetPreset(demo, dir_ + "/tok");
  EXPECT_EQ(o.nsamples, 256);
  EXPECT_EQ(o.seqlen, 512);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.stratify_column, "source");
  EXPECT_EQ(o.templ, "colqwen3_query");
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->records_read, 320);
  EXPECT_EQ(set->samples.size(), 256u);
  // 6 sources, share 256 / 6 = 42; energy_reports (40) and
  // healthcare_guidelines (20) are taken whole, the other four get their 42
  // plus the 26 remainder between them.
  ASSERT_EQ(set->per_stratum.size(), 6u);
  int total = 0;
  for (const auto& [source, n] : set->per_stratum) {
    total += n;
    if (source == "healthcare_guidelines") {
      EXPECT_EQ(n, 20);
    } else if (source == "energy_reports") {
      EXPECT_EQ(n, 40);
    } else {
      EXPECT_GE(n, 42) << source;
    }
  }
  EXPECT_EQ(total, 256);
  const size_t len = set->samples[0].input_ids.size();
  for (const auto& s : set->samples) {
    ASSERT_EQ(s.input_ids.size(), len);
    EXPECT_EQ(s.attention_mask.back(), 1);  // left padding
    EXPECT_EQ(s.input_ids.back(), 9);       // last augmentation token
  }
}

TEST_F(CalibrationTest, Stories260KInputIds) {
  const char* env = std::getenv("RH_SHARED_DIR");
  const std::string shared = env != nullptr ? env : ROUNDHOUSE_SHARED_DIR;
  const std::string path = shared + "/fixtures/stories260K-hf/calib.jsonl";
  if (!std::ifstream(path).good()) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL() << "shared fixture missing under CI=true: " << path;
    }
    GTEST_SKIP() << "shared fixture missing: " << path;
  }
  CalibrationOptions o;
  o.path = path;
  o.nsamples = 16;
  o.eval_samples = 4;
  o.seqlen = 64;
  auto set = BuildCalibrationSet(o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->records_read, 128);
  ASSERT_EQ(set->samples.size(), 16u);
  ASSERT_EQ(set->eval_samples.size(), 4u);
  EXPECT_EQ(set->pad_token_id, 0);
  for (const auto& s : set->samples) {
    ASSERT_EQ(s.input_ids.size(), 64u);
    EXPECT_EQ(s.input_ids[0], 1);  // BOS of the fixture
    EXPECT_EQ(s.attention_mask[0], 1);
    for (int32_t id : s.input_ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 512);
    }
  }
}

}  // namespace
}  // namespace roundhouse::calibration
