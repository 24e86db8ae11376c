#include "worker/engine/fused_block_ops.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/decoder_block.h"
#include "worker/engine/test_tensors.h"

namespace roundhouse::engine {
namespace {

using ::roundhouse::engine::test_util::RelErr;

// The fused ops against the libtorch chains they replace (decoder_block.cc,
// signround.cc), run on the same CUDA device, values and gradients.
// Tolerances: fp32 1e-5 normwise (summation order, rsqrt's last bit); bf16
// and fp16 2e-3 normwise (the chains round at the same points, so most
// elements agree exactly; the rest differ by one step of the dtype where
// an fp32 sum landed on the other side of a rounding boundary).

#define SKIP_WITHOUT_CUDA()                                             \
  do {                                                                  \
    if (!torch::cuda::is_available() ||                                 \
        !FusedBlockOpsUsable(torch::zeros({1}, torch::kCUDA))) {        \
      GTEST_SKIP() << "needs a CUDA build and a GPU (fused block ops)"; \
    }                                                                   \
  } while (0)


double Tol(c10::ScalarType t) { return t == torch::kFloat32 ? 1e-5 : 2e-3; }

torch::Tensor Randn(std::vector<int64_t> shape, c10::ScalarType dtype,
                    int seed) {
  torch::manual_seed(seed);
  return torch::randn(shape).to(torch::kCUDA).to(dtype);
}

torch::Tensor Leaf(const torch::Tensor& t) {
  return t.detach().clone().set_requires_grad(true);
}

const std::vector<c10::ScalarType>& Dtypes() {
  static const auto* d = new std::vector<c10::ScalarType>{
      torch::kFloat32, torch::kBFloat16, torch::kFloat16};
  return *d;
}

TEST(FusedBlockOpsTest, CpuTensorsAreNotUsable) {
  EXPECT_FALSE(FusedBlockOpsUsable(torch::zeros({4})));
  EXPECT_FALSE(FusedBlockOpsUsable(torch::Tensor()));
}

TEST(FusedBlockOpsCudaTest, RmsNormMatchesTorchChain) {
  SKIP_WITHOUT_CUDA();
  // Row widths: hidden-like (vector path), head_dim, and one that is not a
  // multiple of the 16-byte pack (scalar path).
  for (c10::ScalarType dtype : Dtypes()) {
    for (int64_t dim : {2560, 128, 100}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " dim " +
                   std::to_string(dim));
      torch::Tensor x0 = Randn({3, 37, dim}, dtype, 1) * 3;
      torch::Tensor w = (Randn({dim}, dtype, 2) * 0.1 + 1).to(dtype);
      torch::Tensor gout = Randn({3, 37, dim}, dtype, 3);
      torch::Tensor xa = Leaf(x0), xb = Leaf(x0);
      torch::Tensor ya = FusedRmsNorm(xa, w, 1e-6);
      torch::Tensor yb = RmsNorm(xb, w, 1e-6);
      EXPECT_EQ(ya.scalar_type(), dtype);
      EXPECT_LT(RelErr(ya, yb), Tol(dtype));
      ya.backward(gout);
      yb.backward(gout);
      EXPECT_LT(RelErr(xa.grad(), xb.grad()), Tol(dtype) * 2);
    }
  }
}

TEST(FusedBlockOpsCudaTest, SwiGluMatchesTorchChain) {
  SKIP_WITHOUT_CUDA();
  for (c10::ScalarType dtype : Dtypes()) {
    for (int64_t n : {4096, 1001}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " n " +
                   std::to_string(n));
      torch::Tensor g0 = Randn({2, n}, dtype, 4) * 4;
      torch::Tensor u0 = Randn({2, n}, dtype, 5);
      torch::Tensor gout = Randn({2, n}, dtype, 6);
      torch::Tensor ga = Leaf(g0), ua = Leaf(u0), gb = Leaf(g0), ub = Leaf(u0);
      torch::Tensor ya = FusedSwiGlu(ga, ua);
      torch::Tensor yb = torch::silu(gb) * ub;
      EXPECT_LT(RelErr(ya, yb), Tol(dtype));
      ya.backward(gout);
      yb.backward(gout);
      EXPECT_LT(RelErr(ga.grad(), gb.grad()), Tol(dtype) * 2);
      EXPECT_LT(RelErr(ua.grad(), ub.grad()), Tol(dtype));
    }
  }
}

TEST(FusedBlockOpsCudaTest, RopeMatchesTorchChain) {
  SKIP_WITHOUT_CUDA();
  for (c10::ScalarType dtype : Dtypes()) {
    SCOPED_TRACE(c10::toString(dtype));
    const int64_t b = 2, t = 33, h = 4, d = 64;
    torch::Tensor x0 = Randn({b, t, h, d}, dtype, 7);
    torch::Tensor mask = torch::ones({b, t}, torch::kInt64).to(torch::kCUDA);
    mask[1].narrow(0, 0, 5).zero_();
    auto [cos, sin] =
        RopeCosSin(PositionIdsFromMask(mask), d, 1e6, dtype);  // [B,T,D]
    torch::Tensor gout = Randn({b, h, t, d}, dtype, 8);
    torch::Tensor xa = Leaf(x0), xb = Leaf(x0);
    torch::Tensor ya = FusedRope(xa, cos, sin).transpose(1, 2);
    torch::Tensor qb = xb.transpose(1, 2);
    torch::Tensor c1 = cos.unsqueeze(1), s1 = sin.unsqueeze(1);
    torch::Tensor rot =
        torch::cat({-qb.narrow(-1, d / 2, d / 2), qb.narrow(-1, 0, d / 2)}, -1);
    torch::Tensor yb = qb * c1 + rot * s1;
    EXPECT_LT(RelErr(ya, yb), Tol(dtype));
    ya.backward(gout);
    yb.backward(gout);
    EXPECT_LT(RelErr(xa.grad(), xb.grad()), Tol(dtype));
  }
}

TEST(FusedBlockOpsCudaTest, MaskedMseMatchesTorchChain) {
  SKIP_WITHOUT_CUDA();
  for (c10::ScalarType dtype : Dtypes()) {
    for (int64_t width : {2560, 99}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " width " +
                   std::to_string(width));
      torch::Tensor p0 = Randn({3, 41, width}, dtype, 9);
      torch::Tensor ref = Randn({3, 41, width}, dtype, 10);
      torch::Tensor m = torch::ones({3, 41}, torch::kFloat32);
      m[2].narrow(0, 0, 7).zero_();
      m = m.to(torch::kCUDA);
      const double scale = 1.0 / static_cast<double>(p0.numel());
      torch::Tensor pa = Leaf(p0), pb = Leaf(p0);
      torch::Tensor la = FusedMaskedMse(pa, ref, m, scale);
      torch::Tensor pf = pb.to(torch::kFloat32);
      torch::Tensor mm = m.unsqueeze(-1);
      torch::Tensor lb = (pf * mm - ref.to(torch::kFloat32) * mm).pow(2).mean();
      EXPECT_EQ(la.dim(), 0);
      EXPECT_NEAR(la.item<double>(), lb.item<double>(),
                  1e-5 * lb.item<double>());
      (la * 1000.0).backward();
      (lb * 1000.0).backward();
      EXPECT_LT(RelErr(pa.grad(), pb.grad()), Tol(dtype));
    }
  }
}

TEST(FusedBlockOpsCudaTest, DeterministicAndShapeErrorsNamed) {
  SKIP_WITHOUT_CUDA();
  torch::Tensor x = Randn({5, 300, 256}, torch::kBFloat16, 11);
  torch::Tensor ref = Randn({5, 300, 256}, torch::kBFloat16, 12);
  torch::Tensor m = torch::ones({5, 300}, torch::kFloat32).to(torch::kCUDA);
  torch::Tensor l1 = FusedMaskedMse(x, ref, m, 1.0);
  torch::Tensor l2 = FusedMaskedMse(x, ref, m, 1.0);
  EXPECT_EQ(l1.item<float>(), l2.item<float>());
  torch::Tensor w = torch::ones({256}, torch::kBFloat16).to(torch::kCUDA);
  EXPECT_TRUE(torch::equal(FusedRmsNorm(x, w, 1e-6), FusedRmsNorm(x, w, 1e-6)));
  try {
    FusedRmsNorm(x, torch::ones({255}, torch::kBFloat16).to(torch::kCUDA),
                 1e-6);
    ADD_FAILURE() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight"), std::string::npos);
  }
  try {
    FusedMaskedMse(
        x, ref, torch::ones({5, 299}, torch::kFloat32).to(torch::kCUDA), 1.0);
    ADD_FAILURE() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mask"), std::string::npos);
  }
}

// The whole block with and without the fused ops: outputs and the gradient
// of a tuned (override) weight. Tolerances as the attention comparison of
// decoder_block_test.cc: one step of the dtype, normwise.
TEST(FusedBlockOpsCudaTest, DecoderBlockFusedMatchesLibtorchOps) {
  SKIP_WITHOUT_CUDA();
  BlockConfig c;
  c.hidden_size = 256;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.intermediate_size = 512;
  c.qk_norm = true;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  for (c10::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    torch::manual_seed(13);
    BlockWeights w;
    const int64_t hq = c.num_heads * c.head_dim,
                  hkv = c.num_kv_heads * c.head_dim;
    auto lin = [&](int64_t o, int64_t i) {
      return (torch::randn({o, i}) / std::sqrt(static_cast<double>(i)));
    };
    w["input_layernorm.weight"] = torch::rand({c.hidden_size}) + 0.5;
    w["post_attention_layernorm.weight"] = torch::rand({c.hidden_size}) + 0.5;
    w["self_attn.q_norm.weight"] = torch::rand({c.head_dim}) + 0.5;
    w["self_attn.k_norm.weight"] = torch::rand({c.head_dim}) + 0.5;
    w["self_attn.q_proj.weight"] = lin(hq, c.hidden_size);
    w["self_attn.k_proj.weight"] = lin(hkv, c.hidden_size);
    w["self_attn.v_proj.weight"] = lin(hkv, c.hidden_size);
    w["self_attn.o_proj.weight"] = lin(c.hidden_size, hq);
    w["mlp.gate_proj.weight"] = lin(c.intermediate_size, c.hidden_size);
    w["mlp.up_proj.weight"] = lin(c.intermediate_size, c.hidden_size);
    w["mlp.down_proj.weight"] = lin(c.hidden_size, c.intermediate_size);
    for (auto& [name, t] : w) t = t.to(torch::kCUDA).to(dtype);
    ASSERT_TRUE(ValidateBlockWeights(c, w).ok());
    torch::Tensor x = Randn({2, 64, c.hidden_size}, dtype, 14);
    torch::Tensor mask = torch::ones({2, 64}, torch::kInt64).to(torch::kCUDA);
    std::vector<torch::Tensor> outs, grads;
    for (bool fused : {false, true}) {
      torch::Tensor wg = Leaf(w.at("mlp.gate_proj.weight"));
      std::map<std::string, torch::Tensor> ov = {{"mlp.gate_proj", wg}};
      BlockForwardOptions fo;
      fo.no_padding = true;
      fo.fused_elementwise = fused;
      torch::Tensor y = DecoderBlockForward(c, w, x, mask, &ov, fo);
      y.to(torch::kFloat32).pow(2).mean().backward();
      outs.push_back(y);
      grads.push_back(wg.grad());
    }
    const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
    EXPECT_LT(RelErr(outs[1], outs[0]), tol);
    EXPECT_LT(RelErr(grads[1], grads[0]),
              dtype == torch::kFloat32 ? 1e-4 : 3e-2);
  }
}

}  // namespace
}  // namespace roundhouse::engine
