#include "worker/engine/decoder_block.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/files.h"
#include "common/test_support.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/safetensors.h"
#include "worker/engine/test_tensors.h"

namespace roundhouse::engine {
namespace {

using ::roundhouse::engine::test_util::RelErr;

using ::roundhouse::testing_support::InCi;
using ::roundhouse::testing_support::SharedDir;

// Skips (or, under CI=true, fails) when the stories260K-hf fixture is absent.
#define REQUIRE_STORIES(dir)                                                \
  const std::string dir = SharedDir() + "/fixtures/stories260K-hf";         \
  if (!::roundhouse::PathExists(dir + "/model.safetensors")) {               \
    if (InCi()) FAIL() << "missing fixture " << dir << " (CI=true)";        \
    GTEST_SKIP() << "fixture not found: " << dir << " (set RH_SHARED_DIR)"; \
  }

BlockConfig StoriesConfig() {
  BlockConfig c;
  c.hidden_size = 64;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.intermediate_size = 172;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

BlockWeights LoadBlock(const SafetensorsFile& f, int layer) {
  BlockWeights w;
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  for (const TensorInfo& info : f.tensors()) {
    if (info.name.rfind(prefix, 0) == 0) {
      w[info.name.substr(prefix.size())] = *f.Load(info.name);
    }
  }
  return w;
}

// Token ids of the first `count` calib.jsonl samples with >= len tokens,
// truncated to len: [count, len] int64.
torch::Tensor CalibIds(const std::string& dir, int count, int len) {
  std::ifstream in(dir + "/calib.jsonl");
  std::vector<int64_t> ids;
  int got = 0;
  std::string line;
  while (got < count && std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    const auto& v = j.at("input_ids");
    if (static_cast<int>(v.size()) < len) continue;
    for (int t = 0; t < len; ++t) ids.push_back(v[t].get<int64_t>());
    ++got;
  }
  return torch::tensor(ids).view({got, len});
}

// A deliberately naive double-precision decoder layer (loops, no torch ops)
// used as an independent reference. hidden [B,T,H] float, mask [B,T].
std::vector<double> NaiveBlock(const BlockConfig& c, const BlockWeights& w,
                               const torch::Tensor& hidden,
                               const torch::Tensor& mask) {
  const int B = hidden.size(0), T = hidden.size(1), H = c.hidden_size;
  const int nh = c.num_heads, nkv = c.num_kv_heads, D = c.head_dim,
            I = c.intermediate_size;
  auto get = [&](const std::string& n) {
    torch::Tensor t = w.at(n).to(torch::kFloat64).contiguous();
    return std::vector<double>(t.data_ptr<double>(),
                               t.data_ptr<double>() + t.numel());
  };
  const auto ln1 = get("input_layernorm.weight"),
             ln2 = get("post_attention_layernorm.weight"),
             wq = get("self_attn.q_proj.weight"),
             wk = get("self_attn.k_proj.weight"),
             wv = get("self_attn.v_proj.weight"),
             wo = get("self_attn.o_proj.weight"),
             wg = get("mlp.gate_proj.weight"), wu = get("mlp.up_proj.weight"),
             wd = get("mlp.down_proj.weight");
  torch::Tensor hd = hidden.to(torch::kFloat64).contiguous();
  const double* x = hd.data_ptr<double>();
  torch::Tensor md = mask.to(torch::kInt64).contiguous();
  const int64_t* m = md.data_ptr<int64_t>();
  auto rms = [&](const double* v, const std::vector<double>& g, int n,
                 std::vector<double>& out) {
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += v[i] * v[i];
    const double r = 1.0 / std::sqrt(ss / n + c.rms_norm_eps);
    out.resize(n);
    for (int i = 0; i < n; ++i) out[i] = v[i] * r * g[i];
  };
  auto matvec = [](const std::vector<double>& W, const std::vector<double>& v,
                   int rows, int cols) {
    std::vector<double> y(rows, 0.0);
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < cols; ++k) y[r] += W[r * cols + k] * v[k];
    }
    return y;
  };
  auto rope = [&](double* v, int pos) {
    for (int i = 0; i < D / 2; ++i) {
      const double f = pos * std::pow(c.rope_theta, -2.0 * i / D);
      const double a = v[i], b = v[i + D / 2];
      v[i] = a * std::cos(f) - b * std::sin(f);
      v[i + D / 2] = b * std::cos(f) + a * std::sin(f);
    }
  };
  std::vector<double> out(static_cast<size_t>(B) * T * H);
  for (int b = 0; b < B; ++b) {
    std::vector<std::vector<double>> q(T), k(T), v(T);
    std::vector<int> pos(T);
    int running = 0;
    for (int t = 0; t < T; ++t) {
      if (m[b * T + t] != 0) {
        pos[t] = running++;
      } else {
        pos[t] = 1;
      }
      std::vector<double> h;
      rms(x + (b * T + t) * H, ln1, H, h);
      q[t] = matvec(wq, h, nh * D, H);
      k[t] = matvec(wk, h, nkv * D, H);
      v[t] = matvec(wv, h, nkv * D, H);
      for (int j = 0; j < nh; ++j) rope(&q[t][j * D], pos[t]);
      for (int j = 0; j < nkv; ++j) rope(&k[t][j * D], pos[t]);
    }
    for (int t = 0; t < T; ++t) {
      std::vector<double> attn(nh * D, 0.0);
      for (int j = 0; j < nh; ++j) {
        const int g = j / (nh / nkv);
        std::vector<double> s;
        std::vector<int> keys;
        for (int u = 0; u <= t; ++u) {
          if (m[b * T + u] == 0) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[t][j * D + d] * k[u][g * D + d];
          s.push_back(dot / std::sqrt(double(D)));
          keys.push_back(u);
        }
        if (keys.empty()) continue;  // fully masked (pad) query
        double mx = s[0], sum = 0;
        for (double e : s) mx = std::max(mx, e);
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (size_t n = 0; n < keys.size(); ++n) {
          for (int d = 0; d < D; ++d) {
            attn[j * D + d] += s[n] / sum * v[keys[n]][g * D + d];
          }
        }
      }
      std::vector<double> o = matvec(wo, attn, H, nh * D);
      std::vector<double> x1(H);
      for (int i = 0; i < H; ++i) x1[i] = x[(b * T + t) * H + i] + o[i];
      std::vector<double> h2;
      rms(x1.data(), ln2, H, h2);
      std::vector<double> gt = matvec(wg, h2, I, H), up = matvec(wu, h2, I, H);
      for (int i = 0; i < I; ++i)
        gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
      std::vector<double> dn = matvec(wd, gt, H, I);
      for (int i = 0; i < H; ++i) out[(b * T + t) * H + i] = x1[i] + dn[i];
    }
  }
  return out;
}

TEST(DecoderBlockTest, MatchesNaiveReferenceOnStories) {
  REQUIRE_STORIES(dir);
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const BlockConfig c = StoriesConfig();
  torch::Tensor embed = *(*file)->Load("model.embed_tokens.weight");
  torch::Tensor ids = CalibIds(dir, 3, 24);
  ASSERT_EQ(ids.size(0), 3);
  torch::Tensor mask = torch::ones({3, 24}, torch::kInt64);
  mask[1].narrow(0, 0, 5).zero_();   // left padding
  mask[2].narrow(0, 20, 4).zero_();  // right padding
  for (int layer : {0, 3}) {
    BlockWeights w = LoadBlock(**file, layer);
    ASSERT_TRUE(ValidateBlockWeights(c, w).ok());
    torch::Tensor hidden =
        embed.index_select(0, ids.flatten()).view({3, 24, 64});
    torch::Tensor got = DecoderBlockForward(c, w, hidden, mask).contiguous();
    ASSERT_EQ(got.sizes(), hidden.sizes());
    std::vector<double> ref = NaiveBlock(c, w, hidden, mask);
    double max_ref = 0, max_err = 0;
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t t = 0; t < 24; ++t) {
        if (mask[b][t].item<int64_t>() == 0) continue;
        for (int64_t i = 0; i < 64; ++i) {
          const double r = ref[(b * 24 + t) * 64 + i];
          max_ref = std::max(max_ref, std::abs(r));
          max_err = std::max(max_err, std::abs(r - got[b][t][i].item<float>()));
        }
      }
    }
    EXPECT_LT(max_err / max_ref, 1e-5) << "layer " << layer;
    EXPECT_FALSE(torch::isnan(got).any().item<bool>());
  }
}

TEST(DecoderBlockTest, PaddingDoesNotChangeRealTokens) {
  REQUIRE_STORIES(dir);
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const BlockConfig c = StoriesConfig();
  BlockWeights w = LoadBlock(**file, 1);
  torch::Tensor embed = *(*file)->Load("model.embed_tokens.weight");
  torch::Tensor ids = CalibIds(dir, 1, 16);
  torch::Tensor h = embed.index_select(0, ids.flatten()).view({1, 16, 64});
  torch::Tensor plain = DecoderBlockForward(c, w, h, torch::ones({1, 16}));
  // The same sequence with 4 left pad positions of junk.
  torch::Tensor padded = torch::cat({torch::randn({1, 4, 64}), h}, 1);
  torch::Tensor m = torch::ones({1, 20}, torch::kBool);
  m[0].narrow(0, 0, 4).fill_(false);
  torch::Tensor out = DecoderBlockForward(c, w, padded, m);
  EXPECT_TRUE(torch::allclose(out.narrow(1, 4, 16), plain, 1e-5, 1e-6));
}

BlockConfig Qwen3Tiny() {
  BlockConfig c;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;  // q_proj out 64 != hidden
  c.intermediate_size = 64;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.qk_norm = true;
  c.qkv_bias = true;
  return c;
}

BlockWeights RandomWeights(const BlockConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim,
                kv = c.num_kv_heads * c.head_dim, in = c.intermediate_size;
  BlockWeights w;
  w["input_layernorm.weight"] = 1 + 0.1 * torch::randn({h});
  w["post_attention_layernorm.weight"] = 1 + 0.1 * torch::randn({h});
  w["self_attn.q_proj.weight"] = 0.2 * torch::randn({q, h});
  w["self_attn.k_proj.weight"] = 0.2 * torch::randn({kv, h});
  w["self_attn.v_proj.weight"] = 0.2 * torch::randn({kv, h});
  w["self_attn.o_proj.weight"] = 0.2 * torch::randn({h, q});
  w["mlp.gate_proj.weight"] = 0.2 * torch::randn({in, h});
  w["mlp.up_proj.weight"] = 0.2 * torch::randn({in, h});
  w["mlp.down_proj.weight"] = 0.2 * torch::randn({h, in});
  if (c.qk_norm) {
    w["self_attn.q_norm.weight"] = 1 + 0.1 * torch::randn({c.head_dim});
    w["self_attn.k_norm.weight"] = 1 + 0.1 * torch::randn({c.head_dim});
  }
  if (c.qkv_bias) {
    w["self_attn.q_proj.bias"] = 0.1 * torch::randn({q});
    w["self_attn.k_proj.bias"] = 0.1 * torch::randn({kv});
    w["self_attn.v_proj.bias"] = 0.1 * torch::randn({kv});
  }
  return w;
}

TEST(DecoderBlockTest, ValidateNamesTheTensor) {
  BlockConfig c = Qwen3Tiny();
  BlockWeights w = RandomWeights(c, 1);
  EXPECT_TRUE(ValidateBlockWeights(c, w).ok());
  BlockWeights missing = w;
  missing.erase("self_attn.k_norm.weight");
  absl::Status s = ValidateBlockWeights(c, missing);
  EXPECT_NE(s.message().find("self_attn.k_norm.weight"), std::string::npos);
  BlockWeights wrong = w;
  wrong["mlp.down_proj.weight"] = torch::zeros({32, 63});
  s = ValidateBlockWeights(c, wrong);
  EXPECT_NE(s.message().find("mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(s.message().find("[32,64]"), std::string::npos) << s.message();
  BlockWeights no_bias = w;
  no_bias.erase("self_attn.v_proj.bias");
  s = ValidateBlockWeights(c, no_bias);
  EXPECT_NE(s.message().find("self_attn.v_proj.bias"), std::string::npos);
}

TEST(DecoderBlockTest, OverrideQkNormAndBf16) {
  BlockConfig c = Qwen3Tiny();
  BlockWeights w = RandomWeights(c, 2);
  torch::Tensor h = torch::randn({2, 7, 32});
  torch::Tensor mask = torch::ones({2, 7}, torch::kInt32);
  torch::Tensor base = DecoderBlockForward(c, w, h, mask);
  // Overriding with the same weights is a no-op; other weights change it.
  std::map<std::string, torch::Tensor> same = {
      {"self_attn.q_proj", w["self_attn.q_proj.weight"]}};
  EXPECT_TRUE(torch::equal(DecoderBlockForward(c, w, h, mask, &same), base));
  std::map<std::string, torch::Tensor> diff = {
      {"mlp.down_proj", torch::zeros({32, 64})}};
  torch::Tensor no_mlp = DecoderBlockForward(c, w, h, mask, &diff);
  EXPECT_FALSE(torch::allclose(no_mlp, base));
  // The q/k norm matters.
  BlockWeights scaled = w;
  scaled["self_attn.q_norm.weight"] = w["self_attn.q_norm.weight"] * 3;
  EXPECT_FALSE(torch::allclose(DecoderBlockForward(c, scaled, h, mask), base));
  // Gradients flow into an override.
  torch::Tensor ov = w["self_attn.o_proj.weight"].clone().requires_grad_(true);
  std::map<std::string, torch::Tensor> g = {{"self_attn.o_proj", ov}};
  DecoderBlockForward(c, w, h, mask, &g).sum().backward();
  ASSERT_TRUE(ov.grad().defined());
  EXPECT_GT(ov.grad().abs().sum().item<float>(), 0);
  // bf16 runs in bf16 and stays close to fp32.
  BlockWeights wb;
  for (auto& [k, v] : w) wb[k] = v.to(torch::kBFloat16);
  torch::Tensor outb = DecoderBlockForward(c, wb, h.to(torch::kBFloat16), mask);
  EXPECT_EQ(outb.scalar_type(), torch::kBFloat16);
  const double rel =
      (outb.to(torch::kFloat32) - base).abs().max().item<double>() /
      base.abs().max().item<double>();
  EXPECT_LT(rel, 3e-2);
}

TEST(DecoderBlockTest, PositionIdsFromMask) {
  torch::Tensor m = torch::tensor({0, 0, 1, 1, 1, 1, 1, 0}).view({2, 4});
  torch::Tensor pos = PositionIdsFromMask(m);
  EXPECT_TRUE(
      torch::equal(pos, torch::tensor({1, 1, 0, 1, 0, 1, 2, 1}).view({2, 4})));
}

// Fused attention (CUDA, libtorch >= 2) against the eager path on the same
// device: outputs of real tokens and the gradient of an override weight.
// Tolerances: fp32 1e-4 (the kernels reorder the softmax sums), bf16 1e-2
// normwise (one bf16 step).
TEST(DecoderBlockCudaTest, FusedAttentionMatchesEager) {
  if (!torch::cuda::is_available() ||
      !FusedAttentionAvailable(torch::Device(torch::kCUDA, 0))) {
    GTEST_SKIP() << "needs CUDA and libtorch >= 2.0 (fused attention)";
  }
  BlockConfig c = Qwen3Tiny();
  c.hidden_size = 256;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.intermediate_size = 512;
  for (c10::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (bool padded : {false, true}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) +
                   (padded ? " padded" : " unpadded"));
      BlockWeights w = RandomWeights(c, 21);
      for (auto& [name, t] : w) t = t.to(torch::kCUDA).to(dtype);
      torch::manual_seed(22);
      const int64_t b = 3, t = 96;
      torch::Tensor x = torch::randn({b, t, c.hidden_size}).to(torch::kCUDA)
                            .to(dtype);
      torch::Tensor mask = torch::ones({b, t}, torch::kInt64);
      if (padded) mask[1].narrow(0, 0, 17).zero_();
      mask = mask.to(torch::kCUDA);
      const double tol = dtype == torch::kFloat32 ? 1e-4 : 1e-2;
      std::vector<torch::Tensor> outs, grads;
      for (bool fused : {false, true}) {
        torch::Tensor wq = w.at("self_attn.q_proj.weight").detach().clone()
                               .set_requires_grad(true);
        std::map<std::string, torch::Tensor> ov = {{"self_attn.q_proj", wq}};
        BlockForwardOptions fo;
        fo.fused_attention = fused;
        fo.no_padding = !padded;
        torch::Tensor y = DecoderBlockForward(c, w, x, mask, &ov, fo);
        torch::Tensor real = mask.to(torch::kBool).unsqueeze(-1);
        torch::Tensor loss = (y.to(torch::kFloat32) * real).pow(2).mean();
        loss.backward();
        outs.push_back(y.masked_select(real).to(torch::kFloat32).cpu());
        grads.push_back(wq.grad().to(torch::kFloat32).cpu());
      }
      EXPECT_LT(RelErr(outs[1], outs[0]), tol);
      EXPECT_LT(RelErr(grads[1], grads[0]), dtype == torch::kFloat32 ? 1e-3
                                                                    : 3e-2);
      EXPECT_FALSE(outs[1].isnan().any().item<bool>());
    }
  }
}

// Parity with Hugging Face transformers: the file is written by
// worker/engine/tools/block_parity.py on a machine with transformers.
TEST(DecoderBlockTest, ParityWithTransformers) {
  const char* path = std::getenv("RH_PARITY_FILE");
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << "RH_PARITY_FILE not set (see tools/block_parity.py)";
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const nlohmann::json& meta = (*file)->metadata();
  ASSERT_TRUE(meta.contains("models")) << "no 'models' metadata in " << path;
  const std::vector<std::string> models =
      nlohmann::json::parse(meta.at("models").get<std::string>());
  ASSERT_FALSE(models.empty());
  for (const std::string& name : models) {
    SCOPED_TRACE(name);
    const auto cfg =
        nlohmann::json::parse(meta.at(name + ".config").get<std::string>());
    BlockConfig c;
    c.hidden_size = cfg.at("hidden_size");
    c.num_heads = cfg.at("num_heads");
    c.num_kv_heads = cfg.at("num_kv_heads");
    c.head_dim = cfg.at("head_dim");
    c.intermediate_size = cfg.at("intermediate_size");
    c.rms_norm_eps = cfg.at("rms_norm_eps");
    c.rope_theta = cfg.at("rope_theta");
    c.qk_norm = cfg.at("qk_norm");
    c.qkv_bias = cfg.at("qkv_bias");
    BlockWeights w;
    const std::string prefix = name + ".weights.";
    for (const TensorInfo& info : (*file)->tensors()) {
      if (info.name.rfind(prefix, 0) == 0) {
        w[info.name.substr(prefix.size())] = *(*file)->Load(info.name);
      }
    }
    ASSERT_TRUE(ValidateBlockWeights(c, w).ok()) << ValidateBlockWeights(c, w);
    torch::Tensor hidden = *(*file)->Load(name + ".hidden");
    torch::Tensor mask = *(*file)->Load(name + ".mask");
    torch::Tensor real = (mask != 0).unsqueeze(-1).to(torch::kFloat32);
    for (const char* dt : {"fp32", "bf16"}) {
      const bool bf16 = std::string(dt) == "bf16";
      torch::Tensor want =
          (*(*file)->Load(name + ".out_" + dt)).to(torch::kFloat32);
      BlockWeights wd = w;
      if (bf16) {
        for (auto& [k, v] : wd) v = v.to(torch::kBFloat16);
      }
      torch::Tensor got =
          DecoderBlockForward(c, wd,
                              bf16 ? hidden.to(torch::kBFloat16) : hidden, mask)
              .to(torch::kFloat32);
      // fp32: max error relative to the largest output. bf16: normwise
      // (Frobenius) relative error, since single elements legitimately
      // differ by about one bf16 ulp between torch versions' kernels.
      torch::Tensor err = (got - want) * real;
      const double max_rel = err.abs().max().item<double>() /
                             (want * real).abs().max().item<double>();
      const double norm_rel =
          err.norm().item<double>() / (want * real).norm().item<double>();
      if (bf16) {
        EXPECT_LT(norm_rel, 1e-2) << dt;
      } else {
        EXPECT_LT(max_rel, 1e-5) << dt;
      }
      std::cout << name << " " << dt << ": max relative error " << max_rel
                << ", normwise " << norm_rel << "\n";
    }
  }
}

}  // namespace
}  // namespace roundhouse::engine
