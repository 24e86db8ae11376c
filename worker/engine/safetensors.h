#ifndef ROUNDHOUSE_WORKER_ENGINE_SAFETENSORS_H_
#define ROUNDHOUSE_WORKER_ENGINE_SAFETENSORS_H_

// Reading and writing the Hugging Face safetensors format.
//
// File layout: an 8-byte little-endian header length N, N bytes of JSON (an
// object mapping tensor names to {"dtype","shape","data_offsets":[b,e]} plus
// an optional "__metadata__" object of strings), then the data section; the
// data offsets are relative to the start of the data section.
//
// Validation is strict: every malformed file yields
// absl::InvalidArgumentError naming the file (and the tensor where one is
// involved); a missing file yields absl::NotFoundError. Overlapping
// tensors are rejected, gaps between tensors are allowed (the Python reader
// accepts neither overlaps nor, in recent versions, gaps, but gaps do not
// make any tensor ambiguous).

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include <torch/torch.h>

namespace roundhouse::engine {

// Element types of safetensors (the subset roundhouse reads and writes).
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL".
// The error names the offending string.
absl::StatusOr<DType> ParseDType(std::string_view s);
std::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);
c10::ScalarType ToTorch(DType dtype);
// InvalidArgument for torch types safetensors cannot hold here.
absl::StatusOr<DType> FromTorch(c10::ScalarType type);

// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Absolute byte offsets of the data within the file: [begin, end).
  uint64_t begin = 0;
  uint64_t end = 0;

  int64_t NumElements() const;
  uint64_t NumBytes() const { return end - begin; }
};

// One .safetensors file, memory-mapped read-only for the lifetime of the
// object. Immutable after Open, hence thread-safe. Tensors returned by
// Load(copy=false) alias the mapping and must not outlive this object.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In file (data offset) order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // The exact stored bytes of `info` (which must come from this file), zero
  // copy; valid while this object lives.
  absl::string_view RawBytes(const TensorInfo& info) const;
  // A CPU, contiguous tensor with the stored dtype and shape. copy=true
  // detaches it from the mapping; copy=false returns a read-only view (do
  // not write into it). NotFound names the tensor and file.
  absl::StatusOr<torch::Tensor> Load(std::string_view name,
                                     bool copy = true) const;
  // The "__metadata__" object, or an empty object.
  const nlohmann::json& metadata() const { return metadata_; }
  // Size of the whole file in bytes.
  uint64_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  const char* data_ = nullptr;  // the mapping (nullptr for an empty map)
  uint64_t size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// A checkpoint directory: `model.safetensors`, or (when that is absent, the
// precedence transformers uses) the shards listed in
// `model.safetensors.index.json` ({"weight_map": {tensor: shard file}}).
// Every referenced shard is opened and cross-checked against the index: a
// missing shard or a tensor absent from its shard is an error naming both;
// tensors a shard holds but the index does not list are ignored (as the
// Python loaders do). Immutable after Open, thread-safe.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Sorted.
  std::vector<std::string> TensorNames() const;
  bool Has(std::string_view name) const;
  // NotFound names the tensor and the directory.
  absl::StatusOr<const TensorInfo*> Info(std::string_view name) const;
  // A copy (CPU, contiguous, stored dtype).
  absl::StatusOr<torch::Tensor> Load(std::string_view name) const;
  absl::StatusOr<absl::string_view> RawBytes(std::string_view name) const;
  // Absolute shard paths, in index order (sorted by file name).
  const std::vector<std::string>& files() const { return files_; }
  // The file holding `name`, or nullptr.
  const SafetensorsFile* FileOf(std::string_view name) const;
  // Sum of the data bytes of all tensors.
  uint64_t TotalTensorBytes() const;

 private:
  Checkpoint() = default;

  std::string dir_;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  // tensor name -> (shard index, entry)
  std::map<std::string, std::pair<size_t, const TensorInfo*>, std::less<>>
      tensors_;
};

// Writes tensors into a directory as safetensors, optionally sharded.
// Not thread-safe. Memory: at most one shard's worth of tensor bytes is held
// at a time — when the next tensor would overflow the current shard, the
// shard is written to a temporary file first — so huge models can be written
// by adding tensors one after another.
//
// Output: `model.safetensors` when everything fits into one shard (or
// max_shard_bytes == 0); otherwise `model-0000i-of-0000n.safetensors` plus
// `model.safetensors.index.json`
// ({"metadata":{"total_size":N},"weight_map":{name:file}}). Tensors appear
// in the order added; the header lists "__metadata__" ({"format":"pt"} plus
// SetMetadata entries) first, then the tensors in order, and is padded with
// spaces to a multiple of 8 bytes. A tensor larger than max_shard_bytes gets
// a shard of its own. Every file is written completely and fsynced under a
// temporary name and renamed in Finish, so readers never see a partial
// file; files already present under the final names are replaced, and a
// stale model.safetensors / index that would shadow or contradict the new
// output is removed.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::string dir,
                             uint64_t max_shard_bytes = 5'000'000'000ull);
  // Removes staged temporary files when Finish did not succeed.
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Extra "__metadata__" string entries (format=pt is always written).
  void SetMetadata(const std::string& key, const std::string& value);

  // Copies `t` (moved to CPU, made contiguous). Fails on duplicate or empty
  // names, unsupported dtypes, or after Finish.
  absl::Status Add(const std::string& name, const torch::Tensor& t);
  // Stores `bytes` verbatim; its size must equal prod(shape) * DTypeSize.
  absl::Status AddRaw(const std::string& name, DType dtype,
                      std::vector<int64_t> shape, std::string bytes);

  // Writes the remaining files and renames everything into place (the
  // directory is created when missing). Call once.
  absl::Status Finish();
  // File names (relative to dir) written by Finish: shards in order, then
  // the index when sharded.
  const std::vector<std::string>& files() const { return files_; }
  // Total tensor data bytes added so far.
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  absl::Status CheckName(const std::string& name);
  absl::Status Append(Pending p);
  // Writes the pending tensors into a fresh temporary file.
  absl::Status StageShard();

  std::string dir_;
  uint64_t max_shard_bytes_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::vector<Pending> pending_;
  uint64_t pending_bytes_ = 0;
  std::vector<std::string> staged_;                     // temp paths
  std::vector<std::vector<std::string>> staged_names_;  // tensors per shard
  std::map<std::string, bool, std::less<>> names_;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
  std::vector<std::string> files_;
};

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_SAFETENSORS_H_
