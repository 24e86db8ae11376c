#include "worker/agent/engine_events.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace roundhouse::agent {
namespace {

using json = nlohmann::json;

absl::Status WrongType(const char* field, const char* want) {
  return absl::InvalidArgumentError(
      absl::StrCat("engine event field '", field, "' must be ", want));
}

// Reads an optional number field; absent leaves `out` unchanged.
template <typename T>
absl::Status ReadNumber(const json& j, const char* field, T* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return WrongType(field, "a number");
  *out = it->get<T>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& j, const char* field, std::string* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return WrongType(field, "a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EngineEvent> ParseEngineEvent(absl::string_view line) {
  json j = json::parse(line.begin(), line.end(), nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        "engine output line is not a JSON object");
  }
  EngineEvent event;
  std::string name;
  RETURN_IF_ERROR(ReadString(j, "event", &name));
  if (name.empty()) return WrongType("event", "a non-empty string");
  if (name == "stage") {
    event.kind = EngineEvent::Kind::kStage;
    RETURN_IF_ERROR(ReadString(j, "stage", &event.stage));
    if (event.stage.empty()) return WrongType("stage", "a non-empty string");
  } else if (name == "plan") {
    event.kind = EngineEvent::Kind::kPlan;
    RETURN_IF_ERROR(ReadNumber(j, "blocks_total", &event.blocks_total));
    RETURN_IF_ERROR(ReadNumber(j, "resumed_blocks", &event.resumed_blocks));
  } else if (name == "block") {
    event.kind = EngineEvent::Kind::kBlock;
    RETURN_IF_ERROR(ReadNumber(j, "block_index", &event.block_index));
    if (event.block_index < 0) {
      return WrongType("block_index", "a non-negative integer");
    }
    RETURN_IF_ERROR(ReadNumber(j, "blocks_total", &event.blocks_total));
    RETURN_IF_ERROR(ReadNumber(j, "loss_before", &event.loss_before));
    RETURN_IF_ERROR(ReadNumber(j, "loss_after", &event.loss_after));
    RETURN_IF_ERROR(ReadNumber(j, "seconds", &event.seconds));
  } else if (name == "done") {
    event.kind = EngineEvent::Kind::kDone;
    RETURN_IF_ERROR(ReadString(j, "artifact_dir", &event.artifact_dir));
    auto it = j.find("manifest");
    if (it != j.end() && !it->is_null()) {
      if (!it->is_object()) return WrongType("manifest", "an object");
      event.manifest = *it;
    }
  } else if (name == "error") {
    event.kind = EngineEvent::Kind::kError;
    RETURN_IF_ERROR(ReadString(j, "class", &event.error_class));
    RETURN_IF_ERROR(ReadString(j, "message", &event.error_message));
    RETURN_IF_ERROR(
        ReadNumber(j, "peak_memory_bytes", &event.peak_memory_bytes));
  }
  return event;
}

ProgressTracker::ProgressTracker() {
  progress_.set_stage("loading");
  progress_.set_eta_seconds(-1);
}

void ProgressTracker::Apply(const EngineEvent& event) {
  absl::MutexLock lock(&mu_);
  switch (event.kind) {
    case EngineEvent::Kind::kStage:
      progress_.set_stage(event.stage);
      break;
    case EngineEvent::Kind::kPlan:
      progress_.set_blocks_total(event.blocks_total);
      progress_.set_blocks_done(
          std::max(progress_.blocks_done(), event.resumed_blocks));
      break;
    case EngineEvent::Kind::kBlock: {
      if (event.blocks_total > 0)
        progress_.set_blocks_total(event.blocks_total);
      progress_.set_blocks_done(
          std::max(progress_.blocks_done(), event.block_index + 1));
      roundhouse::v1::BlockProgress* block = progress_.add_blocks();
      block->set_block_index(event.block_index);
      block->set_loss_before(event.loss_before);
      block->set_loss_after(event.loss_after);
      block->set_seconds(event.seconds);
      tuned_seconds_ += event.seconds;
      ++tuned_blocks_;
      break;
    }
    case EngineEvent::Kind::kDone:
      has_done_ = true;
      done_ = event;
      progress_.set_stage("done");
      break;
    case EngineEvent::Kind::kError:
      has_error_ = true;
      error_ = event;
      break;
    case EngineEvent::Kind::kOther:
      break;
  }
}

roundhouse::v1::Progress ProgressTracker::Snapshot() const {
  absl::MutexLock lock(&mu_);
  roundhouse::v1::Progress p = progress_;
  const int total = p.blocks_total();
  const int done = std::min(p.blocks_done(), total > 0 ? total : 0);
  if (p.stage() == "done") {
    p.set_fraction(1.0);
    p.set_eta_seconds(0);
    return p;
  }
  p.set_fraction(total > 0 ? static_cast<double>(done) / total : 0.0);
  // Only blocks tuned by this run measure this machine's speed; resumed
  // blocks cost nothing. After tuning, export time is not predictable from
  // block times, so the ETA is unknown rather than a wrong 0.
  const bool tuning = p.stage() == "tuning" || p.stage() == "calibration" ||
                      p.stage() == "loading";
  if (tuned_blocks_ > 0 && total > 0 && tuning && done < total) {
    p.set_eta_seconds(tuned_seconds_ / tuned_blocks_ * (total - done));
  } else {
    p.set_eta_seconds(-1);
  }
  return p;
}

bool ProgressTracker::has_done() const {
  absl::MutexLock lock(&mu_);
  return has_done_;
}
EngineEvent ProgressTracker::done_event() const {
  absl::MutexLock lock(&mu_);
  return done_;
}
bool ProgressTracker::has_error() const {
  absl::MutexLock lock(&mu_);
  return has_error_;
}
EngineEvent ProgressTracker::error_event() const {
  absl::MutexLock lock(&mu_);
  return error_;
}

namespace {

absl::Status AddListedFile(const std::string& path, const json& entry,
                           roundhouse::v1::ArtifactManifest* out) {
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "manifest.json files entry '", path, "' is not an object"));
  }
  roundhouse::v1::ArtifactFile* f = out->add_files();
  f->set_path(path);
  int64_t size = -1;
  for (const char* key : {"size_bytes", "size"}) {
    auto it = entry.find(key);
    if (it != entry.end() && it->is_number_integer()) {
      size = it->get<int64_t>();
      break;
    }
  }
  auto sha = entry.find("sha256");
  if (size < 0 || sha == entry.end() || !sha->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "manifest.json files entry '", path,
        "' needs an integer size_bytes (or size) and a string sha256"));
  }
  f->set_size_bytes(size);
  f->set_sha256(sha->get<std::string>());
  return absl::OkStatus();
}

absl::Status AddHashedFile(const std::string& dir, const std::string& rel,
                           roundhouse::v1::ArtifactManifest* out) {
  const std::string full = JoinPath(dir, rel);
  struct stat st;
  if (::stat(full.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot stat '", full, "'"));
  }
  // Streamed: artifact shards can be many gigabytes.
  ASSIGN_OR_RETURN(std::string sha, Sha256File(full));
  roundhouse::v1::ArtifactFile* f = out->add_files();
  f->set_path(rel);
  f->set_size_bytes(static_cast<int64_t>(st.st_size));
  f->set_sha256(sha);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<roundhouse::v1::ArtifactManifest> BuildArtifactManifest(
    const std::string& artifact_dir, const json& event_manifest) {
  if (artifact_dir.empty() || !IsDirectory(artifact_dir)) {
    return absl::NotFoundError(
        absl::StrCat("artifact directory '", artifact_dir, "' does not exist"));
  }
  roundhouse::v1::ArtifactManifest out;
  out.set_directory(artifact_dir);
  const std::string manifest_path = JoinPath(artifact_dir, "manifest.json");
  json manifest = event_manifest;
  absl::StatusOr<std::string> on_disk = ReadFile(manifest_path);
  if (on_disk.ok()) {
    out.set_manifest_json(*on_disk);
    json parsed = json::parse(*on_disk, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_discarded() && parsed.is_object()) manifest = parsed;
  } else if (!event_manifest.is_null()) {
    out.set_manifest_json(event_manifest.dump());
  }
  bool listed_manifest = false;
  auto files = manifest.is_object() ? manifest.find("files") : manifest.end();
  if (manifest.is_object() && files != manifest.end()) {
    if (files->is_array()) {
      for (const json& entry : *files) {
        auto p = entry.is_object() ? entry.find("path") : entry.end();
        if (!entry.is_object() || p == entry.end() || !p->is_string()) {
          return absl::InvalidArgumentError(
              "manifest.json 'files' entries need a string 'path'");
        }
        const std::string path = p->get<std::string>();
        listed_manifest |= path == "manifest.json";
        RETURN_IF_ERROR(AddListedFile(path, entry, &out));
      }
    } else if (files->is_object()) {
      for (auto it = files->begin(); it != files->end(); ++it) {
        listed_manifest |= it.key() == "manifest.json";
        RETURN_IF_ERROR(AddListedFile(it.key(), it.value(), &out));
      }
    } else {
      return absl::InvalidArgumentError(
          "manifest.json 'files' must be an array or an object");
    }
  }
  if (out.files_size() == 0) {
    ASSIGN_OR_RETURN(std::vector<std::string> all,
                     ListFilesRecursive(artifact_dir));
    for (const std::string& rel : all) {
      RETURN_IF_ERROR(AddHashedFile(artifact_dir, rel, &out));
    }
  } else if (!listed_manifest && on_disk.ok()) {
    // A manifest cannot hold its own hash; record it so clients can verify
    // every byte of the artifact.
    RETURN_IF_ERROR(AddHashedFile(artifact_dir, "manifest.json", &out));
  }
  return out;
}

}  // namespace roundhouse::agent
