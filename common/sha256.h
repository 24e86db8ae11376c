#ifndef ROUNDHOUSE_COMMON_SHA256_H_
#define ROUNDHOUSE_COMMON_SHA256_H_

// SHA-256 (FIPS 180-4), used for artifact manifests, input hashes and
// checkpoint fingerprints. Not thread-safe per instance; instances are cheap.

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace roundhouse {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t len);
  void Update(absl::string_view s) { Update(s.data(), s.size()); }
  std::array<uint8_t, 32> Digest();  // finalizes; call once
  std::string HexDigest();           // lower-case hex; finalizes

 private:
  void Block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string Sha256Hex(absl::string_view data);

// Streams the file; errors name the path.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace roundhouse

#endif  // ROUNDHOUSE_COMMON_SHA256_H_
