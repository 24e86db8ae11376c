#include "worker/engine/tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace roundhouse::tokenizer {
namespace {

using json = nlohmann::json;

// Debian's Abseil is built with its own absl::string_view (not an alias of
// std::string_view); convert at the container/StrCat boundary.
inline absl::string_view AV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// ---------------------------------------------------------------------------
// UTF-8 helpers.

// Appends code point `cp` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes one code point of valid UTF-8 at `*pos` and advances it.
uint32_t DecodeValid(std::string_view s, size_t* pos) {
  const auto b0 = static_cast<uint8_t>(s[*pos]);
  if (b0 < 0x80) {
    ++*pos;
    return b0;
  }
  int len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  uint32_t cp = b0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (int i = 1; i < len; ++i) {
    cp = (cp << 6) | (static_cast<uint8_t>(s[*pos + i]) & 0x3F);
  }
  *pos += len;
  return cp;
}

// The WHATWG UTF-8 decoder (Encoding Standard §4.1.1): returns the length of
// the well-formed sequence starting at `pos`, or 0 and the length of the
// maximal invalid subpart in `*bad_len` (at least 1).
size_t ScanOne(std::string_view s, size_t pos, size_t* bad_len) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) return 1;
  int needed;
  uint8_t lower = 0x80, upper = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    needed = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (b0 == 0xE0) lower = 0xA0;
    if (b0 == 0xED) upper = 0x9F;
    needed = 2;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (b0 == 0xF0) lower = 0x90;
    if (b0 == 0xF4) upper = 0x8F;
    needed = 3;
  } else {
    *bad_len = 1;
    return 0;
  }
  size_t i = 1;
  for (; i <= static_cast<size_t>(needed); ++i) {
    if (pos + i >= s.size()) {
      *bad_len = i;  // truncated sequence: one replacement for all of it
      return 0;
    }
    const auto b = static_cast<uint8_t>(s[pos + i]);
    if (b < lower || b > upper) {
      *bad_len = i;  // the offending byte starts the next sequence
      return 0;
    }
    lower = 0x80;
    upper = 0xBF;
  }
  return i;
}

// JavaScript's WhiteSpace + LineTerminator set (ECMA-262 `\s`, String.trim).
bool IsJsSpace(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}
constexpr char kJsSpaceClassBody[] =
    "\\t\\n\\x0B\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}";

std::string_view TrimJsEnd(std::string_view s) {
  // Walk back over whole code points.
  while (!s.empty()) {
    size_t start = s.size() - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t p = start;
    if (!IsJsSpace(DecodeValid(s, &p))) break;
    s.remove_suffix(s.size() - start);
  }
  return s;
}

std::string_view TrimJsStart(std::string_view s) {
  while (!s.empty()) {
    size_t p = 0;
    if (!IsJsSpace(DecodeValid(s, &p))) break;
    s.remove_prefix(p);
  }
  return s;
}

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the others
// to U+0100 + n in byte order.
std::array<uint32_t, 256> BytesToUnicode() {
  std::array<uint32_t, 256> table{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) {
    table[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
  }
  return table;
}

// Rewrites a Hugging Face (Python/Oniguruma-flavoured) split regex into a
// PCRE2 pattern with the semantics the JavaScript reference gives it:
// the case-insensitive contraction group is expanded exactly as
// transformers.js does (so e.g. U+017F does not fold to "s"), `\s`/`\S` use
// ECMAScript's whitespace set, and `\d`/`\w` are ASCII-only as in JS.
absl::StatusOr<std::string> TranslateRegex(std::string pattern,
                                           const std::string& where) {
  static const std::pair<const char*, const char*> kProblematic[] = {
      {"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
       "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))"},
  };
  for (const auto& [from, to] : kProblematic) {
    size_t pos;
    while ((pos = pattern.find(from)) != std::string::npos) {
      pattern.replace(pos, std::strlen(from), to);
    }
  }
  std::string out;
  bool in_class = false;
  size_t class_start = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[++i];
      const char* body = nullptr;
      bool negated = false;
      switch (n) {
        case 's':
          body = kJsSpaceClassBody;
          break;
        case 'S':
          body = kJsSpaceClassBody;
          negated = true;
          break;
        case 'd':
          body = "0-9";
          break;
        case 'D':
          body = "0-9";
          negated = true;
          break;
        case 'w':
          body = "A-Za-z0-9_";
          break;
        case 'W':
          body = "A-Za-z0-9_";
          negated = true;
          break;
        default:
          break;
      }
      if (body == nullptr) {
        out.push_back('\\');
        out.push_back(n);
        continue;
      }
      if (in_class) {
        if (negated) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": unsupported negated escape \\", std::string(1, n),
              " inside a character class in regex ", pattern));
        }
        out += body;
      } else {
        out += negated ? "[^" : "[";
        out += body;
        out += "]";
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      class_start = out.size();
      out.push_back(c);
      continue;
    }
    if (in_class && c == ']') {
      // A ']' right after '[' or '[^' is a literal.
      const size_t len = out.size() - class_start;
      const bool literal =
          len == 1 || (len == 2 && out[class_start + 1] == '^');
      if (!literal) in_class = false;
      out.push_back(c);
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string EscapeRegexLiteral(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}", c) != nullptr && c != '\0') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

struct PcreCodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* d) const { pcre2_match_data_free(d); }
};

}  // namespace

// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  enum class NormKind { kNfc, kNfd, kNfkc, kNfkd };
  struct SplitStep {
    std::unique_ptr<pcre2_code, PcreCodeDeleter> code;
    bool invert = false;
    bool removed = false;  // behavior "Removed"
  };
  struct PreStep {
    bool byte_level = false;
    SplitStep split;                // when !byte_level
    bool add_prefix_space = false;  // byte_level only
  };
  struct TemplateItem {
    bool is_sequence_a = false;
    int32_t id = 0;
  };

  absl::flat_hash_map<std::string, int32_t> vocab;  // includes added
  std::vector<std::string> id_to_token;             // "" = unused id
  // (left id << 32 | right id) -> (rank, merged id).
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::optional<int32_t> unk_id;
  bool byte_fallback = false;
  bool ignore_merges = false;

  struct Added {
    std::string content;
    int32_t id;
    bool lstrip, rstrip;
  };
  std::vector<Added> added;
  absl::flat_hash_map<std::string, int> added_index;  // content -> added[i]
  std::array<bool, 256> added_first_byte{};
  size_t added_max_len = 0;

  std::vector<NormKind> normalizers;
  std::vector<PreStep> pre_steps;
  bool byte_level = false;  // the last pre-tokenizer step is ByteLevel
  bool byte_level_add_prefix_space = false;
  std::array<int32_t, 256> byte_ids{};        // byte-level char -> vocab id
  std::vector<TemplateItem> template_single;  // empty = no template
  bool has_template = false;

  int32_t vocab_size = 0;

  // ---- encoding ----
  absl::Status Encode(std::string_view text, bool add_special,
                      std::vector<int32_t>* out) const;
  std::vector<std::string_view> SplitAdded(std::string_view text) const;
  std::string_view Normalize(std::string_view in, std::string* buf) const;
  absl::Status PreTokenize(std::string_view text,
                           std::deque<std::string>* arena,
                           std::vector<std::string_view>* pieces,
                           pcre2_match_data* md) const;
  absl::Status Bpe(std::string_view piece, std::vector<int32_t>* out) const;
  void MergeSymbols(std::vector<int32_t>* syms) const;
};

std::vector<std::string_view> Tokenizer::Impl::SplitAdded(
    std::string_view text) const {
  std::vector<std::string_view> sections;
  if (added.empty()) {
    sections.push_back(text);
    return sections;
  }
  size_t start = 0, i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (!added_first_byte[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    // Longest added token starting at i (the JS trie keeps the longest).
    size_t best = 0;
    const size_t max_len = std::min(added_max_len, n - i);
    for (size_t len = max_len; len >= 1; --len) {
      if (added_index.contains(AV(text.substr(i, len)))) {
        best = len;
        break;
      }
    }
    if (best == 0) {
      ++i;
      continue;
    }
    if (i > start) sections.push_back(text.substr(start, i - start));
    sections.push_back(text.substr(i, best));
    i += best;
    start = i;
  }
  if (start < n) sections.push_back(text.substr(start));
  return sections;
}

std::string_view Tokenizer::Impl::Normalize(std::string_view in,
                                            std::string* buf) const {
  std::string_view cur = in;
  for (NormKind kind : normalizers) {
    if (kind == NormKind::kNfc) {
      // Every code point below U+0300 (lead bytes < 0xCC) is NFC-stable and
      // never composes with a predecessor: skip the library call then.
      bool maybe = false;
      for (char c : cur) {
        if (static_cast<uint8_t>(c) >= 0xCC) {
          maybe = true;
          break;
        }
      }
      if (!maybe) continue;
    } else {
      bool ascii = true;
      for (char c : cur) {
        if (static_cast<uint8_t>(c) >= 0x80) {
          ascii = false;
          break;
        }
      }
      if (ascii) continue;
    }
    int options = UTF8PROC_STABLE;
    switch (kind) {
      case NormKind::kNfc:
        options |= UTF8PROC_COMPOSE;
        break;
      case NormKind::kNfd:
        options |= UTF8PROC_DECOMPOSE;
        break;
      case NormKind::kNfkc:
        options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        break;
      case NormKind::kNfkd:
        options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        break;
    }
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t len =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()),
                     static_cast<utf8proc_ssize_t>(cur.size()), &dst,
                     static_cast<utf8proc_option_t>(options));
    if (len < 0) continue;  // unreachable for valid UTF-8; keep the input
    std::string next(reinterpret_cast<char*>(dst), static_cast<size_t>(len));
    std::free(dst);
    *buf = std::move(next);
    cur = *buf;
  }
  return cur;
}

absl::Status Tokenizer::Impl::PreTokenize(std::string_view text,
                                          std::deque<std::string>* arena,
                                          std::vector<std::string_view>* pieces,
                                          pcre2_match_data* md) const {
  pieces->clear();
  pieces->push_back(text);
  std::vector<std::string_view> next;
  for (const PreStep& step : pre_steps) {
    next.clear();
    if (step.byte_level) {
      // ByteLevel with use_regex=false: only the optional prefix space here;
      // the byte -> unicode mapping is folded into Bpe().
      for (std::string_view p : *pieces) {
        if (step.add_prefix_space && (p.empty() || p[0] != ' ')) {
          arena->push_back(absl::StrCat(" ", AV(p)));
          next.push_back(arena->back());
        } else {
          next.push_back(p);
        }
      }
      pieces->swap(next);
      continue;
    }
    const SplitStep& split = step.split;
    for (std::string_view p : *pieces) {
      size_t prev = 0, offset = 0;
      while (offset <= p.size()) {
        int rc = pcre2_match(split.code.get(),
                             reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                             offset, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(rc, msg, sizeof(msg));
          return absl::InternalError(
              absl::StrCat("tokenizer regex failed at byte ", offset, ": ",
                           reinterpret_cast<const char*>(msg)));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t ms = ov[0], me = ov[1];
        if (split.invert) {
          if (me > ms) next.push_back(p.substr(ms, me - ms));
        } else {
          if (prev < ms) next.push_back(p.substr(prev, ms - prev));
          if (me > ms && !split.removed) {
            next.push_back(p.substr(ms, me - ms));
          }
        }
        if (me > ms) {
          prev = me;
          offset = me;
        } else {
          // Empty match: step one code point, like JS matchAll with /u.
          prev = std::max(prev, me);
          if (offset >= p.size()) break;
          size_t q = offset;
          DecodeValid(p, &q);
          offset = q;
        }
      }
      if (!split.invert && prev < p.size()) {
        next.push_back(p.substr(prev));
      }
    }
    pieces->swap(next);
  }
  return absl::OkStatus();
}

void Tokenizer::Impl::MergeSymbols(std::vector<int32_t>* syms) const {
  std::vector<int32_t>& s = *syms;
  if (s.size() < 2) return;
  auto lookup = [this](int32_t a,
                       int32_t b) -> const std::pair<int32_t, int32_t>* {
    if (a < 0 || b < 0) return nullptr;
    auto it = merges.find((static_cast<uint64_t>(a) << 32) |
                          static_cast<uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  if (s.size() <= 64) {
    // Short words: repeated scans beat a heap. The lowest rank wins, the
    // leftmost pair among equal ranks, one merge at a time (as the JS
    // reference's priority queue with its positional tie-break).
    while (s.size() >= 2) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const auto* m = lookup(s[i], s[i + 1]);
        if (m != nullptr && m->first < best_rank) {
          best_rank = m->first;
          best_id = m->second;
          best_pos = i;
        }
      }
      if (best_id < 0) break;
      s[best_pos] = best_id;
      s.erase(s.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
    }
    return;
  }
  // Long words (e.g. whitespace runs): linked list + min-heap keyed by
  // (rank, position of the left symbol); stale entries are skipped.
  const size_t n = s.size();
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  struct Entry {
    int32_t rank;
    int32_t pos;
    int32_t left_sym, right_sym;
    bool operator>(const Entry& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto push = [&](int32_t i) {
    if (i < 0 || next[i] < 0) return;
    const auto* m = lookup(s[i], s[next[i]]);
    if (m != nullptr) heap.push({m->first, i, s[i], s[next[i]]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Entry e = heap.top();
    heap.pop();
    const int32_t i = e.pos;
    if (!alive[i] || next[i] < 0 || s[i] != e.left_sym ||
        s[next[i]] != e.right_sym) {
      continue;
    }
    const int32_t j = next[i];
    s[i] = merges
               .find((static_cast<uint64_t>(e.left_sym) << 32) |
                     static_cast<uint32_t>(e.right_sym))
               ->second.second;
    alive[j] = false;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  std::vector<int32_t> out;
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(s[i]);
  s.swap(out);
}

absl::Status Tokenizer::Impl::Bpe(std::string_view piece,
                                  std::vector<int32_t>* out) const {
  if (piece.empty()) return absl::OkStatus();
  std::vector<int32_t> syms;
  std::vector<std::string> unknown;  // text of symbols with id -1
  if (byte_level) {
    if (ignore_merges) {
      std::string mapped;
      static const std::array<uint32_t, 256> kTable = BytesToUnicode();
      for (char c : piece) AppendUtf8(kTable[static_cast<uint8_t>(c)], &mapped);
      auto it = vocab.find(mapped);
      if (it != vocab.end()) {
        out->push_back(it->second);
        return absl::OkStatus();
      }
    }
    syms.reserve(piece.size());
    for (char c : piece) syms.push_back(byte_ids[static_cast<uint8_t>(c)]);
  } else {
    if (ignore_merges) {
      auto it = vocab.find(AV(piece));
      if (it != vocab.end()) {
        out->push_back(it->second);
        return absl::OkStatus();
      }
    }
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t start = pos;
      DecodeValid(piece, &pos);
      auto it = vocab.find(AV(piece.substr(start, pos - start)));
      syms.push_back(it == vocab.end() ? -1 : it->second);
      if (it == vocab.end()) {
        unknown.emplace_back(piece.substr(start, pos - start));
      }
    }
  }
  MergeSymbols(&syms);
  size_t unknown_index = 0;
  for (int32_t id : syms) {
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    const std::string text =
        unknown_index < unknown.size() ? unknown[unknown_index++] : "";
    if (byte_fallback) {
      bool all = true;
      std::vector<int32_t> bytes;
      for (char c : text) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>",
                      static_cast<unsigned>(static_cast<uint8_t>(c)));
        auto it = vocab.find(name);
        if (it == vocab.end()) {
          all = false;
          break;
        }
        bytes.push_back(it->second);
      }
      if (all && !text.empty()) {
        out->insert(out->end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (!unk_id.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "text contains a character that is not in the vocabulary (\"", text,
          "\") and the tokenizer has no unk_token"));
    }
    out->push_back(*unk_id);
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::Encode(std::string_view text, bool add_special,
                                     std::vector<int32_t>* out) const {
  std::vector<std::string_view> sections = SplitAdded(text);
  // lstrip/rstrip of added tokens trim their neighbours (JS trimEnd /
  // trimStart semantics, as the reference).
  for (size_t i = 0; i < sections.size(); ++i) {
    auto it = added_index.find(AV(sections[i]));
    if (it == added_index.end()) continue;
    const Added& a = added[it->second];
    if (a.lstrip && i > 0) sections[i - 1] = TrimJsEnd(sections[i - 1]);
    if (a.rstrip && i + 1 < sections.size()) {
      sections[i + 1] = TrimJsStart(sections[i + 1]);
    }
  }
  std::vector<int32_t> body;
  body.reserve(text.size() / 3 + 4);
  pcre2_match_data* md = nullptr;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md_owner;
  absl::flat_hash_map<absl::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> cache_store;
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  std::deque<std::string> normalized_store;
  for (std::string_view section : sections) {
    if (section.empty()) continue;
    auto it = added_index.find(AV(section));
    if (it != added_index.end()) {
      body.push_back(added[it->second].id);
      continue;
    }
    normalized_store.emplace_back();
    std::string_view norm = Normalize(section, &normalized_store.back());
    if (norm.empty()) continue;
    if (md == nullptr) {
      md_owner.reset(pcre2_match_data_create(8, nullptr));
      md = md_owner.get();
    }
    RETURN_IF_ERROR(PreTokenize(norm, &arena, &pieces, md));
    for (std::string_view piece : pieces) {
      // Words repeat a lot within one text: memoize their ids per call.
      auto cit = cache.find(AV(piece));
      if (cit != cache.end()) {
        body.insert(body.end(), cache_store.begin() + cit->second.first,
                    cache_store.begin() + cit->second.second);
        continue;
      }
      const size_t before = body.size();
      RETURN_IF_ERROR(Bpe(piece, &body));
      const auto start = static_cast<uint32_t>(cache_store.size());
      cache_store.insert(cache_store.end(),
                         body.begin() + static_cast<std::ptrdiff_t>(before),
                         body.end());
      cache.emplace(
          AV(piece),
          std::make_pair(start, static_cast<uint32_t>(cache_store.size())));
    }
  }
  if (!has_template) {
    *out = std::move(body);
    return absl::OkStatus();
  }
  out->clear();
  for (const TemplateItem& item : template_single) {
    if (item.is_sequence_a) {
      out->insert(out->end(), body.begin(), body.end());
    } else if (add_special) {
      out->push_back(item.id);
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Loading.

namespace {

absl::StatusOr<std::unique_ptr<pcre2_code, PcreCodeDeleter>> CompileRegex(
    const std::string& pattern, const std::string& where) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()),
                                   pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                   &err_off, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": cannot compile regex ", pattern, " at offset ",
                     err_off, ": ", reinterpret_cast<const char*>(msg)));
  }
  // JIT is an optimisation only; pcre2_match falls back to the interpreter.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<pcre2_code, PcreCodeDeleter>(code);
}

std::string TypeOf(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) {
    return j["type"].get<std::string>();
  }
  return "";
}

absl::Status ParseNormalizer(const json& j, const std::string& where,
                             std::vector<Tokenizer::Impl::NormKind>* out) {
  using NK = Tokenizer::Impl::NormKind;
  if (j.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(j);
  if (type == "NFC") {
    out->push_back(NK::kNfc);
  } else if (type == "NFD") {
    out->push_back(NK::kNfd);
  } else if (type == "NFKC") {
    out->push_back(NK::kNfkc);
  } else if (type == "NFKD") {
    out->push_back(NK::kNfkd);
  } else if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".normalizers: missing or not an array"));
    }
    for (size_t i = 0; i < j["normalizers"].size(); ++i) {
      RETURN_IF_ERROR(
          ParseNormalizer(j["normalizers"][i],
                          absl::StrCat(where, ".normalizers[", i, "]"), out));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unsupported normalizer type \"", type,
                     "\" (supported: NFC, NFD, NFKC, NFKD, Sequence, null)"));
  }
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const json& j, const std::string& where,
                               std::vector<Tokenizer::Impl::PreStep>* out) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".pretokenizers: missing or not an array"));
    }
    for (size_t i = 0; i < j["pretokenizers"].size(); ++i) {
      RETURN_IF_ERROR(ParsePreTokenizer(
          j["pretokenizers"][i], absl::StrCat(where, ".pretokenizers[", i, "]"),
          out));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    const bool use_regex = j.value("use_regex", true);
    const bool prefix = j.value("add_prefix_space", false);
    if (use_regex) {
      // The GPT-2 split regex of the reference's ByteLevel pre-tokenizer.
      Tokenizer::Impl::PreStep split;
      ASSIGN_OR_RETURN(
          std::string pattern,
          TranslateRegex("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
                         "?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
                         where));
      ASSIGN_OR_RETURN(split.split.code, CompileRegex(pattern, where));
      split.split.invert = true;  // keep only the matches
      if (prefix) {
        Tokenizer::Impl::PreStep p;
        p.byte_level = true;
        p.add_prefix_space = true;
        out->push_back(std::move(p));
      }
      out->push_back(std::move(split));
      Tokenizer::Impl::PreStep bl;
      bl.byte_level = true;
      out->push_back(std::move(bl));
    } else {
      Tokenizer::Impl::PreStep bl;
      bl.byte_level = true;
      bl.add_prefix_space = prefix;
      out->push_back(std::move(bl));
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    Tokenizer::Impl::PreStep step;
    if (!j.contains("pattern") || !j["pattern"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".pattern: missing or not an object"));
    }
    const json& pat = j["pattern"];
    std::string pattern;
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      ASSIGN_OR_RETURN(pattern, TranslateRegex(pat["Regex"].get<std::string>(),
                                               where + ".pattern.Regex"));
    } else if (pat.contains("String") && pat["String"].is_string()) {
      pattern = EscapeRegexLiteral(pat["String"].get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".pattern: needs a \"Regex\" or \"String\" member"));
    }
    ASSIGN_OR_RETURN(step.split.code,
                     CompileRegex(pattern, where + ".pattern"));
    step.split.invert = j.value("invert", false);
    const std::string behavior = j.value("behavior", "Isolated");
    if (behavior == "Removed") {
      step.split.removed = true;
    } else if (behavior != "Isolated") {
      // The JS reference treats every other behaviour like Isolated while
      // Hugging Face does not: refuse rather than produce disputed ids.
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".behavior: unsupported split behavior \"",
                       behavior, "\" (supported: Isolated, Removed)"));
    }
    out->push_back(std::move(step));
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported pre_tokenizer type \"", type,
                   "\" (supported: ByteLevel, Split, Sequence, null)"));
}

absl::Status ParsePostProcessor(const json& j, const std::string& where,
                                const Tokenizer::Impl& impl,
                                std::vector<Tokenizer::Impl::TemplateItem>* t,
                                bool* has_template) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(j);
  if (type == "ByteLevel") return absl::OkStatus();  // ids unchanged
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".processors: missing or not an array"));
    }
    for (size_t i = 0; i < j["processors"].size(); ++i) {
      RETURN_IF_ERROR(ParsePostProcessor(
          j["processors"][i], absl::StrCat(where, ".processors[", i, "]"), impl,
          t, has_template));
    }
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    if (*has_template) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": more than one TemplateProcessing"));
    }
    if (!j.contains("single") || !j["single"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".single: missing or not an array"));
    }
    for (size_t i = 0; i < j["single"].size(); ++i) {
      const json& item = j["single"][i];
      const std::string iw = absl::StrCat(where, ".single[", i, "]");
      Tokenizer::Impl::TemplateItem ti;
      if (item.contains("Sequence")) {
        if (item["Sequence"].value("id", "A") != "A") {
          return absl::InvalidArgumentError(
              absl::StrCat(iw, ".Sequence.id: must be \"A\""));
        }
        ti.is_sequence_a = true;
      } else if (item.contains("SpecialToken") &&
                 item["SpecialToken"].contains("id") &&
                 item["SpecialToken"]["id"].is_string()) {
        const std::string tok = item["SpecialToken"]["id"];
        auto it = impl.vocab.find(tok);
        if (it == impl.vocab.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(iw, ".SpecialToken.id: token \"", tok,
                           "\" is not in the vocabulary"));
        }
        ti.id = it->second;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(iw, ": expected a Sequence or SpecialToken item"));
      }
      t->push_back(ti);
    }
    *has_template = true;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      where, ": unsupported post_processor type \"", type,
      "\" (supported: ByteLevel, TemplateProcessing, Sequence, null)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromFile(
    const std::string& tokenizer_json_path) {
  std::ifstream in(tokenizer_json_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open tokenizer file ", tokenizer_json_path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return LoadFromJson(ss.str(), tokenizer_json_path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromJson(
    std::string_view json_text, const std::string& origin) {
  json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": not a JSON object (malformed tokenizer.json)"));
  }
  auto impl = std::make_unique<Impl>();
  if (!root.contains("model") || !root["model"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": field \"model\" missing or not an object"));
  }
  const json& model = root["model"];
  const std::string model_type = model.value("type", "BPE");
  if (model_type != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": model.type \"", model_type,
                     "\" is not supported (only BPE)"));
  }
  for (const char* key : {"end_of_word_suffix", "continuing_subword_prefix"}) {
    if (model.contains(key) && model[key].is_string() &&
        !model[key].get<std::string>().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": model.", key, " is not supported"));
    }
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": model.vocab missing or not an object"));
  }
  int32_t max_id = -1;
  impl->vocab.reserve(model["vocab"].size() + 64);
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX / 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": model.vocab[\"", it.key(),
                       "\"]: id must be a non-negative integer"));
    }
    const auto id = it.value().get<int32_t>();
    impl->vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  // Added tokens (they override vocabulary entries, as in the reference).
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    if (!root["added_tokens"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": added_tokens is not an array"));
    }
    for (size_t i = 0; i < root["added_tokens"].size(); ++i) {
      const json& a = root["added_tokens"][i];
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string() ||
          a["content"].get<std::string>().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ": added_tokens[", i,
            "]: needs an integer \"id\" and a non-empty \"content\""));
      }
      Impl::Added added{a["content"].get<std::string>(), a["id"].get<int32_t>(),
                        a.value("lstrip", false), a.value("rstrip", false)};
      if (added.id < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": added_tokens[", i, "].id is negative"));
      }
      if (!IsValidUtf8(added.content)) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ": added_tokens[", i, "].content is not valid UTF-8"));
      }
      impl->vocab[added.content] = added.id;
      max_id = std::max(max_id, added.id);
      impl->added_first_byte[static_cast<uint8_t>(added.content[0])] = true;
      impl->added_max_len = std::max(impl->added_max_len, added.content.size());
      impl->added_index[added.content] = static_cast<int>(impl->added.size());
      impl->added.push_back(std::move(added));
    }
  }
  impl->vocab_size = max_id + 1;
  impl->id_to_token.resize(static_cast<size_t>(impl->vocab_size));
  for (const auto& [tok, id] : impl->vocab) impl->id_to_token[id] = tok;
  // Added tokens win for their id as well.
  for (const auto& a : impl->added) impl->id_to_token[a.id] = a.content;

  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = impl->vocab.find(model["unk_token"].get<std::string>());
    if (it != impl->vocab.end()) impl->unk_id = it->second;
  }
  impl->byte_fallback = model.value("byte_fallback", false);
  impl->ignore_merges = model.value("ignore_merges", false);

  // Merges: ["a b", ...] (old) or [["a","b"], ...] (tokenizers >= 0.20).
  if (!model.contains("merges") || !model["merges"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": model.merges missing or not an array"));
  }
  const json& merges = model["merges"];
  impl->merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    std::string left, right;
    const json& m = merges[i];
    if (m.is_string()) {
      std::vector<std::string> parts =
          absl::StrSplit(m.get<std::string>(), ' ');
      if (parts.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ": model.merges[", i, "] \"", m.get<std::string>(),
            "\" is not two space-separated tokens"));
      }
      left = parts[0];
      right = parts[1];
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          origin, ": model.merges[", i, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
    auto l = impl->vocab.find(left);
    auto r = impl->vocab.find(right);
    auto merged = impl->vocab.find(left + right);
    if (l == impl->vocab.end() || r == impl->vocab.end() ||
        merged == impl->vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": model.merges[", i, "] (\"", left, "\", \"",
                       right, "\"): token or merge result not in model.vocab"));
    }
    const uint64_t key = (static_cast<uint64_t>(l->second) << 32) |
                         static_cast<uint32_t>(r->second);
    // The first occurrence defines the rank (later duplicates never win).
    impl->merges.emplace(
        key, std::make_pair(static_cast<int32_t>(i), merged->second));
  }

  RETURN_IF_ERROR(
      ParseNormalizer(root.contains("normalizer") ? root["normalizer"] : json(),
                      origin + ": normalizer", &impl->normalizers));
  RETURN_IF_ERROR(ParsePreTokenizer(
      root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json(),
      origin + ": pre_tokenizer", &impl->pre_steps));
  for (size_t i = 0; i < impl->pre_steps.size(); ++i) {
    if (impl->pre_steps[i].byte_level && !impl->pre_steps[i].add_prefix_space &&
        i + 1 != impl->pre_steps.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin, ": pre_tokenizer: a ByteLevel step must be the last step"));
    }
  }
  impl->byte_level =
      !impl->pre_steps.empty() && impl->pre_steps.back().byte_level;
  if (impl->byte_level) {
    static const std::array<uint32_t, 256> kTable = BytesToUnicode();
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      AppendUtf8(kTable[b], &ch);
      auto it = impl->vocab.find(ch);
      // A byte whose char is missing becomes an unknown symbol.
      impl->byte_ids[b] = it == impl->vocab.end() ? -1 : it->second;
      if (it == impl->vocab.end() && !impl->unk_id.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ": model.vocab lacks the byte-level character for byte ", b,
            " and there is no unk_token"));
      }
    }
  }
  RETURN_IF_ERROR(ParsePostProcessor(
      root.contains("post_processor") ? root["post_processor"] : json(),
      origin + ": post_processor", *impl, &impl->template_single,
      &impl->has_template));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(
    std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    sanitized = SanitizeUtf8(text);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  RETURN_IF_ERROR(impl_->Encode(text, add_special_tokens, &ids));
  return ids;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = impl_->vocab.find(AV(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size || impl_->id_to_token[id].empty()) {
    return std::nullopt;
  }
  return impl_->id_to_token[id];
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool IsValidUtf8(std::string_view bytes, size_t* first_bad_offset) {
  size_t pos = 0;
  const size_t n = bytes.size();
  while (pos < n) {
    // ASCII fast path, 8 bytes at a time.
    while (pos + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, bytes.data() + pos, 8);
      if (w & 0x8080808080808080ULL) break;
      pos += 8;
    }
    if (pos >= n) break;
    size_t bad = 0;
    const size_t len = ScanOne(bytes, pos, &bad);
    if (len == 0) {
      if (first_bad_offset != nullptr) *first_bad_offset = pos;
      return false;
    }
    pos += len;
  }
  return true;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + 8);
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t bad = 0;
    const size_t len = ScanOne(bytes, pos, &bad);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      pos += bad;
    } else {
      out.append(bytes.data() + pos, len);
      pos += len;
    }
  }
  return out;
}

}  // namespace roundhouse::tokenizer
