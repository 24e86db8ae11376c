#include "worker/engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

// The Python/Rust reader refuses headers above 100 MB; so do we, which also
// bounds the memory a hostile header length can make us allocate.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
  c10::ScalarType torch;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8, c10::ScalarType::Double},
    {DType::kF32, "F32", 4, c10::ScalarType::Float},
    {DType::kF16, "F16", 2, c10::ScalarType::Half},
    {DType::kBF16, "BF16", 2, c10::ScalarType::BFloat16},
    {DType::kI64, "I64", 8, c10::ScalarType::Long},
    {DType::kI32, "I32", 4, c10::ScalarType::Int},
    {DType::kI16, "I16", 2, c10::ScalarType::Short},
    {DType::kI8, "I8", 1, c10::ScalarType::Char},
    {DType::kU8, "U8", 1, c10::ScalarType::Byte},
    {DType::kBool, "BOOL", 1, c10::ScalarType::Bool},
};

const DTypeEntry& EntryOf(DType d) {
  for (const auto& e : kDTypes) {
    if (e.dtype == d) return e;
  }
  return kDTypes[0];  // unreachable: every enumerator is listed
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status Invalid(const std::string& path, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", msg));
}

// Element count with overflow detection; -1 on overflow or negative dims.
int64_t CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > INT64_MAX / d) return -1;
    n *= d;
  }
  return n;
}

absl::Status WriteAll(int fd, const char* p, size_t n,
                      const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

std::string ShardName(size_t i, size_t n) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
}

}  // namespace

absl::StatusOr<DType> ParseDType(std::string_view s) {
  for (const auto& e : kDTypes) {
    if (s == e.name) return e.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown safetensors dtype \"", std::string(s), "\""));
}

std::string_view DTypeName(DType dtype) { return EntryOf(dtype).name; }
size_t DTypeSize(DType dtype) { return EntryOf(dtype).size; }
c10::ScalarType ToTorch(DType dtype) { return EntryOf(dtype).torch; }

absl::StatusOr<DType> FromTorch(c10::ScalarType type) {
  for (const auto& e : kDTypes) {
    if (e.torch == type) return e.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "torch dtype ", c10::toString(type), " cannot be stored in safetensors"));
}

int64_t TensorInfo::NumElements() const { return CheckedNumel(shape); }

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (data_ != nullptr) {
    ::munmap(const_cast<char*>(data_), size_);
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string msg =
        absl::StrCat("cannot open safetensors file ", path, ": ",
                     std::strerror(e));
    if (e == ENOENT) return absl::NotFoundError(msg);
    return absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "not a regular file");
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    return Invalid(path, absl::StrCat("file is ", f->size_,
                                      " bytes, shorter than the 8-byte "
                                      "header length"));
  }
  void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (m == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ",
                                            std::strerror(map_errno)));
  }
  f->data_ = static_cast<const char*>(m);

  uint64_t header_len = 0;
  std::memcpy(&header_len, f->data_, 8);  // little-endian hosts only
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len,
                                      " exceeds the 100 MB limit"));
  }
  if (header_len > f->size_ - 8) {
    return Invalid(path, absl::StrCat("header length ", header_len,
                                      " runs past the end of the file (",
                                      f->size_, " bytes)"));
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = f->size_ - data_start;
  std::string_view header(f->data_ + 8, header_len);

  // nlohmann::json keeps the last of duplicated keys silently; a parser
  // callback sees every top-level key, so duplicates can be rejected.
  std::vector<std::string> duplicates;
  std::set<std::string> seen;
  nlohmann::json::parser_callback_t cb =
      [&](int depth, nlohmann::json::parse_event_t event,
          nlohmann::json& parsed) {
        if (event == nlohmann::json::parse_event_t::key && depth == 1 &&
            parsed.is_string()) {
          if (!seen.insert(parsed.get<std::string>()).second) {
            duplicates.push_back(parsed.get<std::string>());
          }
        }
        return true;
      };
  nlohmann::json j = nlohmann::json::parse(header.begin(), header.end(), cb,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(path, "header is not valid JSON");
  if (!j.is_object()) return Invalid(path, "header is not a JSON object");
  if (!duplicates.empty()) {
    return Invalid(path, absl::StrCat("tensor \"", duplicates[0],
                                      "\" appears twice in the header"));
  }

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        return Invalid(path, "__metadata__ is not an object");
      }
      for (auto m_it = v.begin(); m_it != v.end(); ++m_it) {
        if (!m_it.value().is_string()) {
          return Invalid(path, absl::StrCat("__metadata__.", m_it.key(),
                                            " is not a string"));
        }
      }
      f->metadata_ = v;
      continue;
    }
    auto bad = [&](absl::string_view what) {
      return Invalid(path, absl::StrCat("tensor \"", name, "\": ", what));
    };
    if (!v.is_object()) return bad("entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return bad("dtype is missing");
    if (sh == v.end() || !sh->is_array()) return bad("shape is missing");
    if (off == v.end() || !off->is_array() || off->size() != 2) {
      return bad("data_offsets must be an array of two integers");
    }
    TensorInfo info;
    info.name = name;
    auto parsed = ParseDType(dt->get<std::string>());
    if (!parsed.ok()) return bad(parsed.status().message());
    info.dtype = *parsed;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) {
        return bad("shape entries must be non-negative integers");
      }
      info.shape.push_back(d.get<int64_t>());
    }
    for (const auto& o : *off) {
      if (!o.is_number_unsigned()) {
        return bad("data_offsets must be non-negative integers");
      }
    }
    uint64_t b = (*off)[0].get<uint64_t>();
    uint64_t e = (*off)[1].get<uint64_t>();
    if (e < b) {
      return bad(absl::StrCat("data_offsets [", b, ",", e, "] end before ",
                              "they begin"));
    }
    if (e > data_len) {
      return bad(absl::StrCat("data_offsets [", b, ",", e,
                              "] lie outside the data section (", data_len,
                              " bytes)"));
    }
    int64_t numel = CheckedNumel(info.shape);
    if (numel < 0) return bad("shape overflows");
    uint64_t want = static_cast<uint64_t>(numel) * DTypeSize(info.dtype);
    if (want / DTypeSize(info.dtype) != static_cast<uint64_t>(numel) ||
        want != e - b) {
      return bad(absl::StrCat("shape ", ShapeString(info.shape), " x ",
                              std::string(DTypeName(info.dtype)), " needs ",
                              want, " bytes but data_offsets span ", e - b));
    }
    info.begin = data_start + b;
    info.end = data_start + e;
    f->tensors_.push_back(std::move(info));
  }

  std::stable_sort(f->tensors_.begin(), f->tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin
                                               : a.end < b.end;
                   });
  // Gaps are tolerated; two tensors sharing bytes are not (a write through
  // one would change the other, and no writer produces that).
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : f->tensors_) {
    if (prev != nullptr && t.begin < prev->end) {
      return Invalid(path, absl::StrCat("tensor \"", t.name,
                                        "\" overlaps tensor \"", prev->name,
                                        "\""));
    }
    if (t.end > t.begin) prev = &t;
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) {
    f->index_.emplace(f->tensors_[i].name, i);
  }
  return f;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::string_view SafetensorsFile::RawBytes(const TensorInfo& info) const {
  return absl::string_view(data_ + info.begin, info.end - info.begin);
}

absl::StatusOr<torch::Tensor> SafetensorsFile::Load(std::string_view name,
                                                    bool copy) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor \"", std::string(name),
                                            "\" not found in ", path_));
  }
  try {
    auto options = torch::TensorOptions().dtype(ToTorch(info->dtype));
    if (info->NumElements() == 0) return torch::empty(info->shape, options);
    // The mapping is read-only; from_blob needs a non-const pointer but the
    // view is documented as read-only.
    torch::Tensor view = torch::from_blob(
        const_cast<char*>(data_ + info->begin), info->shape, options);
    return copy ? view.clone() : view;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading tensor \"",
                                            std::string(name), "\" from ",
                                            path_, ": ", e.what_without_backtrace()));
  }
}

// ---------------------------------------------------------------------------
// Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& dir) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  c->dir_ = dir;
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  const std::string index_path = JoinPath(dir, kIndexFile);
  const std::string single_path = JoinPath(dir, kSingleFile);
  // transformers looks for the single file first; so do we, so that both
  // read the same tensors from a directory holding both.
  if (!PathExists(single_path) && PathExists(index_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return Invalid(index_path, "not a JSON object");
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return Invalid(index_path, "weight_map is missing or not an object");
    }
    std::map<std::string, size_t> shard_index;
    std::vector<std::pair<std::string, std::string>> entries;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return Invalid(index_path, absl::StrCat("weight_map.", it.key(),
                                                " is not a file name"));
      }
      std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos ||
          file == "." || file == "..") {
        return Invalid(index_path,
                       absl::StrCat("weight_map.", it.key(), ": \"", file,
                                    "\" is not a plain file name"));
      }
      shard_index.emplace(file, 0);
      entries.emplace_back(it.key(), file);
    }
    size_t i = 0;
    for (auto& [file, idx] : shard_index) {
      idx = i++;
      std::string path = JoinPath(dir, file);
      auto shard = SafetensorsFile::Open(path);
      if (!shard.ok()) {
        if (absl::IsNotFound(shard.status())) {
          return Invalid(index_path,
                         absl::StrCat("shard ", file,
                                      " named in weight_map is missing (",
                                      path, ")"));
        }
        return shard.status();
      }
      c->files_.push_back(path);
      c->shards_.push_back(*std::move(shard));
    }
    for (const auto& [name, file] : entries) {
      size_t idx = shard_index.at(file);
      const TensorInfo* info = c->shards_[idx]->Find(name);
      if (info == nullptr) {
        return Invalid(index_path,
                       absl::StrCat("tensor \"", name, "\" is mapped to ",
                                    file, " but that shard does not hold it"));
      }
      c->tensors_.emplace(name, std::make_pair(idx, info));
    }
    return c;
  }
  if (!PathExists(single_path)) {
    return absl::NotFoundError(absl::StrCat("no ", kSingleFile, " or ",
                                            kIndexFile, " in ", dir));
  }
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
  c->files_.push_back(single_path);
  for (const TensorInfo& t : file->tensors()) {
    c->tensors_.emplace(t.name, std::make_pair(size_t{0}, &t));
  }
  c->shards_.push_back(std::move(file));
  return c;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, _] : tensors_) names.push_back(name);
  return names;  // std::map iterates in sorted order
}

bool Checkpoint::Has(std::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

absl::StatusOr<const TensorInfo*> Checkpoint::Info(
    std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor \"", std::string(name), "\" not found in checkpoint ", dir_));
  }
  return it->second.second;
}

const SafetensorsFile* Checkpoint::FileOf(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : shards_[it->second.first].get();
}

absl::StatusOr<torch::Tensor> Checkpoint::Load(std::string_view name) const {
  const SafetensorsFile* f = FileOf(name);
  if (f == nullptr) return Info(name).status();
  return f->Load(name, /*copy=*/true);
}

absl::StatusOr<absl::string_view> Checkpoint::RawBytes(
    std::string_view name) const {
  ASSIGN_OR_RETURN(const TensorInfo* info, Info(name));
  return FileOf(name)->RawBytes(*info);
}

uint64_t Checkpoint::TotalTensorBytes() const {
  uint64_t total = 0;
  for (const auto& [_, v] : tensors_) total += v.second->NumBytes();
  return total;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

SafetensorsWriter::SafetensorsWriter(std::string dir,
                                     uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) {
    for (const std::string& p : staged_) ::unlink(p.c_str());
  }
}

void SafetensorsWriter::SetMetadata(const std::string& key,
                                    const std::string& value) {
  for (auto& kv : metadata_) {
    if (kv.first == key) {
      kv.second = value;
      return;
    }
  }
  metadata_.emplace_back(key, value);
}

absl::Status SafetensorsWriter::CheckName(const std::string& name) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer for ", dir_, " already finished"));
  }
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tensor name \"", name, "\""));
  }
  if (names_.count(name) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" added twice"));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Add(const std::string& name,
                                    const torch::Tensor& t) {
  RETURN_IF_ERROR(CheckName(name));
  if (!t.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" is undefined"));
  }
  auto dtype = FromTorch(t.scalar_type());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\": ", dtype.status().message()));
  }
  Pending p;
  p.name = name;
  p.dtype = *dtype;
  try {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    p.shape.assign(c.sizes().begin(), c.sizes().end());
    p.bytes.assign(static_cast<const char*>(c.data_ptr()), c.nbytes());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(
        "tensor \"", name, "\": ", e.what_without_backtrace()));
  }
  return Append(std::move(p));
}

absl::Status SafetensorsWriter::AddRaw(const std::string& name, DType dtype,
                                       std::vector<int64_t> shape,
                                       std::string bytes) {
  RETURN_IF_ERROR(CheckName(name));
  int64_t numel = CheckedNumel(shape);
  if (numel < 0 ||
      static_cast<uint64_t>(numel) * DTypeSize(dtype) != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\": shape ", ShapeString(shape), " x ",
        std::string(DTypeName(dtype)), " does not match ", bytes.size(), " bytes"));
  }
  Pending p{name, dtype, std::move(shape), std::move(bytes)};
  return Append(std::move(p));
}

absl::Status SafetensorsWriter::Append(Pending p) {
  const uint64_t n = p.bytes.size();
  if (max_shard_bytes_ > 0 && !pending_.empty() &&
      pending_bytes_ + n > max_shard_bytes_) {
    RETURN_IF_ERROR(StageShard());
  }
  names_.emplace(p.name, true);
  pending_bytes_ += n;
  total_bytes_ += n;
  pending_.push_back(std::move(p));
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::StageShard() {
  RETURN_IF_ERROR(MakeDirs(dir_));
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata_) meta[k] = v;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  std::vector<std::string> names;
  for (const Pending& p : pending_) {
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = std::string(DTypeName(p.dtype));
    e["shape"] = p.shape;
    e["data_offsets"] = {offset, offset + p.bytes.size()};
    header[p.name] = e;
    offset += p.bytes.size();
    names.push_back(p.name);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint64_t hlen = h.size();
  char len_bytes[8];
  std::memcpy(len_bytes, &hlen, 8);  // little-endian hosts only

  static std::atomic<uint64_t> counter{0};
  std::string tmp = JoinPath(
      dir_, absl::StrCat(".shard-", ::getpid(), "-", counter++, ".tmp"));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  }
  staged_.push_back(tmp);
  absl::Status st = WriteAll(fd, len_bytes, 8, tmp);
  if (st.ok()) st = WriteAll(fd, h.data(), h.size(), tmp);
  for (const Pending& p : pending_) {
    if (!st.ok()) break;
    st = WriteAll(fd, p.bytes.data(), p.bytes.size(), tmp);
  }
  if (st.ok() && ::fsync(fd) != 0) {
    st = absl::InternalError(
        absl::StrCat("fsync failed on ", tmp, ": ", std::strerror(errno)));
  }
  ::close(fd);
  RETURN_IF_ERROR(st);
  staged_names_.push_back(std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer for ", dir_, " already finished"));
  }
  // An empty checkpoint is still a valid (empty) safetensors file.
  if (!pending_.empty() || staged_.empty()) RETURN_IF_ERROR(StageShard());
  const size_t n = staged_.size();
  std::vector<std::string> final_names;
  if (n == 1) {
    final_names.push_back(kSingleFile);
  } else {
    for (size_t i = 0; i < n; ++i) final_names.push_back(ShardName(i, n));
  }
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(
        RenameDurably(staged_[i], JoinPath(dir_, final_names[i])));
  }
  files_ = final_names;
  const std::string index_path = JoinPath(dir_, kIndexFile);
  if (n > 1) {
    std::map<std::string, std::string> weight_map;
    for (size_t i = 0; i < n; ++i) {
      for (const std::string& name : staged_names_[i]) {
        weight_map[name] = final_names[i];
      }
    }
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes_}};
    index["weight_map"] = weight_map;
    RETURN_IF_ERROR(WriteFileAtomically(index_path, index.dump(2) + "\n"));
    files_.push_back(kIndexFile);
    // A stale single file would shadow the index (readers prefer it).
    const std::string single_path = JoinPath(dir_, kSingleFile);
    if (PathExists(single_path) && ::unlink(single_path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(
          "cannot remove stale ", single_path, ": ", std::strerror(errno)));
    }
  } else if (PathExists(index_path)) {
    // A stale index would make readers ignore the file just written.
    if (::unlink(index_path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(
          "cannot remove stale ", index_path, ": ", std::strerror(errno)));
    }
  }
  finished_ = true;
  return absl::OkStatus();
}

}  // namespace roundhouse::engine
