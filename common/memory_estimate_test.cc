#include "common/memory_estimate.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "common/files.h"
#include "common/test_support.h"
#include "gtest/gtest.h"

namespace roundhouse {
namespace {

using nlohmann::json;

// A small Llama: H 64, I 128, 4 heads / 2 kv heads of 16, 2 layers.
EstimateOptions Device(const std::string& device) {
  EstimateOptions o;
  o.device = device;
  return o;
}
EstimateOptions Cpu() { return Device("cpu"); }
EstimateOptions LowMemory() {
  EstimateOptions o;
  o.low_memory = true;
  return o;
}
EstimateOptions EagerCuda() {
  EstimateOptions o;
  o.fused_attention_on_cuda = false;
  return o;
}

ModelShape SmallLlama() {
  ModelShape m;
  m.model_type = "llama";
  m.hidden_size = 64;
  m.intermediate_size = 128;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 16;
  m.vocab_size = 100;
  m.tie_word_embeddings = true;
  m.torch_dtype = "bfloat16";
  return m;
}

EstimateInputs SmallInputs() {
  EstimateInputs in;
  in.nsamples = 8;
  in.seqlen = 16;
  in.batch_size = 4;
  in.iters = 10;
  in.group_size = 32;
  in.eval_samples = 4;
  return in;
}

// The ColQwen3-4B language model (models.md).
ModelShape ColQwen3Text() {
  ModelShape m;
  m.model_type = "colqwen3";
  m.hidden_size = 2560;
  m.intermediate_size = 9728;
  m.num_layers = 36;
  m.num_heads = 32;
  m.num_kv_heads = 8;
  m.head_dim = 128;
  m.vocab_size = 151936;
  m.qk_norm = true;
  m.tie_word_embeddings = true;
  m.torch_dtype = "bfloat16";
  return m;
}

TEST(MemoryEstimateTest, SmallModelOnCpuMatchesHandCount) {
  auto e = EstimatePeakMemory(SmallLlama(), SmallInputs(),
                              Cpu());
  ASSERT_TRUE(e.ok()) << e.status();
  // CPU: fp32 compute, eager attention, no context allowance or slack.
  EXPECT_EQ(e->compute_dtype, "float32");
  EXPECT_FALSE(e->fused_attention);
  EXPECT_EQ(e->context_bytes, 0);
  EXPECT_EQ(e->slack_bytes, 0);
  // Linears q 64x64, k/v 32x64, o 64x64, gate/up 128x64, down 64x128.
  EXPECT_EQ(e->quantized_elements, 36864);
  // (36864 + 2*64 norm weights) * 4.
  EXPECT_EQ(e->block_weights_bytes, 147968);
  // Groups of 32: rows 128+64+64+128+256+256+256 = 1152, no padding.
  // v 4*36864 + min/max scales 8*1152.
  EXPECT_EQ(e->tunables_bytes, 156672);
  EXPECT_EQ(e->gradients_bytes, 156672);
  EXPECT_EQ(e->best_copy_bytes, 156672);
  // wmin/wmax 8*1152 + the fp32 grouped copy 4*36864 (CPU).
  EXPECT_EQ(e->grouped_copy_bytes, 156672);
  EXPECT_EQ(e->qdq_weights_bytes, 147456);  // 4*36864
  EXPECT_EQ(e->qdq_saved_bytes, 294912);    // 8*36864
  EXPECT_EQ(e->qdq_transient_bytes, 98304);  // 12 * 8192 (gate/up/down)
  EXPECT_EQ(e->chain_bytes, 32768);          // 8*16*64*4
  EXPECT_EQ(e->chains_tuning, 2);
  EXPECT_EQ(e->chains_forward, 2);
  EXPECT_EQ(e->masks_bytes, 2560);           // 8*16*(8+8+4)
  EXPECT_EQ(e->micro_batch, 4);
  EXPECT_EQ(e->batch_buffers_bytes, 33536);  // 4*16*(2*64*4 + 12)
  // Per token saved: h 256, cos/sin 128, eager attention 3*64*4 +
  // 4*16*(4+4) + 2*16 = 1312, o_proj input 256, post-norm 260, h2 256,
  // MLP 4*128*4 = 2048, diff 260: 4776; 64 tokens per micro-batch.
  EXPECT_EQ(e->activations_saved_bytes, 64 * 4776);
  // Backward: max(3*128*4, 4*16*12, 2*64*4) + 2*64*4 = 2048 per token.
  EXPECT_EQ(e->activations_transient_bytes, 64 * 2048);
  // No-grad forward: max(4*128*4, (64+64)*4 + 4*16*12 + 64*4) + 2*64*4 +
  // 64*4 = 2816 per token; 4096-token chunks cap at all 8 samples.
  EXPECT_EQ(e->forward_chunk, 8);
  EXPECT_EQ(e->forward_transient_bytes, 128 * 2816);
  EXPECT_EQ(e->tuning_bytes, 147968 + 2 * 32768 + 2560 + 33536 +
                                 3 * 156672 + 156672 + 147456 + 294912 +
                                 98304 + 64 * 4776 + 64 * 2048);
  EXPECT_EQ(e->tuning_bytes, 1853696);
  // Finalize: tunables and best copies, the grouped copies, int32 codes
  // and fp32 QDQ weights 8*36864, scales/zeros 6*1152, three fp32
  // temporaries of the largest Linear.
  EXPECT_EQ(e->finalize_bytes, 147968 + 2 * 32768 + 2560 + 33536 +
                                   2 * 156672 + 156672 + 8 * 36864 +
                                   6 * 1152 + 12 * 8192);
  EXPECT_EQ(e->block_forward_bytes, 147968 + 2 * 32768 + 2560 +
                                        156672 + 156672 + 147456 +
                                        128 * 2816);
  // Evaluation: the resident model 4*(2 blocks * 36992 + tied embedding
  // 100*64 + final norm 64) = 321792; 4 samples, max(3 chains, hidden +
  // two fp32 copies) = 4*16*64*12 = 49152; masks; a chunk forward.
  EXPECT_EQ(e->resident_model_bytes, 321792);
  EXPECT_EQ(e->evaluation_chain_bytes, 16384);
  EXPECT_EQ(e->evaluation_bytes, 321792 + 49152 + 2560 + 64 * 2816);
  EXPECT_EQ(e->peak_phase, "tuning");
  EXPECT_EQ(e->total_bytes, 1853696);
}

TEST(MemoryEstimateTest, CudaAddsContextAndSlackAndUsesFusedPaths) {
  EstimateOptions o;  // cuda
  auto e = EstimatePeakMemory(SmallLlama(), SmallInputs(), o);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->compute_dtype, "bfloat16");  // torch_dtype under "auto"
  EXPECT_TRUE(e->fused_attention);
  EXPECT_TRUE(e->fused_kernels);
  EXPECT_EQ(e->context_bytes, 600 << 20);
  EXPECT_EQ(e->grouped_copy_bytes, 8 * 1152);  // wmin/wmax only
  EXPECT_EQ(e->qdq_saved_bytes, 0);
  EXPECT_EQ(e->qdq_transient_bytes, 0);
  EXPECT_EQ(e->chain_bytes, 8 * 16 * 64 * 2);
  EXPECT_EQ(e->qdq_weights_bytes, 2 * 36864);
  // Fused attention per token: q,k,v,out (2*64 + 2*32)*2 + lse 4*4 + mask
  // 16 = 416 instead of the eager 3*64*2 + 4*16*6 + 32 = 800.
  // Rest: h 128, cos/sin 64, o_proj input 128, h2 128; fused block ops:
  // input-norm rsqrt 4, post-norm input 128 + 4, MLP gate/up/down input
  // 3*128*2 = 768, loss block output 128.
  EXPECT_EQ(e->activations_saved_bytes, 64 * (416 + 128 + 64 + 128 + 128 +
                                              4 + 132 + 768 + 128));
  const int64_t peak = std::max(
      {e->tuning_bytes, e->block_forward_bytes, e->evaluation_bytes});
  EXPECT_EQ(e->slack_bytes, (peak + 5) / 10);
  EXPECT_EQ(e->total_bytes, e->context_bytes + peak + e->slack_bytes);
}

TEST(MemoryEstimateTest, CudaWithoutFusedKernelsKeepsTorchQdqState) {
  EstimateOptions o;
  o.fused_kernels_on_cuda = false;
  auto e = EstimatePeakMemory(SmallLlama(), SmallInputs(), o);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->grouped_copy_bytes, 8 * 1152 + 4 * 36864);
  EXPECT_EQ(e->qdq_saved_bytes, 8 * 36864);
  EXPECT_EQ(e->qdq_transient_bytes, 12 * 8192);
  // The libtorch element-wise chains: fp32 post-norm input 260, gate,
  // silu, up, down input 4*128*2, fp32 loss difference 260.
  EXPECT_EQ(e->activations_saved_bytes, 64 * (416 + 128 + 64 + 128 + 128 +
                                              260 + 1024 + 260));
}

TEST(MemoryEstimateTest, LowMemoryKeepsChainsOnTheHost) {
  auto normal = EstimatePeakMemory(SmallLlama(), SmallInputs());
  auto low = EstimatePeakMemory(SmallLlama(), SmallInputs(),
                                LowMemory());
  ASSERT_TRUE(normal.ok() && low.ok());
  EXPECT_EQ(low->chains_tuning, 0);
  EXPECT_EQ(low->chains_forward, 0);
  EXPECT_EQ(low->forward_chunk, 1);
  EXPECT_EQ(normal->tuning_bytes - low->tuning_bytes,
            2 * normal->chain_bytes);
  EXPECT_LT(low->total_bytes, normal->total_bytes);
}

TEST(MemoryEstimateTest, ForwardChunksHoldAboutFourThousandTokens) {
  // Plan (a): 256 x 512 at batch 1 -> 8 samples; reference (b): 128 x 2048
  // at batch 8 -> the micro-batch (16,384 tokens) is the floor.
  EXPECT_EQ(ForwardChunkSamples(256, 512, 1, false), 8);
  EXPECT_EQ(ForwardChunkSamples(128, 2048, 8, false), 8);
  EXPECT_EQ(ForwardChunkSamples(128, 2048, 1, false), 2);
  EXPECT_EQ(ForwardChunkSamples(4, 16, 1, false), 4);  // all samples
  EXPECT_EQ(ForwardChunkSamples(64, 100000, 1, false), 1);  // long rows
  EXPECT_EQ(ForwardChunkSamples(256, 512, 1, true), 1);  // low memory
  EXPECT_EQ(ForwardChunkSamples(1, 512, 8, false), 1);
}

TEST(MemoryEstimateTest, SeveralGpusSplitTheMicroBatch) {
  EstimateOptions o;
  o.gpus = 2;
  auto one = EstimatePeakMemory(SmallLlama(), SmallInputs());
  auto two = EstimatePeakMemory(SmallLlama(), SmallInputs(), o);
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_EQ(one->micro_batch, 4);
  EXPECT_EQ(two->micro_batch, 2);
  EXPECT_EQ(two->activations_saved_bytes * 2, one->activations_saved_bytes);
  EXPECT_FALSE(EstimatePeakMemory(SmallLlama(), SmallInputs(), [] {
                 EstimateOptions c = Cpu();
                 c.gpus = 2;
                 return c;
               }()).ok());
}

TEST(MemoryEstimateTest, RoundToNearestKeepsNoAutogradState) {
  EstimateInputs in = SmallInputs();
  in.iters = 0;
  auto e = EstimatePeakMemory(SmallLlama(), in, Cpu());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->gradients_bytes, 0);
  EXPECT_EQ(e->qdq_saved_bytes, 0);
  EXPECT_EQ(e->activations_saved_bytes, 0);
  EXPECT_EQ(e->activations_transient_bytes, 64 * 2816);
}

TEST(MemoryEstimateTest, GradientAccumulationKeepsMicroBatch) {
  EstimateInputs in = SmallInputs();
  in.batch_size = 2;
  in.gradient_accumulate_steps = 4;
  auto e = EstimatePeakMemory(SmallLlama(), in, Cpu());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->micro_batch, 2);
  in.batch_size = 64;  // capped to nsamples
  e = EstimatePeakMemory(SmallLlama(), in, Cpu());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->micro_batch, 8);
}

TEST(MemoryEstimateTest, RejectsBadInputsNamingTheField) {
  EstimateInputs in = SmallInputs();
  in.seqlen = 0;
  auto e = EstimatePeakMemory(SmallLlama(), in);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("scheme.seqlen"), std::string::npos);
  in = SmallInputs();
  in.compute_dtype = "int8";
  e = EstimatePeakMemory(SmallLlama(), in);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("scheme.compute_dtype"),
            std::string::npos);
  e = EstimatePeakMemory(SmallLlama(), SmallInputs(), Device("tpu"));
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("device"), std::string::npos);
}

// Sanity for the ColQwen3-4B text shape. The bench measured 7.2 GB (a) and
// 27.7 GB (b) with the old code (eager attention, fp32 grouped copies,
// libtorch QDQ) on a 3-block model; the current engine keeps less, the
// estimate must too, and it must still cover what is certainly resident:
// the chains and the quantizer state.
TEST(MemoryEstimateTest, ColQwen3ConfigsAreBelowOldMeasuredPeaks) {
  EstimateInputs a;  // W4 g128 asym, 256 x 512, bs 1
  a.nsamples = 256;
  a.seqlen = 512;
  a.batch_size = 1;
  a.iters = 200;
  EstimateInputs b;  // W4 g128 sym, 128 x 2048, bs 8
  b.nsamples = 128;
  b.seqlen = 2048;
  b.batch_size = 8;
  ModelShape three = ColQwen3Text();
  three.num_layers = 3;
  auto ea = EstimatePeakMemory(three, a);
  auto eb = EstimatePeakMemory(three, b);
  ASSERT_TRUE(ea.ok() && eb.ok());
  std::printf("ColQwen3 (a): %s\nColQwen3 (b): %s\n",
              ea->ToJson().dump().c_str(), eb->ToJson().dump().c_str());
  const double gb = 1e9;
  // One block: 2560*(4096 + 2*1024 + 4096) + 3*2560*9728 elements.
  EXPECT_EQ(ea->quantized_elements, 100925440);
  EXPECT_EQ(ea->chain_bytes, int64_t{256} * 512 * 2560 * 2);
  EXPECT_EQ(eb->chain_bytes, int64_t{128} * 2048 * 2560 * 2);
  // v + grad + best alone: 12 bytes per element.
  EXPECT_GT(ea->total_bytes, 12 * ea->quantized_elements + 3 * ea->chain_bytes);
  EXPECT_GT(eb->total_bytes, 12 * eb->quantized_elements + 3 * eb->chain_bytes);
  EXPECT_LT(ea->total_bytes, 7.2 * gb);
  EXPECT_LT(eb->total_bytes, 27.7 * gb);
  EXPECT_LT(ea->total_bytes, eb->total_bytes);
  // The eager path on the same GPU costs more for (b) (the T x T scores).
  auto eager = EstimatePeakMemory(three, b, EagerCuda());
  ASSERT_TRUE(eager.ok());
  EXPECT_GT(eager->activations_saved_bytes,
            eb->activations_saved_bytes + 4 * gb);

  // The full 36 blocks: tuning is unchanged, but the evaluation keeps the
  // whole bf16 text model (about 8 GB) on the device, which is the peak of
  // config (a).
  auto fa = EstimatePeakMemory(ColQwen3Text(), a);
  ASSERT_TRUE(fa.ok());
  std::printf("ColQwen3 36 blocks (a): %s\n", fa->ToJson().dump().c_str());
  EXPECT_EQ(fa->tuning_bytes, ea->tuning_bytes);
  EXPECT_EQ(fa->resident_model_bytes,
            2 * (36 * (int64_t{100925440} + 2 * 2560 + 2 * 128) +
                 int64_t{151936} * 2560 + 2560));
  EXPECT_EQ(fa->peak_phase, "evaluation");
}

TEST(ModelShapeTest, ReadsColQwen3TextConfig) {
  json c = {{"model_type", "colqwen3"},
            {"tie_word_embeddings", false},
            {"text_config",
             {{"hidden_size", 2560},
              {"intermediate_size", 9728},
              {"num_hidden_layers", 36},
              {"num_attention_heads", 32},
              {"num_key_value_heads", 8},
              {"head_dim", 128},
              {"vocab_size", 151936},
              {"tie_word_embeddings", true},
              {"dtype", "bfloat16"}}}};
  auto m = ModelShapeFromConfig(c);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->hidden_size, 2560);
  EXPECT_EQ(m->num_layers, 36);
  EXPECT_EQ(m->num_kv_heads, 8);
  EXPECT_EQ(m->head_dim, 128);
  EXPECT_EQ(m->vocab_size, 151936);
  EXPECT_TRUE(m->qk_norm);
  EXPECT_TRUE(m->tie_word_embeddings);
  EXPECT_EQ(m->torch_dtype, "bfloat16");
}

TEST(ModelShapeTest, DefaultsAndErrorsNameTheKey) {
  json c = {{"architectures", {"Qwen2ForCausalLM"}},
            {"hidden_size", 64},
            {"intermediate_size", 128},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4}};
  auto m = ModelShapeFromConfig(c);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->model_type, "qwen2");
  EXPECT_EQ(m->num_kv_heads, 4);
  EXPECT_EQ(m->head_dim, 16);
  EXPECT_TRUE(m->attention_bias);
  EXPECT_FALSE(m->qk_norm);

  json vl = {{"model_type", "qwen3_vl"}, {"text_config", {{"hidden_size", 8}}}};
  auto bad = ModelShapeFromConfig(vl);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "config.json: text_config.intermediate_size is missing");
  bad = ModelShapeFromConfig(json{{"model_type", "gpt2"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("gpt2"), std::string::npos);
}

TEST(ModelShapeTest, ReadsTheStoriesFixture) {
  const std::string shared = testing_support::SharedDir();
  const std::string dir = shared + "/fixtures/stories260K-hf";
  if (shared.empty() || !PathExists(dir + "/config.json")) {
    if (testing_support::InCi()) {
      FAIL() << "shared fixture missing: " << dir << "/config.json";
    }
    GTEST_SKIP() << "shared fixture missing: " << dir
                 << "/config.json (set RH_SHARED_DIR)";
  }
  auto m = ReadModelShape(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->hidden_size, 64);
  EXPECT_EQ(m->intermediate_size, 172);
  EXPECT_EQ(m->num_layers, 5);
  EXPECT_EQ(m->num_kv_heads, 4);
  EXPECT_EQ(m->head_dim, 8);
  auto missing = ReadModelShape(dir + "/no-such-dir");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no-such-dir/config.json"),
            std::string::npos);
}

}  // namespace
}  // namespace roundhouse
