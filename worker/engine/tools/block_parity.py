#!/usr/bin/env python3
"""Reference outputs of Hugging Face decoder layers for the C++ parity test.

Builds one Llama, one Qwen3 (and, when available, one Qwen2) decoder layer
with transformers on random weights, runs it on random hidden states with a
left-padded batch (fp32 and bf16, eager attention, position ids derived from
the attention mask as in models.md §2.6) and writes weights, inputs and
outputs to one safetensors file:

  <model>.weights.<suffix>   fp32 layer weights (HF names minus the layer
                             prefix, e.g. self_attn.q_proj.weight)
  <model>.hidden             fp32 [B,T,H] input
  <model>.mask               int64 [B,T] attention mask (1 = real token)
  <model>.out_fp32           fp32 [B,T,H] layer output
  <model>.out_bf16           bf16 [B,T,H] output of the bf16 layer on the
                             bf16-cast input
metadata: "models" (JSON list) and "<model>.config" (JSON BlockConfig).

Usage (needs torch + transformers + safetensors):
  python3 block_parity.py OUT.safetensors
  RH_PARITY_FILE=OUT.safetensors engine_test \
      --gtest_filter='DecoderBlockTest.ParityWithTransformers'
"""

import copy
import json
import sys

import torch
import transformers
from safetensors.torch import save_file


def rope_theta_of(config):
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta")
    return float(theta)


def make_config(kind):
    common = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=32,
                  max_position_embeddings=128, attn_implementation="eager")
    if kind == "llama":
        cfg = transformers.LlamaConfig(rope_theta=10000.0, **common)
        return cfg, False, False
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=32, rope_theta=1000000.0,
                                       **common)
        return cfg, True, False
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(rope_theta=1000000.0, **common)
        return cfg, False, True
    raise ValueError(kind)


def modules(kind):
    if kind == "llama":
        m = transformers.models.llama.modeling_llama
        return m.LlamaDecoderLayer, m.LlamaRotaryEmbedding
    if kind == "qwen3":
        m = transformers.models.qwen3.modeling_qwen3
        return m.Qwen3DecoderLayer, m.Qwen3RotaryEmbedding
    m = transformers.models.qwen2.modeling_qwen2
    return m.Qwen2DecoderLayer, m.Qwen2RotaryEmbedding


def run_layer(layer, rotary, hidden, mask):
    dtype = hidden.dtype
    b, t, _ = hidden.shape
    pos = mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 1)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal[None, None] & (mask != 0)[:, None, None, :]
    additive = torch.zeros(b, 1, t, t, dtype=dtype)
    additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)
    cos, sin = rotary(hidden, pos)
    out = layer(hidden, attention_mask=additive, position_ids=pos,
                position_embeddings=(cos, sin))
    if isinstance(out, tuple):
        out = out[0]
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: block_parity.py OUT.safetensors")
    torch.manual_seed(0)
    tensors, meta, names = {}, {}, []
    for kind in ("llama", "qwen3", "qwen2"):
        try:
            cfg, qk_norm, qkv_bias = make_config(kind)
            layer_cls, rope_cls = modules(kind)
        except (AttributeError, ImportError) as e:
            print(f"skipping {kind}: {e}")
            continue
        cfg._attn_implementation = "eager"
        layer = layer_cls(cfg, layer_idx=0).eval()
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.15 * torch.randn_like(p))
        rotary = rope_cls(config=cfg)
        hidden = torch.randn(2, 12, cfg.hidden_size)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, :3] = 0  # left padding
        # Save the fp32 weights before the bf16 copy is made: a bf16 round
        # trip would change them.
        for name, p in layer.named_parameters():
            tensors[f"{kind}.weights.{name}"] = p.detach().clone().contiguous()
        with torch.no_grad():
            out32 = run_layer(layer, rotary, hidden, mask)
            out16 = run_layer(copy.deepcopy(layer).to(torch.bfloat16), rotary,
                              hidden.to(torch.bfloat16), mask)
        tensors[f"{kind}.hidden"] = hidden.contiguous()
        tensors[f"{kind}.mask"] = mask.contiguous()
        tensors[f"{kind}.out_fp32"] = out32.float().contiguous()
        tensors[f"{kind}.out_bf16"] = out16.contiguous()
        head_dim = getattr(cfg, "head_dim", None) or (
            cfg.hidden_size // cfg.num_attention_heads)
        meta[f"{kind}.config"] = json.dumps(dict(
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            intermediate_size=cfg.intermediate_size,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=rope_theta_of(cfg),
            qk_norm=qk_norm, qkv_bias=qkv_bias))
        names.append(kind)
        print(f"{kind}: transformers {transformers.__version__}, "
              f"{len(list(layer.named_parameters()))} tensors")
    if not names:
        sys.exit("no decoder layer could be built")
    meta["models"] = json.dumps(names)
    save_file(tensors, sys.argv[1], metadata=meta)
    print("wrote", sys.argv[1])


if __name__ == "__main__":
    main()
