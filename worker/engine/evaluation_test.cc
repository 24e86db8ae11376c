#include "worker/engine/evaluation.h"

#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/generator.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;

torch::Tensor T(std::vector<double> v, std::vector<int64_t> shape) {
  return torch::tensor(v, torch::kFloat64).reshape(shape);
}

TEST(PercentileTest, LinearInterpolationLikeNumpy) {
  EXPECT_DOUBLE_EQ(Percentile({5, 1, 4, 2, 3}, 0.05), 1.2);  // h = 0.2
  EXPECT_DOUBLE_EQ(Percentile({5, 1, 4, 2, 3}, 0.5), 3.0);
  EXPECT_DOUBLE_EQ(Percentile({5, 1, 4, 2, 3}, 1.0), 5.0);
  EXPECT_DOUBLE_EQ(Percentile({7}, 0.05), 7.0);
  EXPECT_DOUBLE_EQ(Percentile({}, 0.05), 0.0);
}

TEST(CompareTokensTest, IdenticalOutputsHaveCosineOne) {
  torch::Tensor a = torch::randn({2, 3, 4}, torch::kFloat32);
  torch::Tensor mask = torch::ones({2, 3}, torch::kInt64);
  const TokenSimilarity s = CompareTokens(a, a, mask);
  EXPECT_EQ(s.tokens, 6);
  EXPECT_NEAR(s.mean, 1.0, 1e-12);
  EXPECT_NEAR(s.min, 1.0, 1e-12);
  EXPECT_NEAR(s.p5, 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(MaskedMse(a, a, mask), 0.0);
}

TEST(CompareTokensTest, KnownValuesAndMask) {
  // Tokens: cos((1,0),(1,0)) = 1, cos((0,1),(1,0)) = 0,
  // cos((1,1),(1,-1)) = 0, and a masked token that would be -1.
  torch::Tensor a = T({1, 0, 0, 1, 1, 1, 1, 0}, {1, 4, 2});
  torch::Tensor b = T({1, 0, 1, 0, 1, -1, -1, 0}, {1, 4, 2});
  torch::Tensor mask = torch::tensor({1, 1, 1, 0}, torch::kInt64)
                           .reshape({1, 4});
  const TokenSimilarity s = CompareTokens(a, b, mask);
  EXPECT_EQ(s.tokens, 3);
  EXPECT_NEAR(s.mean, 1.0 / 3, 1e-12);
  EXPECT_NEAR(s.min, 0.0, 1e-12);
  EXPECT_NEAR(s.p5, 0.0, 1e-12);  // sorted {0,0,1}, h = 0.1
  // Squared differences per token: 0, 1+1, 0+4 (masked: 4+0) over 3*2.
  EXPECT_NEAR(MaskedMse(a, b, mask), 6.0 / 6, 1e-12);
}

TEST(CompareTokensTest, NanPropagatesAndIsCounted) {
  torch::Tensor a = T({1, 0, 0, 1}, {1, 2, 2});
  torch::Tensor b = a.clone();
  b[0][1][0] = std::numeric_limits<double>::quiet_NaN();
  const TokenSimilarity s =
      CompareTokens(a, b, torch::ones({1, 2}, torch::kInt64));
  EXPECT_TRUE(std::isnan(s.mean));
  EXPECT_TRUE(std::isnan(s.min));
  torch::Tensor c = torch::tensor({1.0f, NAN, INFINITY, -INFINITY, 0.0f});
  EXPECT_EQ(CountNonFinite(c), 3);
  EXPECT_EQ(CountNonFinite(torch::ones({3}, torch::kInt32)), 0);
  EXPECT_EQ(CountNonFinite(torch::Tensor()), 0);
}

TEST(CorrelationTest, PearsonAndSpearmanKnownValues) {
  const std::vector<double> x = {1, 2, 3, 4, 5};
  EXPECT_NEAR(Pearson(x, {3, 5, 7, 9, 11}), 1.0, 1e-12);
  EXPECT_NEAR(Pearson(x, {-1, -2, -3, -4, -5}), -1.0, 1e-12);
  EXPECT_DOUBLE_EQ(Pearson(x, {2, 2, 2, 2, 2}), 0.0);
  // Monotone but not linear: Spearman 1, Pearson below 1.
  const std::vector<double> cube = {1, 8, 27, 64, 125};
  EXPECT_LT(Pearson(x, cube), 0.99);
  EXPECT_NEAR(Spearman(x, cube), 1.0, 1e-12);
  // Ties share their average rank: ranks {1, 2.5, 2.5, 4} vs {1, 2, 3, 4}
  // give 4.5 / sqrt(4.5 * 5).
  EXPECT_NEAR(Spearman({1, 2, 2, 3}, {1, 2, 3, 4}), 4.5 / std::sqrt(22.5),
              1e-12);
}

TEST(MaxSimTest, KnownScoresWithPadding) {
  // One query of two tokens (1,0), (0,1) plus a padded token (5,5).
  torch::Tensor q = T({1, 0, 0, 1, 5, 5}, {1, 3, 2});
  torch::Tensor qm = torch::tensor({1, 1, 0}, torch::kInt64).reshape({1, 3});
  // Document 0: (1,0), (0,0.5). Document 1: (0.6,0.8) and a padded (0,10).
  torch::Tensor d = T({1, 0, 0, 0.5, 0.6, 0.8, 0, 10}, {2, 2, 2});
  torch::Tensor dm =
      torch::tensor({1, 1, 1, 0}, torch::kInt64).reshape({2, 2});
  torch::Tensor s = MaxSimScores(q, qm, d, dm);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_NEAR(s[0][0].item<double>(), 1.0 + 0.5, 1e-12);
  EXPECT_NEAR(s[0][1].item<double>(), 0.6 + 0.8, 1e-12);
}

TEST(ScoreAgreementTest, KnownDifferences) {
  torch::Tensor fp = T({1, 2, 3, 4}, {2, 2});
  const ScoreAgreement same = CompareScores(fp, fp);
  EXPECT_EQ(same.pairs, 4);
  EXPECT_DOUBLE_EQ(same.mean_abs_diff, 0.0);
  EXPECT_NEAR(same.pearson, 1.0, 1e-12);
  EXPECT_NEAR(same.spearman, 1.0, 1e-12);
  const ScoreAgreement d = CompareScores(fp, T({1, 2, 3, 5}, {2, 2}));
  EXPECT_DOUBLE_EQ(d.mean_abs_diff, 0.25);
  EXPECT_DOUBLE_EQ(d.max_abs_diff, 1.0);
  EXPECT_NEAR(d.spearman, 1.0, 1e-12);  // same order
}

TEST(RetrievalTest, IdenticalScoresRecallOne) {
  torch::Tensor fp = torch::randn({5, 7}, torch::kFloat64);
  const RetrievalAgreement r = CompareRankings(fp, fp);
  EXPECT_EQ(r.queries, 5);
  EXPECT_EQ(r.documents, 7);
  EXPECT_DOUBLE_EQ(r.recall_at_1, 1.0);
  EXPECT_DOUBLE_EQ(r.recall_at_5, 1.0);
  EXPECT_DOUBLE_EQ(r.fp_self_recall_at_1, r.quantized_self_recall_at_1);
}

TEST(RetrievalTest, KnownRanks) {
  // fp: query i prefers document i.
  torch::Tensor fp = torch::zeros({3, 6}, torch::kFloat64);
  for (int i = 0; i < 3; ++i) fp[i][i] = 1.0;
  // Quantized: query 0 keeps document 0 first; query 1 ranks document 1
  // third (two documents higher): in top 5, not top 1; query 2 ranks
  // document 2 last.
  torch::Tensor q = T({9, 1, 1, 1, 1, 1,   //
                       5, 3, 4, 6, 0, 0,   //
                       5, 5, 0, 5, 5, 5},  //
                      {3, 6});
  const RetrievalAgreement r = CompareRankings(fp, q);
  EXPECT_DOUBLE_EQ(r.recall_at_1, 1.0 / 3);
  EXPECT_DOUBLE_EQ(r.recall_at_5, 2.0 / 3);
  EXPECT_DOUBLE_EQ(r.fp_self_recall_at_1, 1.0);
  EXPECT_DOUBLE_EQ(r.quantized_self_recall_at_1, 1.0 / 3);
  // A tie counts against the document: all-equal rows rank it last.
  const RetrievalAgreement tie =
      CompareRankings(fp, torch::ones({3, 6}, torch::kFloat64));
  EXPECT_DOUBLE_EQ(tie.recall_at_1, 0.0);
  EXPECT_DOUBLE_EQ(tie.recall_at_5, 0.0);
}

// ---- EvaluateQuantizedModel on generated checkpoints -------------------------

class EvaluateTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    root_ = JoinPath(::testing::TempDir(),
                     absl::StrCat("rh_eval_", GetParam(), "_", ::getpid()));
    ASSERT_TRUE(RemoveTree(root_).ok());
    GeneratorOptions o;
    o.family = GetParam();
    o.seed = 11;
    model_ = JoinPath(root_, "model");
    ASSERT_TRUE(GenerateCheckpoint(o, model_).ok());
    auto ckpt = Checkpoint::Open(model_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = std::move(*ckpt);
    auto layout = DiscoverLayout(model_, *ckpt_);
    ASSERT_TRUE(layout.ok()) << layout.status();
    layout_ = *layout;
    torch::manual_seed(5);
    ids_ = torch::randint(0, 259, {6, 16}, torch::kInt64);
    mask_ = torch::ones({6, 16}, torch::kInt64);
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(root_).ok()); }

  EvaluationInput Input(const Checkpoint* quantized) {
    EvaluationInput in;
    in.layout = &layout_;
    in.original = ckpt_.get();
    in.quantized.checkpoint = quantized;
    in.quantized.format = "auto_round";
    in.ids = ids_;
    in.mask = mask_;
    return in;
  }

  std::string root_, model_;
  std::unique_ptr<Checkpoint> ckpt_;
  ModelLayout layout_;
  torch::Tensor ids_, mask_;
};

// The "quantized" checkpoint is the original itself (nothing packed): every
// agreement metric must be exact.
TEST_P(EvaluateTest, IdenticalModelsAgreeExactly) {
  auto o = EvaluateQuantizedModel(Input(ckpt_.get()), {});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->passed) << o->message;
  const nlohmann::json& m = o->metrics;
  EXPECT_NEAR(m["hidden_states"]["token_cosine_similarity"]["mean"], 1.0,
              1e-9);
  EXPECT_EQ(m["hidden_states"]["token_cosine_similarity"]["tokens"], 96);
  EXPECT_DOUBLE_EQ(m["hidden_states"]["mse"], 0.0);
  EXPECT_EQ(m["hidden_states"]["non_finite_values"]["quantized"], 0);
  EXPECT_EQ(m["size"]["compression_ratio"], 1.0);
  EXPECT_GT(m["performance"]["tokens_per_second"]["fp"].get<double>(), 0);
  EXPECT_EQ(m["performance"]["resident_weight_bytes"]["fp"],
            m["performance"]["resident_weight_bytes"]["quantized"]);
  EXPECT_EQ(o->info["tokens"], 96);
  if (GetParam() == "colqwen3") {
    EXPECT_EQ(o->gate["gated_outputs"], "embeddings");
    EXPECT_EQ(m["embeddings"]["dim"], layout_.embed_dim);
    EXPECT_NEAR(m["embeddings"]["token_cosine_similarity"]["mean"], 1.0,
                1e-9);
    const nlohmann::json& r = m["retrieval"];
    EXPECT_EQ(r["documents"], 6);
    EXPECT_EQ(r["document_tokens"], 8);
    EXPECT_EQ(r["query_tokens"], 8);
    EXPECT_DOUBLE_EQ(r["recall_at_1"], 1.0);
    EXPECT_DOUBLE_EQ(r["recall_at_5"], 1.0);
    EXPECT_DOUBLE_EQ(r["maxsim_mean_abs_diff"], 0.0);
    EXPECT_FALSE(m.contains("perplexity"));
  } else {
    EXPECT_EQ(o->gate["gated_outputs"], "hidden_states");
    EXPECT_DOUBLE_EQ(m["perplexity"]["fp"], m["perplexity"]["quantized"]);
    EXPECT_GT(m["perplexity"]["fp"].get<double>(), 1.0);
    EXPECT_FALSE(m.contains("retrieval"));
  }
}

// A NaN in one weight of the "quantized" model fails the gate whatever the
// cosine threshold.
TEST_P(EvaluateTest, NanOutputsFailTheGate) {
  const std::string bad = JoinPath(root_, "nan");
  {
    SafetensorsWriter w(bad, 0);
    for (const std::string& n : ckpt_->TensorNames()) {
      auto t = ckpt_->Load(n);
      ASSERT_TRUE(t.ok());
      torch::Tensor c = t->clone();
      if (n == layout_.final_norm) c[0] = NAN;
      ASSERT_TRUE(w.Add(n, c).ok());
    }
    ASSERT_TRUE(w.Finish().ok());
  }
  auto bad_ckpt = Checkpoint::Open(bad);
  ASSERT_TRUE(bad_ckpt.ok()) << bad_ckpt.status();
  EvaluationThresholds thr;
  thr.min_token_cosine_similarity = -1.0;
  auto o = EvaluateQuantizedModel(Input(bad_ckpt->get()), thr);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->passed);
  EXPECT_THAT(o->message, HasSubstr("NaN/Inf"));
  EXPECT_GT(o->gate["non_finite_quantized"].get<int64_t>(), 0);
  EXPECT_EQ(o->metrics["hidden_states"]["non_finite_values"]["fp"], 0);
}

TEST_P(EvaluateTest, RejectsMissingSamplesAndUnknownPackedParams) {
  EvaluationInput in = Input(ckpt_.get());
  in.ids = torch::empty({0, 16}, torch::kInt64);
  in.mask = in.ids.clone();
  auto o = EvaluateQuantizedModel(in, {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);

  // A checkpoint with a packed module but no params for it.
  const std::string packed = JoinPath(root_, "packed");
  {
    SafetensorsWriter w(packed, 0);
    ASSERT_TRUE(w.Add("model.layers.0.mlp.up_proj.qweight",
                      torch::zeros({8, 128}, torch::kInt32))
                    .ok());
    ASSERT_TRUE(w.Finish().ok());
  }
  auto pc = Checkpoint::Open(packed);
  ASSERT_TRUE(pc.ok());
  auto o2 = EvaluateQuantizedModel(Input(pc->get()), {});
  EXPECT_EQ(o2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(o2.status().message()),
              HasSubstr("model.layers.0.mlp.up_proj"));
}

// The ColQwen3 retrieval gate: identical models pass any threshold; a
// model with another (random) projection head ranks differently and fails
// min_recall_at_1 = 1; a pool that cannot be built fails a set threshold.
TEST_P(EvaluateTest, RecallGate) {
  if (GetParam() != "colqwen3") GTEST_SKIP() << "ColQwen3 only";
  EvaluationThresholds thr;
  thr.min_token_cosine_similarity = -1;
  thr.min_recall_at_1 = 1.0;
  auto same = EvaluateQuantizedModel(Input(ckpt_.get()), thr);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_TRUE(same->passed) << same->message;
  EXPECT_EQ(same->gate["min_recall_at_1"], 1.0);

  const std::string other = JoinPath(root_, "other_head");
  {
    torch::manual_seed(99);
    SafetensorsWriter w(other, 0);
    for (const std::string& n : ckpt_->TensorNames()) {
      auto t = ckpt_->Load(n);
      ASSERT_TRUE(t.ok());
      torch::Tensor c = t->clone();
      if (n == *layout_.projection_weight) c = torch::randn_like(c);
      ASSERT_TRUE(w.Add(n, c).ok());
    }
    ASSERT_TRUE(w.Finish().ok());
  }
  auto other_ckpt = Checkpoint::Open(other);
  ASSERT_TRUE(other_ckpt.ok());
  auto diff = EvaluateQuantizedModel(Input(other_ckpt->get()), thr);
  ASSERT_TRUE(diff.ok()) << diff.status();
  const double r1 = diff->metrics["retrieval"]["recall_at_1"];
  EXPECT_LT(r1, 1.0);
  EXPECT_FALSE(diff->passed);
  EXPECT_THAT(diff->message, HasSubstr("retrieval recall@1"));
  // The hidden states before the head are untouched.
  EXPECT_NEAR(diff->metrics["hidden_states"]["token_cosine_similarity"]
                  ["mean"].get<double>(),
              1.0, 1e-9);

  EvaluationInput one = Input(ckpt_.get());
  one.ids = ids_.slice(0, 0, 1);
  one.mask = mask_.slice(0, 0, 1);
  auto skipped = EvaluateQuantizedModel(one, thr);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_FALSE(skipped->passed);
  EXPECT_THAT(skipped->message, HasSubstr("fewer than 2 evaluation samples"));
  EXPECT_FALSE(skipped->metrics.contains("retrieval"));
}

INSTANTIATE_TEST_SUITE_P(Families, EvaluateTest,
                         ::testing::Values("llama", "colqwen3"));

}  // namespace
}  // namespace roundhouse::engine
