#include "worker/engine/checkpoint_store.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;

constexpr char kFingerprintFile[] = "fingerprint.json";

absl::StatusOr<json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

bool HasChains(const std::string& block_dir) {
  return PathExists(JoinPath(JoinPath(block_dir, "chains"),
                             "model.safetensors"));
}

}  // namespace

std::string CheckpointStore::BlockDir(int k) const {
  return JoinPath(dir_, absl::StrFormat("block-%05d", k));
}

absl::StatusOr<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(
    const std::string& dir, const std::string& fingerprint) {
  std::unique_ptr<CheckpointStore> store(new CheckpointStore());
  store->dir_ = dir;
  store->fingerprint_ = fingerprint;
  const std::string fp_path = JoinPath(dir, kFingerprintFile);
  bool matches = false;
  if (PathExists(fp_path)) {
    auto stored = ReadJson(fp_path);
    matches = stored.ok() && stored->value("fingerprint", "") == fingerprint;
    store->note_ = matches ? "" : "fresh: fingerprint changed";
  } else {
    store->note_ = "fresh: no checkpoint";
  }
  if (!matches) {
    // Everything under another fingerprint is useless and could be mistaken
    // for ours later.
    RETURN_IF_ERROR(RemoveTree(dir));
    RETURN_IF_ERROR(MakeDirs(dir));
    json fp = {{"fingerprint", fingerprint}};
    RETURN_IF_ERROR(
        WriteFileAtomically(fp_path, fp.dump(2) + "\n"));
    return store;
  }
  int k = 0;
  int newest_with_chains = 0;
  while (true) {
    const std::string bd = store->BlockDir(k);
    auto meta = ReadJson(JoinPath(bd, "meta.json"));
    if (!meta.ok() || meta->value("fingerprint", "") != fingerprint ||
        meta->value("block_index", -1) != k ||
        !PathExists(JoinPath(bd, "model.safetensors"))) {
      break;
    }
    ++k;
    if (HasChains(bd)) newest_with_chains = k;
  }
  store->resumable_blocks_ = newest_with_chains;
  // Blocks beyond the trusted prefix are re-tuned; drop them now so a later
  // scan cannot pick up a stale one.
  for (int j = newest_with_chains;; ++j) {
    const std::string bd = store->BlockDir(j);
    if (!PathExists(bd)) break;
    RETURN_IF_ERROR(RemoveTree(bd));
  }
  store->note_ = newest_with_chains > 0
                     ? absl::StrCat("resumed after block ",
                                    newest_with_chains - 1)
                     : "fresh: no complete block";
  return store;
}

absl::StatusOr<BlockResult> CheckpointStore::LoadBlock(int k) const {
  if (k < 0 || k >= resumable_blocks_) {
    return absl::OutOfRangeError(
        absl::StrCat("checkpoint block ", k, " is not resumable"));
  }
  const std::string bd = BlockDir(k);
  ASSIGN_OR_RETURN(json meta, ReadJson(JoinPath(bd, "meta.json")));
  ASSIGN_OR_RETURN(auto file,
                   SafetensorsFile::Open(JoinPath(bd, "model.safetensors")));
  BlockResult r;
  r.block_index = k;
  r.loss_before = meta.value("loss_before", 0.0);
  r.loss_after = meta.value("loss_after", 0.0);
  r.best_iter = meta.value("best_iter", 0);
  if (!meta.contains("layers") || !meta["layers"].is_array()) {
    return absl::DataLossError(
        absl::StrCat(bd, "/meta.json: \"layers\" missing"));
  }
  for (const json& name : meta["layers"]) {
    const std::string s = name.get<std::string>();
    QdqResult q;
    ASSIGN_OR_RETURN(q.weight_qdq, file->Load(s + ".weight_qdq"));
    ASSIGN_OR_RETURN(q.scale, file->Load(s + ".scale"));
    ASSIGN_OR_RETURN(q.zero, file->Load(s + ".zero"));
    ASSIGN_OR_RETURN(torch::Tensor codes, file->Load(s + ".codes"));
    q.codes = codes.to(torch::kInt32);
    r.layers.emplace(s, std::move(q));
  }
  return r;
}

absl::Status CheckpointStore::LoadChains(torch::Tensor* fp,
                                         torch::Tensor* q) const {
  if (resumable_blocks_ == 0) {
    return absl::FailedPreconditionError("no resumable checkpoint block");
  }
  const std::string path = JoinPath(
      JoinPath(BlockDir(resumable_blocks_ - 1), "chains"),
      "model.safetensors");
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  ASSIGN_OR_RETURN(*fp, file->Load("fp"));
  if (file->Find("q") != nullptr) {
    ASSIGN_OR_RETURN(*q, file->Load("q"));
  } else {
    *q = torch::Tensor();
  }
  return absl::OkStatus();
}

absl::Status CheckpointStore::WriteBlock(const BlockResult& result,
                                         const torch::Tensor& fp,
                                         const torch::Tensor& q) {
  const int k = result.block_index;
  const std::string final_dir = BlockDir(k);
  const std::string tmp = absl::StrCat(final_dir, ".tmp-", ::getpid());
  RETURN_IF_ERROR(RemoveTree(tmp));
  RETURN_IF_ERROR(RemoveTree(final_dir));
  RETURN_IF_ERROR(MakeDirs(tmp));
  json layers = json::array();
  {
    SafetensorsWriter w(tmp, /*max_shard_bytes=*/0);
    for (const auto& [suffix, r] : result.layers) {
      layers.push_back(suffix);
      RETURN_IF_ERROR(w.Add(suffix + ".weight_qdq", r.weight_qdq));
      RETURN_IF_ERROR(w.Add(suffix + ".scale", r.scale));
      RETURN_IF_ERROR(w.Add(suffix + ".zero", r.zero));
      // Codes are < 2^8 (bits <= 8): a quarter of the int32 size on disk.
      RETURN_IF_ERROR(w.Add(suffix + ".codes", r.codes.to(torch::kUInt8)));
    }
    RETURN_IF_ERROR(w.Finish());
  }
  {
    SafetensorsWriter w(JoinPath(tmp, "chains"), /*max_shard_bytes=*/0);
    RETURN_IF_ERROR(w.Add("fp", fp));
    if (q.defined() && !q.is_same(fp)) RETURN_IF_ERROR(w.Add("q", q));
    RETURN_IF_ERROR(w.Finish());
  }
  json meta = {{"block_index", k},
               {"fingerprint", fingerprint_},
               {"loss_before", result.loss_before},
               {"loss_after", result.loss_after},
               {"best_iter", result.best_iter},
               {"layers", layers}};
  RETURN_IF_ERROR(
      WriteFileAtomically(JoinPath(tmp, "meta.json"), meta.dump(2) + "\n"));
  RETURN_IF_ERROR(FsyncPath(JoinPath(tmp, "chains")));
  RETURN_IF_ERROR(FsyncPath(tmp));
  RETURN_IF_ERROR(RenameDurably(tmp, final_dir));
  if (k > 0) {
    RETURN_IF_ERROR(RemoveTree(JoinPath(BlockDir(k - 1), "chains")));
  }
  resumable_blocks_ = k + 1;
  return absl::OkStatus();
}

}  // namespace roundhouse::engine
