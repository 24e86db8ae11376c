#include "worker/engine/safetensors.h"

#include <stdlib.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace roundhouse::engine {
namespace {

using ::testing::HasSubstr;

std::string MakeTempDir() {
  std::string tmpl = JoinPath(::testing::TempDir(), "st_test_XXXXXX");
  char* p = ::mkdtemp(tmpl.data());
  EXPECT_NE(p, nullptr);
  return tmpl;
}

// Writes a safetensors file from a raw header string and data bytes.
std::string WriteRawFile(const std::string& dir, const std::string& name,
                         const std::string& header, const std::string& data,
                         int64_t header_len_override = -1) {
  uint64_t n = header_len_override >= 0
                   ? static_cast<uint64_t>(header_len_override)
                   : header.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  bytes += header;
  bytes += data;
  std::string path = JoinPath(dir, name);
  EXPECT_TRUE(WriteFileAtomically(path, bytes).ok());
  return path;
}

torch::Tensor SampleTensor(DType d, std::vector<int64_t> shape) {
  torch::manual_seed(7);
  auto opts = torch::TensorOptions().dtype(ToTorch(d));
  switch (d) {
    case DType::kF64:
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return torch::randn(shape, torch::kFloat32).to(ToTorch(d));
    case DType::kBool:
      return torch::randint(0, 2, shape, torch::kInt64).to(torch::kBool);
    case DType::kU8:
      return torch::randint(0, 256, shape, opts);
    default:
      return torch::randint(-100, 100, shape, opts);
  }
}

const DType kAll[] = {DType::kF64, DType::kF32, DType::kF16, DType::kBF16,
                      DType::kI64, DType::kI32, DType::kI16, DType::kI8,
                      DType::kU8,  DType::kBool};

TEST(SafetensorsDTypeTest, NamesSizesAndTorchRoundTrip) {
  for (DType d : kAll) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
    EXPECT_EQ(DTypeSize(d), c10::elementSize(ToTorch(d)));
    auto back = FromTorch(ToTorch(d));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, d);
  }
  auto bad = ParseDType("F8_E9");
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("F8_E9"));
  EXPECT_FALSE(FromTorch(c10::ScalarType::ComplexFloat).ok());
}

TEST(SafetensorsTest, RoundTripEveryDTypeSingleFile) {
  std::string dir = MakeTempDir();
  SafetensorsWriter w(dir, /*max_shard_bytes=*/0);
  std::vector<std::pair<std::string, torch::Tensor>> added;
  int i = 0;
  for (DType d : kAll) {
    std::string name = absl::StrCat("t.", i++, ".", std::string(DTypeName(d)));
    torch::Tensor t = SampleTensor(d, {3, 5});
    ASSERT_TRUE(w.Add(name, t).ok()) << name;
    added.emplace_back(name, t);
  }
  // A scalar and an empty tensor are legal too.
  added.emplace_back("scalar", torch::tensor(3.5f));
  ASSERT_TRUE(w.Add("scalar", added.back().second).ok());
  added.emplace_back("empty", torch::zeros({0, 4}));
  ASSERT_TRUE(w.Add("empty", added.back().second).ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_THAT(w.files(), ::testing::ElementsAre("model.safetensors"));

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->TensorNames().size(), added.size());
  for (const auto& [name, t] : added) {
    auto loaded = (*ckpt)->Load(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(loaded->sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(*loaded, t)) << name;
    auto raw = (*ckpt)->RawBytes(name);
    ASSERT_TRUE(raw.ok());
    torch::Tensor c = t.contiguous();
    ASSERT_EQ(raw->size(), c.nbytes()) << name;
    EXPECT_EQ(0, std::memcmp(raw->data(), c.data_ptr(), c.nbytes())) << name;
  }
  // The header starts with the metadata and is padded to 8 bytes.
  auto bytes = ReadFile(JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(bytes.ok());
  uint64_t hlen;
  std::memcpy(&hlen, bytes->data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  EXPECT_EQ(bytes->substr(8, 31), "{\"__metadata__\":{\"format\":\"pt\"}");
  auto file = SafetensorsFile::Open(JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().value("format", ""), "pt");
  // Tensors appear in insertion order in the data section.
  EXPECT_EQ((*file)->tensors().front().name, added.front().first);
}

TEST(SafetensorsTest, ViewLoadAliasesTheMapping) {
  std::string dir = MakeTempDir();
  SafetensorsWriter w(dir, 0);
  torch::Tensor t = torch::arange(12, torch::kFloat32).reshape({3, 4});
  ASSERT_TRUE(w.Add("a", t).ok());
  ASSERT_TRUE(w.Finish().ok());
  auto f = SafetensorsFile::Open(JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(f.ok());
  auto view = (*f)->Load("a", /*copy=*/false);
  ASSERT_TRUE(view.ok());
  EXPECT_TRUE(torch::equal(*view, t));
  EXPECT_EQ(view->data_ptr(),
            static_cast<const void*>((*f)->RawBytes(*(*f)->Find("a")).data()));
  auto missing = (*f)->Load("b");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("\"b\""));
}

TEST(SafetensorsTest, ShardedRoundTripWithIndex) {
  std::string dir = MakeTempDir();
  // Each tensor is 400 bytes; 1000-byte shards hold two of them.
  SafetensorsWriter w(dir, /*max_shard_bytes=*/1000);
  std::vector<torch::Tensor> ts;
  for (int i = 0; i < 5; ++i) {
    ts.push_back(torch::full({10, 10}, static_cast<float>(i)));
    ASSERT_TRUE(w.Add(absl::StrCat("layer.", i, ".weight"), ts.back()).ok());
  }
  ASSERT_TRUE(w.AddRaw("raw", DType::kU8, {3}, std::string("xyz")).ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_THAT(w.files(),
              ::testing::ElementsAre("model-00001-of-00003.safetensors",
                                     "model-00002-of-00003.safetensors",
                                     "model-00003-of-00003.safetensors",
                                     "model.safetensors.index.json"));
  EXPECT_FALSE(PathExists(JoinPath(dir, "model.safetensors")));
  auto index_text = ReadFile(JoinPath(dir, "model.safetensors.index.json"));
  ASSERT_TRUE(index_text.ok());
  auto index = nlohmann::json::parse(*index_text);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 5 * 400 + 3);
  EXPECT_EQ(index["weight_map"]["layer.0.weight"],
            "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.4.weight"],
            "model-00003-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["raw"], "model-00003-of-00003.safetensors");

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->files().size(), 3u);
  EXPECT_EQ((*ckpt)->TotalTensorBytes(), 5u * 400 + 3);
  for (int i = 0; i < 5; ++i) {
    auto t = (*ckpt)->Load(absl::StrCat("layer.", i, ".weight"));
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(torch::equal(*t, ts[i]));
  }
  auto raw = (*ckpt)->RawBytes("raw");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, "xyz");
  auto missing = (*ckpt)->Info("nope");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope"));
  // No temporary files are left behind.
  auto listing = ListFilesRecursive(dir);
  ASSERT_TRUE(listing.ok());
  EXPECT_EQ(listing->size(), 4u);
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  std::string dir = MakeTempDir();
  SafetensorsWriter w(dir, 0);
  ASSERT_TRUE(w.Add("a", torch::ones({2})).ok());
  auto dup = w.Add("a", torch::ones({2}));
  EXPECT_FALSE(dup.ok());
  EXPECT_THAT(std::string(dup.message()), HasSubstr("\"a\""));
  auto size = w.AddRaw("r", DType::kF32, {3}, std::string(8, '\0'));
  EXPECT_FALSE(size.ok());
  EXPECT_THAT(std::string(size.message()), HasSubstr("\"r\""));
  EXPECT_FALSE(w.Add("", torch::ones({1})).ok());
  EXPECT_FALSE(
      w.Add("c", torch::ones({2}, torch::kComplexFloat)).ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_FALSE(w.Add("late", torch::ones({1})).ok());
  EXPECT_FALSE(w.Finish().ok());
}

TEST(SafetensorsTest, UnfinishedWriterLeavesNothing) {
  std::string dir = MakeTempDir();
  {
    SafetensorsWriter w(dir, 100);
    ASSERT_TRUE(w.Add("a", torch::ones({20})).ok());
    ASSERT_TRUE(w.Add("b", torch::ones({20})).ok());  // stages shard 1
  }
  auto listing = ListFilesRecursive(dir);
  ASSERT_TRUE(listing.ok());
  EXPECT_TRUE(listing->empty());
}

struct BadCase {
  std::string label;
  std::string header;
  std::string data;
  int64_t header_len;  // -1: the real length
  std::string expect;  // substring of the message besides the path
};

TEST(SafetensorsTest, RejectsMalformedFiles) {
  std::string dir = MakeTempDir();
  const std::string d16(16, '\1');
  std::vector<BadCase> cases = {
      {"past_end", "{}", "", 1000, "past the end"},
      {"not_json", "{\"a\": ", "", -1, "not valid JSON"},
      {"not_object", "[1,2]", "", -1, "not a JSON object"},
      {"unknown_dtype",
       R"({"w.bad":{"dtype":"F7","shape":[2],"data_offsets":[0,16]}})", d16,
       -1, "\"w.bad\""},
      {"size_mismatch",
       R"({"w.size":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16,
       -1, "\"w.size\""},
      {"out_of_data",
       R"({"w.oob":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d16,
       -1, "\"w.oob\""},
      {"overlap",
       R"({"w.a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
       R"("w.b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       d16, -1, "\"w.b\" overlaps tensor \"w.a\""},
      {"reversed",
       R"({"w.rev":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", d16,
       -1, "\"w.rev\""},
      {"duplicate",
       R"({"w.dup":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
       R"("w.dup":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
       d16, -1, "\"w.dup\" appears twice"},
      {"missing_shape", R"({"w.ns":{"dtype":"U8","data_offsets":[0,1]}})",
       d16, -1, "\"w.ns\": shape is missing"},
      {"negative_dim",
       R"({"w.neg":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", d16,
       -1, "\"w.neg\""},
      {"bad_metadata", R"({"__metadata__":{"format":1}})", "", -1,
       "__metadata__.format"},
  };
  for (const BadCase& c : cases) {
    std::string path = WriteRawFile(dir, c.label + ".safetensors", c.header,
                                    c.data, c.header_len);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << c.label;
    EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << c.label;
    std::string msg(f.status().message());
    EXPECT_THAT(msg, HasSubstr(path)) << c.label;
    EXPECT_THAT(msg, HasSubstr(c.expect)) << c.label;
  }
  // Shorter than the 8-byte length prefix.
  std::string tiny = JoinPath(dir, "tiny.safetensors");
  ASSERT_TRUE(WriteFileAtomically(tiny, "abc").ok());
  auto f = SafetensorsFile::Open(tiny);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(tiny));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("shorter"));
  // Missing file.
  auto none = SafetensorsFile::Open(JoinPath(dir, "none.safetensors"));
  EXPECT_TRUE(absl::IsNotFound(none.status()));
}

TEST(SafetensorsTest, GapsAreAllowed) {
  std::string dir = MakeTempDir();
  std::string path = WriteRawFile(
      dir, "gap.safetensors",
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},)"
      R"("a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
      "ab....cd");
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 2u);
  EXPECT_EQ((*f)->tensors()[0].name, "a");  // sorted by offset
  EXPECT_EQ((*f)->RawBytes(*(*f)->Find("b")), "cd");
}

TEST(SafetensorsTest, IndexErrorsNameShardAndTensor) {
  // Index naming a missing shard.
  {
    std::string dir = MakeTempDir();
    ASSERT_TRUE(WriteFileAtomically(
                    JoinPath(dir, "model.safetensors.index.json"),
                    R"({"weight_map":{"x.weight":"model-00001-of-00002.safetensors"}})")
                    .ok());
    auto c = Checkpoint::Open(dir);
    ASSERT_FALSE(c.ok());
    std::string msg(c.status().message());
    EXPECT_THAT(msg, HasSubstr("model-00001-of-00002.safetensors"));
    EXPECT_THAT(msg, HasSubstr("model.safetensors.index.json"));
  }
  // Index naming a tensor its shard does not hold.
  {
    std::string dir = MakeTempDir();
    SafetensorsWriter w(dir, 0);
    ASSERT_TRUE(w.Add("present", torch::ones({2})).ok());
    ASSERT_TRUE(w.Finish().ok());
    ASSERT_EQ(::rename(JoinPath(dir, "model.safetensors").c_str(),
                       JoinPath(dir, "shard-a.safetensors").c_str()),
              0);
    ASSERT_TRUE(WriteFileAtomically(
                    JoinPath(dir, "model.safetensors.index.json"),
                    R"({"weight_map":{"present":"shard-a.safetensors",)"
                    R"("absent.weight":"shard-a.safetensors"}})")
                    .ok());
    auto c = Checkpoint::Open(dir);
    ASSERT_FALSE(c.ok());
    std::string msg(c.status().message());
    EXPECT_THAT(msg, HasSubstr("absent.weight"));
    EXPECT_THAT(msg, HasSubstr("shard-a.safetensors"));
  }
  // Path escapes in the index are refused.
  {
    std::string dir = MakeTempDir();
    ASSERT_TRUE(WriteFileAtomically(
                    JoinPath(dir, "model.safetensors.index.json"),
                    R"({"weight_map":{"x":"../evil.safetensors"}})")
                    .ok());
    auto c = Checkpoint::Open(dir);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("evil"));
  }
  // Neither file present.
  {
    std::string dir = MakeTempDir();
    auto c = Checkpoint::Open(dir);
    EXPECT_TRUE(absl::IsNotFound(c.status()));
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(dir));
  }
}

TEST(SafetensorsTest, SingleFileRewriteRemovesStaleIndex) {
  std::string dir = MakeTempDir();
  {
    SafetensorsWriter w(dir, 8);
    ASSERT_TRUE(w.Add("a", torch::ones({2})).ok());
    ASSERT_TRUE(w.Add("b", torch::ones({2})).ok());
    ASSERT_TRUE(w.Finish().ok());
    ASSERT_EQ(w.files().size(), 3u);
  }
  SafetensorsWriter w(dir, 0);
  ASSERT_TRUE(w.Add("c", torch::ones({2})).ok());
  ASSERT_TRUE(w.Finish().ok());
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_THAT((*c)->TensorNames(), ::testing::ElementsAre("c"));
  EXPECT_FALSE(PathExists(JoinPath(dir, "model.safetensors.index.json")));
  // And back to sharded: the single file must not shadow the index.
  SafetensorsWriter w2(dir, 8);
  ASSERT_TRUE(w2.Add("d", torch::ones({2})).ok());
  ASSERT_TRUE(w2.Add("e", torch::ones({2})).ok());
  ASSERT_TRUE(w2.Finish().ok());
  EXPECT_FALSE(PathExists(JoinPath(dir, "model.safetensors")));
  c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_THAT((*c)->TensorNames(), ::testing::ElementsAre("d", "e"));
}

}  // namespace
}  // namespace roundhouse::engine
