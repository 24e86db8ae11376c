#include "worker/engine/manifest.h"

#include <sys/stat.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;

absl::StatusOr<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot stat ", path));
  }
  return static_cast<int64_t>(st.st_size);
}

}  // namespace

absl::StatusOr<json> WriteManifest(const std::string& dir, json body) {
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListFilesRecursive(dir));
  json list = json::array();
  for (const std::string& rel : files) {
    if (rel == kManifestFile) continue;
    const std::string path = JoinPath(dir, rel);
    ASSIGN_OR_RETURN(int64_t size, FileSize(path));
    ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
    list.push_back({{"path", rel}, {"size_bytes", size}, {"sha256", sha}});
  }
  body["manifest_version"] = 1;
  body["files"] = std::move(list);
  RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, kManifestFile),
                                      body.dump(2) + "\n"));
  return body;
}

absl::StatusOr<json> ReadValidManifest(const std::string& dir,
                                       bool verify_hashes) {
  const std::string path = JoinPath(dir, kManifestFile);
  if (!PathExists(path)) {
    return absl::NotFoundError(absl::StrCat(path, ": no manifest"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json m = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object() || !m.contains("files") ||
      !m["files"].is_array()) {
    return absl::DataLossError(absl::StrCat(path, ": not a manifest"));
  }
  std::set<std::string> listed;
  for (const json& f : m["files"]) {
    if (!f.is_object() || !f.contains("path") || !f["path"].is_string() ||
        !f.contains("size_bytes") || !f.contains("sha256")) {
      return absl::DataLossError(
          absl::StrCat(path, ": malformed entry ", f.dump()));
    }
    const std::string rel = f["path"].get<std::string>();
    const std::string file = JoinPath(dir, rel);
    auto size = FileSize(file);
    if (!size.ok() || *size != f["size_bytes"].get<int64_t>()) {
      return absl::DataLossError(
          absl::StrCat(file, ": missing or of the wrong size"));
    }
    if (verify_hashes) {
      ASSIGN_OR_RETURN(std::string sha, Sha256File(file));
      if (sha != f["sha256"].get<std::string>()) {
        return absl::DataLossError(absl::StrCat(file, ": sha256 mismatch"));
      }
    }
    listed.insert(rel);
  }
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListFilesRecursive(dir));
  for (const std::string& rel : files) {
    if (rel != kManifestFile && !listed.count(rel)) {
      return absl::DataLossError(
          absl::StrCat(JoinPath(dir, rel), ": not listed in the manifest"));
    }
  }
  return m;
}

}  // namespace roundhouse::engine
