#include "worker/engine/layer_config.h"

#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace roundhouse::engine {
namespace {

absl::Status CheckBits(int bits, const std::string& where) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == 16) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, "bits must be one of 2, 3, 4, 8, 16; got ", bits));
}

absl::Status CheckGroupSize(int group_size, const std::string& where) {
  if (group_size == 32 || group_size == 64 || group_size == 128 ||
      group_size == -1) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      where, "group_size must be one of 32, 64, 128, -1; got ", group_size));
}

struct CompiledPattern {
  std::string pattern;
  bool exact = false;  // equal to a layer name
  std::regex regex;
  bool used = false;
};

absl::StatusOr<CompiledPattern> Compile(const std::string& pattern,
                                        const std::set<std::string>& names,
                                        const std::string& what) {
  CompiledPattern c;
  c.pattern = pattern;
  if (pattern.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " pattern must not be empty"));
  }
  c.exact = names.count(pattern) > 0;
  if (!c.exact) {
    try {
      c.regex = std::regex(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " pattern \"", pattern,
                       "\" is not a valid regular expression: ", e.what()));
    }
  }
  return c;
}

bool Matches(const CompiledPattern& c, const std::string& name) {
  if (c.exact) return c.pattern == name;
  return std::regex_search(name, c.regex);
}

}  // namespace

absl::StatusOr<std::vector<ResolvedLayer>> ResolveLayerConfig(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>&
        linear_shapes,
    const QuantParams& global, const std::vector<LayerRule>& rules,
    const std::vector<std::string>& ignore_layers) {
  if (auto s = CheckBits(global.bits, "global "); !s.ok()) return s;
  if (auto s = CheckGroupSize(global.group_size, "global "); !s.ok()) {
    return s;
  }
  std::set<std::string> names;
  for (const auto& [name, shape] : linear_shapes) {
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", name, " does not have a 2-D [out, in] shape"));
    }
    names.insert(name);
  }

  std::vector<CompiledPattern> ignores;
  for (const std::string& p : ignore_layers) {
    auto c = Compile(p, names, "ignore_layers");
    if (!c.ok()) return c.status();
    ignores.push_back(*std::move(c));
  }
  std::vector<CompiledPattern> compiled;
  for (const LayerRule& r : rules) {
    const std::string where =
        absl::StrCat("layer_config[\"", r.pattern, "\"]: ");
    if (r.bits.has_value()) {
      if (auto s = CheckBits(*r.bits, where); !s.ok()) return s;
    }
    if (r.group_size.has_value()) {
      if (auto s = CheckGroupSize(*r.group_size, where); !s.ok()) return s;
    }
    auto c = Compile(r.pattern, names, "layer_config");
    if (!c.ok()) return c.status();
    compiled.push_back(*std::move(c));
  }

  std::vector<ResolvedLayer> out;
  out.reserve(linear_shapes.size());
  for (const auto& [name, shape] : linear_shapes) {
    ResolvedLayer layer;
    layer.name = name;
    layer.params = global;

    bool ignored = false;
    for (CompiledPattern& c : ignores) {
      if (Matches(c, name)) {
        c.used = true;
        ignored = true;
      }
    }

    // An exact rule wins; otherwise the first matching regex rule.
    int chosen = -1;
    for (size_t i = 0; i < compiled.size(); ++i) {
      if (compiled[i].exact && compiled[i].pattern == name) {
        chosen = static_cast<int>(i);
        break;
      }
    }
    if (chosen < 0) {
      for (size_t i = 0; i < compiled.size(); ++i) {
        if (!compiled[i].exact && Matches(compiled[i], name)) {
          chosen = static_cast<int>(i);
          break;
        }
      }
    }
    // Every matching rule counts as used, even when an earlier one won.
    for (CompiledPattern& c : compiled) {
      if (Matches(c, name)) c.used = true;
    }
    bool group_from_rule = false;
    if (chosen >= 0) {
      const LayerRule& r = rules[chosen];
      if (r.bits.has_value()) layer.params.bits = *r.bits;
      if (r.group_size.has_value()) {
        layer.params.group_size = *r.group_size;
        group_from_rule = true;
      }
      if (r.sym.has_value()) layer.params.sym = *r.sym;
    }

    const int64_t rows = shape[0], cols = shape[1];
    const int g = layer.params.group_size;
    if (ignored) {
      layer.params.bits = 16;
      layer.reason = "ignored";
    } else if (layer.params.bits >= 16) {
      layer.reason = "bits=16";
    } else if (rows % 32 != 0 || cols % 32 != 0) {
      layer.params.bits = 16;
      layer.reason = "shape not divisible by 32";
    } else if (g > 0 && cols > g && cols % g != 0) {
      if (group_from_rule) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", name, ": group_size ", g, " (from layer_config[\"",
            rules[chosen].pattern, "\"]) does not divide in_features ", cols));
      }
      layer.params.bits = 16;
      layer.reason = "group size does not divide in";
    } else {
      layer.quantize = true;
    }
    out.push_back(std::move(layer));
  }

  for (const CompiledPattern& c : ignores) {
    if (!c.used) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ignore_layers pattern \"", c.pattern, "\" matches no layer"));
    }
  }
  for (const CompiledPattern& c : compiled) {
    if (!c.used) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer_config pattern \"", c.pattern, "\" matches no layer"));
    }
  }
  return out;
}

}  // namespace roundhouse::engine
