#include "worker/engine/packing.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace roundhouse::engine {
namespace {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

bool IsAwq(Packing p) {
  return p == Packing::kAutoRoundAwq || p == Packing::kAutoAwq;
}
// GPTQ v1 convention: zero points stored minus one.
bool ZerosMinusOne(Packing p) {
  return p == Packing::kAutoRoundGptq || p == Packing::kAutoGptq;
}

// Packs `values` [n, m] (each in [0, 2^bits)) along dim 0 as a
// little-endian bit stream per column: value j occupies stream bits
// [bits*j, bits*j+bits). Returns int32 [n*bits/32, m]. Requires
// n*bits % 32 == 0.
torch::Tensor PackDim0(const torch::Tensor& values, int bits) {
  torch::Tensor v = values.to(torch::kInt64).contiguous().cpu();
  const int64_t n = v.size(0), m = v.size(1);
  const int64_t words = n * bits / 32;
  std::vector<uint32_t> out(static_cast<size_t>(words * m), 0);
  const int64_t* src = v.data_ptr<int64_t>();
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t bit = j * bits;
    const int64_t w = bit / 32, shift = bit % 32;
    uint32_t* row = out.data() + w * m;
    uint32_t* next = out.data() + (w + 1) * m;
    const int64_t* in = src + j * m;
    for (int64_t c = 0; c < m; ++c) {
      const uint64_t u = static_cast<uint64_t>(in[c]) & mask;
      row[c] |= static_cast<uint32_t>(u << shift);
      if (shift + bits > 32)
        next[c] |= static_cast<uint32_t>(u >> (32 - shift));
    }
  }
  torch::Tensor t = torch::empty({words, m}, torch::kInt32);
  std::memcpy(t.data_ptr<int32_t>(), out.data(), out.size() * 4);
  return t;
}

// Inverse of PackDim0: int32 [n*bits/32, m] -> int64 [n, m].
torch::Tensor UnpackDim0(const torch::Tensor& packed, int bits, int64_t n) {
  torch::Tensor p = packed.contiguous().cpu();
  const int64_t m = p.size(1);
  const uint32_t* src =
      reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  torch::Tensor t = torch::empty({n, m}, torch::kInt64);
  int64_t* dst = t.data_ptr<int64_t>();
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t bit = j * bits;
    const int64_t w = bit / 32, shift = bit % 32;
    const uint32_t* row = src + w * m;
    const uint32_t* next = src + (w + 1) * m;
    for (int64_t c = 0; c < m; ++c) {
      uint64_t u = static_cast<uint64_t>(row[c]) >> shift;
      if (shift + bits > 32)
        u |= static_cast<uint64_t>(next[c]) << (32 - shift);
      dst[j * m + c] = static_cast<int64_t>(u & mask);
    }
  }
  return t;
}

// UnpackDim0 in tensor ops on the packed tensor's own device (a GPU
// dequantizes without a round trip through the host), for bit widths that
// divide 32, where no value straddles two words: word w holds values
// w*k .. w*k+k-1 (k = 32/bits) at shifts 0, bits, 2*bits, ...
torch::Tensor UnpackDim0OnDevice(const torch::Tensor& packed, int bits,
                                 int64_t n) {
  const int64_t per = 32 / bits;
  torch::Tensor p = packed.to(torch::kInt64).bitwise_and(static_cast<int64_t>(0xFFFFFFFF));
  torch::Tensor shifts =
      torch::arange(0, 32, bits, p.options()).view({1, per, 1});
  torch::Tensor v = p.unsqueeze(1).__rshift__(shifts).bitwise_and(
      (int64_t{1} << bits) - 1);
  return v.reshape({p.size(0) * per, p.size(1)}).narrow(0, 0, n);
}

constexpr std::array<int, 8> kAwqOrder = {0, 4, 1, 5, 2, 6, 3, 7};

// UnpackAwq in tensor ops on the packed tensor's device.
torch::Tensor UnpackAwqOnDevice(const torch::Tensor& packed) {
  torch::Tensor p = packed.to(torch::kInt64).bitwise_and(static_cast<int64_t>(0xFFFFFFFF));
  std::vector<int64_t> order(kAwqOrder.begin(), kAwqOrder.end());
  torch::Tensor shifts =
      torch::tensor(order, torch::kInt64).mul(4).to(p.device()).view({1, 1, 8});
  torch::Tensor v = p.unsqueeze(-1).__rshift__(shifts).bitwise_and(0xF);
  return v.reshape({p.size(0), p.size(1) * 8});
}

// AWQ: values [r, m] (4-bit), 8 consecutive columns per word, column j of a
// run in nibble kAwqOrder[j]. Returns int32 [r, m/8].
torch::Tensor PackAwq(const torch::Tensor& values) {
  torch::Tensor v = values.to(torch::kInt64).contiguous().cpu();
  const int64_t r = v.size(0), m = v.size(1);
  torch::Tensor t = torch::empty({r, m / 8}, torch::kInt32);
  const int64_t* src = v.data_ptr<int64_t>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>());
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t w = 0; w < m / 8; ++w) {
      uint32_t word = 0;
      for (int j = 0; j < 8; ++j) {
        word |= static_cast<uint32_t>(src[i * m + w * 8 + j] & 0xF)
                << (4 * kAwqOrder[j]);
      }
      dst[i * (m / 8) + w] = word;
    }
  }
  return t;
}

// Divisibility needed to pack `n` values of `bits` along one dimension.
absl::Status CheckPackable(const char* what, int64_t n, int bits) {
  if (bits == 3 ? n % 32 != 0 : (n * bits) % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " = ", n, " cannot be packed at ", bits,
                     " bits (needs a "
                     "multiple of ",
                     bits == 3 ? 32 : 32 / bits, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckLayout(Packing packing, const QuantParams& params,
                         const GroupLayout& l) {
  if (auto s = ValidateQuantParams(params); !s.ok()) return s;
  if (IsAwq(packing)) {
    if (params.bits != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(PackingName(packing)),
          " packing supports bits=4 only, got bits=", params.bits));
    }
    if (l.in % l.group != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(PackingName(packing)), " packing needs in_features (",
          l.in, ") divisible by the group size (", l.group, ")"));
    }
    if (l.out % 8 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(PackingName(packing)), " packing needs out_features (",
          l.out, ") divisible by 8"));
    }
    return absl::OkStatus();
  }
  if (auto s = CheckPackable("in_features", l.in, params.bits); !s.ok()) {
    return s;
  }
  return CheckPackable("out_features", l.out, params.bits);
}

absl::StatusOr<torch::Tensor> Get(
    const std::map<std::string, torch::Tensor>& tensors,
    const std::string& name, c10::ScalarType dtype,
    std::vector<int64_t> shape) {
  auto it = tensors.find(name);
  if (it == tensors.end() || !it->second.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed tensor ", name, " is missing"));
  }
  const torch::Tensor& t = it->second;
  if (t.scalar_type() != dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed tensor ", name, " has dtype ",
                     std::string(c10::toString(t.scalar_type())), ", expected ",
                     std::string(c10::toString(dtype))));
  }
  if (t.sizes() != c10::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "packed tensor ", name, " has shape ", ShapeString(t.sizes()),
        ", expected ", ShapeString(shape)));
  }
  return t;
}

}  // namespace

std::string_view PackingName(Packing packing) {
  switch (packing) {
    case Packing::kAutoRoundGptq:
      return "auto_round:auto_gptq";
    case Packing::kAutoRoundPlain:
      return "auto_round";
    case Packing::kAutoRoundAwq:
      return "auto_round:auto_awq";
    case Packing::kAutoGptq:
      return "auto_gptq";
    case Packing::kAutoAwq:
      return "auto_awq";
  }
  return "unknown";
}

Packing DefaultAutoRoundPacking(bool sym, bool all_quantized_layers_4bit) {
  if (sym) return Packing::kAutoRoundGptq;
  return all_quantized_layers_4bit ? Packing::kAutoRoundAwq
                                   : Packing::kAutoRoundPlain;
}

absl::StatusOr<PackedLinear> PackLinear(
    Packing packing, const QdqResult& qdq, const QuantParams& params,
    const std::optional<torch::Tensor>& bias) {
  if (!qdq.codes.defined() || qdq.codes.dim() != 2) {
    return absl::InvalidArgumentError("codes must be a 2-D tensor [out, in]");
  }
  const GroupLayout l =
      MakeGroupLayout(qdq.codes.size(0), qdq.codes.size(1), params);
  if (auto s = CheckLayout(packing, params, l); !s.ok()) return s;
  const std::vector<int64_t> sz = {l.out, l.ngroups};
  if (!qdq.scale.defined() || qdq.scale.sizes() != c10::IntArrayRef(sz)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scale must be ", ShapeString(sz), ", got ",
        qdq.scale.defined() ? ShapeString(qdq.scale.sizes()) : "none"));
  }
  if (!qdq.zero.defined() || qdq.zero.sizes() != c10::IntArrayRef(sz)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zero must be ", ShapeString(sz), ", got ",
        qdq.zero.defined() ? ShapeString(qdq.zero.sizes()) : "none"));
  }
  const int64_t qmax = (int64_t{1} << params.bits) - 1;
  torch::Tensor codes = qdq.codes.to(torch::kInt64).cpu();
  torch::Tensor zeros = qdq.zero.to(torch::kInt64).cpu();
  if (codes.min().item<int64_t>() < 0 || codes.max().item<int64_t>() > qmax) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codes must lie in [0, ", qmax, "] for bits=", params.bits));
  }
  if (zeros.min().item<int64_t>() < 0 || zeros.max().item<int64_t>() > qmax) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zero points must lie in [0, ", qmax, "] for bits=", params.bits));
  }
  if (bias.has_value() && bias->defined() &&
      (bias->dim() != 1 || bias->size(0) != l.out)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bias must be [", l.out, "], got ", ShapeString(bias->sizes())));
  }

  PackedLinear out;
  out.tensors["scales"] =
      qdq.scale.to(torch::kFloat16).cpu().t().contiguous();  // [ng, out]
  if (IsAwq(packing)) {
    out.tensors["qweight"] = PackAwq(codes.t());  // [in, out/8]
    out.tensors["qzeros"] = PackAwq(zeros.t());   // [ng, out/8]
  } else {
    out.tensors["qweight"] = PackDim0(codes.t(), params.bits);
    if (ZerosMinusOne(packing)) {
      // Stored modulo 2^bits (z = 0 becomes 2^bits - 1): the exact inverse
      // adds 1 back modulo 2^bits. The reference leaks the -1 into the
      // neighbouring fields instead; that only arises for asym.
      zeros = (zeros - 1).remainder(qmax + 1);
    }
    out.tensors["qzeros"] = PackDim0(zeros, params.bits).t().contiguous();
    if (packing == Packing::kAutoGptq) {
      out.tensors["g_idx"] =
          torch::arange(l.in, torch::kInt32).div(l.group, "floor");
    }
  }
  if (bias.has_value() && bias->defined()) {
    out.tensors["bias"] = bias->to(torch::kFloat16).cpu().contiguous();
  }
  return out;
}

absl::StatusOr<torch::Tensor> DequantizePacked(
    Packing packing, const std::map<std::string, torch::Tensor>& tensors,
    const QuantParams& params, int64_t out_features, int64_t in_features) {
  if (out_features <= 0 || in_features <= 0) {
    return absl::InvalidArgumentError(
        "out_features and in_features must be positive");
  }
  const GroupLayout l = MakeGroupLayout(out_features, in_features, params);
  if (auto s = CheckLayout(packing, params, l); !s.ok()) return s;
  const int b = params.bits;
  torch::Tensor codes, zeros;  // int64 [out, in], [out, ng]
  torch::Tensor scales;
  if (IsAwq(packing)) {
    auto qw = Get(tensors, "qweight", torch::kInt32, {l.in, l.out / 8});
    if (!qw.ok()) return qw.status();
    auto qz = Get(tensors, "qzeros", torch::kInt32, {l.ngroups, l.out / 8});
    if (!qz.ok()) return qz.status();
    codes = UnpackAwqOnDevice(*qw).t();
    zeros = UnpackAwqOnDevice(*qz).t();
  } else {
    auto qw = Get(tensors, "qweight", torch::kInt32, {l.in * b / 32, l.out});
    if (!qw.ok()) return qw.status();
    auto qz =
        Get(tensors, "qzeros", torch::kInt32, {l.ngroups, l.out * b / 32});
    if (!qz.ok()) return qz.status();
    if (32 % b == 0) {
      codes = UnpackDim0OnDevice(*qw, b, l.in).t();
      zeros = UnpackDim0OnDevice(qz->t(), b, l.out);
    } else {  // 3 bits: values straddle words; the host loop handles it
      codes = UnpackDim0(*qw, b, l.in).t().to(qw->device());
      zeros = UnpackDim0(qz->t(), b, l.out).to(qw->device());
    }
    if (ZerosMinusOne(packing)) {
      zeros = (zeros + 1).remainder(int64_t{1} << b);
    }
    if (packing == Packing::kAutoGptq) {
      auto gi = Get(tensors, "g_idx", torch::kInt32, {l.in});
      if (!gi.ok()) return gi.status();
      torch::Tensor expected =
          torch::arange(l.in, torch::kInt32).div(l.group, "floor");
      if (!torch::equal(*gi, expected.to(gi->device()))) {
        return absl::InvalidArgumentError(
            "packed tensor g_idx is not i / group_size (act-order "
            "checkpoints are not supported)");
      }
    }
  }
  auto sc = Get(tensors, "scales", torch::kFloat16, {l.ngroups, l.out});
  if (!sc.ok()) return sc.status();
  scales = sc->t().to(codes.device(), torch::kFloat32);  // [out, ng]
  torch::Tensor z_full = zeros.repeat_interleave(l.group, 1).narrow(1, 0, l.in);
  torch::Tensor s_full =
      scales.repeat_interleave(l.group, 1).narrow(1, 0, l.in);
  return ((codes - z_full).to(torch::kFloat32) * s_full).contiguous();
}

}  // namespace roundhouse::engine
