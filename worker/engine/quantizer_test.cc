#include "worker/engine/quantizer.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

struct Expected {
  std::vector<float> qdq;    // [out*in]
  std::vector<float> scale;  // [out*ng]
  std::vector<int> zero;     // [out*ng]
  std::vector<int> codes;    // [out*in]
};

// The closed-form RTN formulas of autoround-spec §1.3, element by element
// in plain C++ (no torch ops).
Expected ClosedForm(const torch::Tensor& w, const QuantParams& p) {
  torch::Tensor wc = w.contiguous();
  const int64_t out = wc.size(0), in = wc.size(1);
  const int64_t g =
      (p.group_size <= 0 || in < p.group_size) ? in : p.group_size;
  const int64_t ng = (in + g - 1) / g;
  const float* data = wc.data_ptr<float>();
  const float thr = static_cast<float>(c10::Half(1e-5f));
  Expected e;
  e.qdq.resize(out * in);
  e.codes.resize(out * in);
  e.scale.resize(out * ng);
  e.zero.resize(out * ng);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t k = 0; k < ng; ++k) {
      float mn = 0, mx = 0;  // padding zeros are part of the group
      for (int64_t i = k * g; i < std::min(in, (k + 1) * g); ++i) {
        mn = std::min(mn, data[o * in + i]);
        mx = std::max(mx, data[o * in + i]);
      }
      float s;
      int z;
      float qmin, qmax;
      if (p.sym) {
        const float m = static_cast<float>(1 << (p.bits - 1));
        const float a = -mn, c = mx;
        const float peak = c < a ? a : -c;
        s = static_cast<float>(c10::Half(peak / m));
        s = s < 0 ? std::min(s, -thr) : std::max(s, thr);
        z = 1 << (p.bits - 1);
        qmin = -m;
        qmax = m - 1;
      } else {
        const float qm = static_cast<float>((1 << p.bits) - 1);
        s = static_cast<float>(c10::Half((mx - mn) / qm));
        s = std::max(s, thr);
        z = static_cast<int>(std::nearbyint(-mn / s));
        qmin = 0;
        qmax = qm;
      }
      e.scale[o * ng + k] = s;
      e.zero[o * ng + k] = z;
      for (int64_t i = k * g; i < std::min(in, (k + 1) * g); ++i) {
        const float x = data[o * in + i] / s;
        float q = std::nearbyint(x) + (p.sym ? 0.0f : static_cast<float>(z));
        q = std::min(std::max(q, qmin), qmax);
        if (p.sym) {
          e.qdq[o * in + i] = s * q;
          e.codes[o * in + i] = static_cast<int>(q) + z;
        } else {
          e.qdq[o * in + i] = s * (q - static_cast<float>(z));
          e.codes[o * in + i] = static_cast<int>(q);
        }
      }
    }
  }
  return e;
}

torch::Tensor TestWeight(int64_t out, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({out, in}) * 0.05;
  w[0].zero_();      // all-zero row: scale = threshold
  w[1].fill_(0.01);  // one-sided row
  w[2][0] = -0.2;    // tie between the extremes (sym)
  w[2][1] = 0.2;
  return w;
}

void ExpectMatches(const QdqResult& r, const Expected& e) {
  auto qdq = r.weight_qdq.contiguous();
  auto codes = r.codes.contiguous();
  auto scale = r.scale.to(torch::kFloat32).contiguous();
  auto zero = r.zero.contiguous();
  ASSERT_EQ(qdq.numel(), static_cast<int64_t>(e.qdq.size()));
  ASSERT_EQ(scale.numel(), static_cast<int64_t>(e.scale.size()));
  for (size_t i = 0; i < e.qdq.size(); ++i) {
    ASSERT_EQ(qdq.data_ptr<float>()[i], e.qdq[i]) << "element " << i;
    ASSERT_EQ(codes.data_ptr<int32_t>()[i], e.codes[i]) << "element " << i;
  }
  for (size_t i = 0; i < e.scale.size(); ++i) {
    ASSERT_EQ(scale.data_ptr<float>()[i], e.scale[i]) << "group " << i;
    ASSERT_EQ(zero.data_ptr<int32_t>()[i], e.zero[i]) << "group " << i;
  }
}

class QuantRtnTest
    : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(QuantRtnTest, MatchesClosedForm) {
  const auto [bits, group, sym] = GetParam();
  QuantParams p{bits, group, sym};
  torch::Tensor w = TestWeight(32, 96, 7 + bits + group);
  QdqResult r = QuantizeRtn(w, p);
  EXPECT_EQ(r.weight_qdq.scalar_type(), torch::kFloat32);
  EXPECT_EQ(r.scale.scalar_type(), torch::kFloat16);
  EXPECT_EQ(r.zero.scalar_type(), torch::kInt32);
  const int64_t g = (group <= 0 || 96 < group) ? 96 : group;
  EXPECT_EQ(r.scale.size(1), (96 + g - 1) / g);
  ExpectMatches(r, ClosedForm(w, p));
  // Codes stay in range and dequantize exactly.
  EXPECT_GE(r.codes.min().item<int>(), 0);
  EXPECT_LE(r.codes.max().item<int>(), (1 << bits) - 1);
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, QuantRtnTest,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8),
                                            ::testing::Values(32, 64, 128, -1),
                                            ::testing::Bool()));

TEST(QuantSymTest, TieGoesToNegativeScaleAndFullRange) {
  // max == -min: the negative branch wins, so +max maps to code -m.
  torch::Tensor w = torch::tensor({{-0.8f, 0.8f, 0.1f, 0.0f}});
  QdqResult r = QuantizeRtn(w, {4, -1, true});
  EXPECT_LT(r.scale.item<float>(), 0);
  EXPECT_EQ(r.codes[0][1].item<int>(), 0);   // q = -8
  EXPECT_EQ(r.codes[0][0].item<int>(), 15);  // q clamped to 7
  EXPECT_EQ(r.zero[0][0].item<int>(), 8);
}

TEST(QuantTunableTest, FinalizeMatchesForwardAndCodes) {
  for (bool sym : {true, false}) {
    torch::Tensor w = TestWeight(64, 128, 3);
    LinearQuantizer qz(w, {4, 32, sym});
    {
      torch::NoGradGuard ng;
      qz.v().uniform_(-0.5, 0.5);
      qz.min_scale().uniform_(0.5, 1.2);  // > 1 must be clamped
      qz.max_scale().uniform_(0.5, 1.0);
    }
    torch::Tensor fwd = qz.QdqForward().detach();
    EXPECT_LE(qz.min_scale().max().item<float>(), 1.0f);
    QdqResult r = qz.Finalize();
    EXPECT_TRUE(torch::equal(fwd, r.weight_qdq)) << "sym=" << sym;
    torch::Tensor s = r.scale.to(torch::kFloat32).repeat_interleave(32, 1);
    torch::Tensor z = r.zero.repeat_interleave(32, 1);
    torch::Tensor deq = (r.codes - z).to(torch::kFloat32) * s;
    EXPECT_TRUE(torch::equal(deq, r.weight_qdq)) << "sym=" << sym;
    // Tuned differs from RTN.
    EXPECT_FALSE(
        torch::equal(r.weight_qdq, QuantizeRtn(w, {4, 32, sym}).weight_qdq));
  }
}

TEST(QuantTunableTest, GradientsReachAllTunables) {
  for (bool sym : {true, false}) {
    torch::Tensor w = TestWeight(32, 64, 5);
    LinearQuantizer qz(w, {4, 32, sym});
    {
      torch::NoGradGuard ng;
      qz.min_scale().fill_(0.9);
      qz.max_scale().fill_(0.9);
    }
    torch::Tensor target = torch::randn({32, 64}) * 0.05;
    (qz.QdqForward() - target).pow(2).sum().backward();
    for (torch::Tensor& t : qz.tunables()) {
      ASSERT_TRUE(t.grad().defined());
      EXPECT_GT(t.grad().abs().sum().item<float>(), 0) << "sym=" << sym;
    }
    EXPECT_EQ(qz.tunables().size(), 3u);
  }
  LinearQuantizer no_mm(TestWeight(32, 64, 5), {4, 32, true}, false);
  EXPECT_EQ(no_mm.tunables().size(), 1u);
  EXPECT_TRUE(no_mm.minmax_tunables().empty());
}

TEST(QuantTunableTest, SaveLoadStateRestoresParams) {
  LinearQuantizer qz(TestWeight(32, 64, 9), {3, 32, true});
  std::vector<torch::Tensor> saved = qz.SaveState();
  torch::Tensor before = qz.Finalize().weight_qdq;
  {
    torch::NoGradGuard ng;
    qz.v().fill_(0.4);
    qz.max_scale().fill_(0.6);
  }
  EXPECT_FALSE(torch::equal(before, qz.Finalize().weight_qdq));
  qz.LoadState(saved);
  EXPECT_TRUE(torch::equal(before, qz.Finalize().weight_qdq));
}

TEST(QuantTunableTest, Bf16WeightKeepsDtype) {
  torch::Tensor w = TestWeight(32, 64, 11).to(torch::kBFloat16);
  LinearQuantizer qz(w, {4, 32, true});
  EXPECT_EQ(qz.QdqForward().scalar_type(), torch::kBFloat16);
  QdqResult r = qz.Finalize();
  EXPECT_EQ(r.weight_qdq.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(qz.v().sizes(), torch::IntArrayRef({64, 32}));
}

TEST(QuantParamsTest, CreateRejectsBadInput) {
  auto bad_bits = LinearQuantizer::Create(torch::zeros({4, 4}), {5, 32, true});
  ASSERT_FALSE(bad_bits.ok());
  EXPECT_NE(bad_bits.status().message().find("bits"), std::string::npos);
  auto bad_group = LinearQuantizer::Create(torch::zeros({4, 4}), {4, 0, true});
  ASSERT_FALSE(bad_group.ok());
  EXPECT_NE(bad_group.status().message().find("group_size"), std::string::npos);
  auto bad_shape = LinearQuantizer::Create(torch::zeros({4}), {4, 32, true});
  EXPECT_FALSE(bad_shape.ok());
  auto ints = LinearQuantizer::Create(torch::zeros({4, 4}, torch::kInt32),
                                      {4, 32, true});
  EXPECT_FALSE(ints.ok());
  EXPECT_TRUE(
      LinearQuantizer::Create(torch::zeros({4, 4}), {4, 32, true}).ok());
}

}  // namespace
}  // namespace roundhouse::engine
