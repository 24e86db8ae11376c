#include "worker/engine/packing.h"

#include <cstdint>
#include <tuple>

#include "gtest/gtest.h"
#include "worker/engine/quantizer.h"

namespace roundhouse::engine {
namespace {

// A tuned-looking QDQ result (random V and min/max scales) of a random
// weight, so codes, zeros and scales are all non-trivial.
QdqResult RandomQdq(int64_t out, int64_t in, const QuantParams& p,
                    uint64_t seed) {
  torch::manual_seed(seed);
  LinearQuantizer qz(torch::randn({out, in}) * 0.03, p);
  torch::NoGradGuard ng;
  qz.v().uniform_(-0.5, 0.5);
  qz.min_scale().uniform_(0.6, 1.0);
  qz.max_scale().uniform_(0.6, 1.0);
  return qz.Finalize();
}

const Packing kAll[] = {Packing::kAutoRoundGptq, Packing::kAutoRoundPlain,
                        Packing::kAutoRoundAwq, Packing::kAutoGptq,
                        Packing::kAutoAwq};

bool IsAwqPacking(Packing p) {
  return p == Packing::kAutoRoundAwq || p == Packing::kAutoAwq;
}

class PackingRoundTripTest
    : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(PackingRoundTripTest, DequantizeInvertsPackExactly) {
  const auto [bits, group, sym] = GetParam();
  const QuantParams p{bits, group, sym};
  const int64_t out = 96, in = 256;
  QdqResult r = RandomQdq(out, in, p, 100 + bits * 7 + group);
  torch::Tensor bias = torch::randn({out});
  for (Packing packing : kAll) {
    SCOPED_TRACE(std::string(PackingName(packing)));
    auto packed = PackLinear(packing, r, p, bias);
    if (IsAwqPacking(packing) && bits != 4) {
      ASSERT_FALSE(packed.ok());
      EXPECT_NE(packed.status().message().find("bits"), std::string::npos);
      continue;
    }
    ASSERT_TRUE(packed.ok()) << packed.status();
    const auto& t = packed->tensors;
    const int64_t g = group == -1 ? in : group;
    const int64_t ng = in / g;
    if (IsAwqPacking(packing)) {
      EXPECT_EQ(t.at("qweight").sizes(), torch::IntArrayRef({in, out / 8}));
      EXPECT_EQ(t.at("qzeros").sizes(), torch::IntArrayRef({ng, out / 8}));
    } else {
      EXPECT_EQ(t.at("qweight").sizes(),
                torch::IntArrayRef({in * bits / 32, out}));
      EXPECT_EQ(t.at("qzeros").sizes(),
                torch::IntArrayRef({ng, out * bits / 32}));
    }
    EXPECT_EQ(t.at("qweight").scalar_type(), torch::kInt32);
    EXPECT_EQ(t.at("scales").sizes(), torch::IntArrayRef({ng, out}));
    EXPECT_EQ(t.at("scales").scalar_type(), torch::kFloat16);
    EXPECT_EQ(t.at("bias").scalar_type(), torch::kFloat16);
    EXPECT_EQ(t.count("g_idx"), packing == Packing::kAutoGptq ? 1u : 0u);
    auto w = DequantizePacked(packing, t, p, out, in);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE(torch::equal(*w, r.weight_qdq));
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, PackingRoundTripTest,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8),
                                            ::testing::Values(32, 64, 128, -1),
                                            ::testing::Bool()));

TEST(PackingTest, SymGptqZeroConstants) {
  struct Case {
    int bits;
    std::vector<uint32_t> words;
  };
  const std::vector<Case> cases = {
      {4, {0x77777777u}},
      {2, {0x55555555u}},
      {8, {0x7F7F7F7Fu}},
      {3, {0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du}},
  };
  for (const Case& c : cases) {
    const QuantParams p{c.bits, 32, true};
    QdqResult r = RandomQdq(64, 64, p, 1);
    auto packed = PackLinear(Packing::kAutoRoundGptq, r, p, std::nullopt);
    ASSERT_TRUE(packed.ok()) << packed.status();
    torch::Tensor qz = packed->tensors.at("qzeros");
    ASSERT_EQ(qz.size(1) % c.words.size(), 0u);
    for (int64_t gi = 0; gi < qz.size(0); ++gi) {
      for (int64_t k = 0; k < qz.size(1); ++k) {
        EXPECT_EQ(static_cast<uint32_t>(qz[gi][k].item<int32_t>()),
                  c.words[k % c.words.size()])
            << "bits=" << c.bits << " word " << k;
      }
    }
    // Plain auto_round stores 2^(b-1) as-is.
    auto plain = PackLinear(Packing::kAutoRoundPlain, r, p, std::nullopt);
    ASSERT_TRUE(plain.ok());
    if (c.bits == 4) {
      EXPECT_EQ(static_cast<uint32_t>(
                    plain->tensors.at("qzeros")[0][0].item<int32_t>()),
                0x88888888u);
    }
  }
}

// Hand-made codes: checks bit positions, not just invertibility.
TEST(PackingTest, BitLayoutMatchesSpec) {
  const QuantParams p{4, 128, true};
  const int64_t out = 32, in = 256;
  QdqResult r;
  r.codes = torch::zeros({out, in}, torch::kInt32);
  r.scale = torch::ones({out, 2}, torch::kFloat16);
  r.zero = torch::full({out, 2}, 8, torch::kInt32);
  for (int j = 0; j < 8; ++j) r.codes[3][j] = j + 1;
  r.codes[5][130] = 11;  // §4.5: qweight[16, 5] bits 8..11
  r.weight_qdq = torch::zeros({out, in});
  auto packed = PackLinear(Packing::kAutoRoundGptq, r, p, std::nullopt);
  ASSERT_TRUE(packed.ok()) << packed.status();
  torch::Tensor qw = packed->tensors.at("qweight");
  EXPECT_EQ(static_cast<uint32_t>(qw[0][3].item<int32_t>()), 0x87654321u);
  EXPECT_EQ(static_cast<uint32_t>(qw[16][5].item<int32_t>()), 0xB00u);

  // AWQ: channel j of 8 goes to nibble order[j] = [0,4,1,5,2,6,3,7][j].
  QdqResult a;
  a.codes = torch::zeros({out, in}, torch::kInt32);
  for (int j = 0; j < 8; ++j) a.codes[j][0] = j + 1;
  a.scale = torch::ones({out, 2}, torch::kFloat16);
  a.zero = torch::zeros({out, 2}, torch::kInt32);
  a.weight_qdq = torch::zeros({out, in});
  auto awq = PackLinear(Packing::kAutoRoundAwq, a, p, std::nullopt);
  ASSERT_TRUE(awq.ok()) << awq.status();
  EXPECT_EQ(
      static_cast<uint32_t>(awq->tensors.at("qweight")[0][0].item<int32_t>()),
      0x86427531u);
}

TEST(PackingTest, GIdxAndErrors) {
  const QuantParams p{4, 64, true};
  QdqResult r = RandomQdq(32, 128, p, 3);
  auto packed = PackLinear(Packing::kAutoGptq, r, p, std::nullopt);
  ASSERT_TRUE(packed.ok());
  torch::Tensor g = packed->tensors.at("g_idx");
  EXPECT_EQ(g.scalar_type(), torch::kInt32);
  EXPECT_EQ(g[63].item<int>(), 0);
  EXPECT_EQ(g[64].item<int>(), 1);

  // Missing tensor named; wrong shape named.
  auto t = packed->tensors;
  t.erase("scales");
  auto w = DequantizePacked(Packing::kAutoGptq, t, p, 32, 128);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("scales"), std::string::npos);
  auto w2 = DequantizePacked(Packing::kAutoGptq, packed->tensors, p, 64, 128);
  ASSERT_FALSE(w2.ok());
  EXPECT_NE(w2.status().message().find("qweight"), std::string::npos);

  // 3-bit needs in % 32 == 0.
  const QuantParams p3{3, -1, true};
  QdqResult r3 = RandomQdq(32, 48, p3, 4);
  auto bad = PackLinear(Packing::kAutoRoundGptq, r3, p3, std::nullopt);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("in_features"), std::string::npos);
}

TEST(PackingTest, DefaultPackingChoice) {
  EXPECT_EQ(DefaultAutoRoundPacking(true, true), Packing::kAutoRoundGptq);
  EXPECT_EQ(DefaultAutoRoundPacking(false, true), Packing::kAutoRoundAwq);
  EXPECT_EQ(DefaultAutoRoundPacking(false, false), Packing::kAutoRoundPlain);
  EXPECT_EQ(PackingName(Packing::kAutoRoundGptq), "auto_round:auto_gptq");
}

}  // namespace
}  // namespace roundhouse::engine
