#!/usr/bin/env python3
"""Fixture for moepack's fused attention kernel (moepack_attention_f32, float_gemm_isa.h).

Scaled dot-product attention of one head, softmax(scale·Q·Kᵀ)·V (Vaswani et al. 2017; the M³ViT
attention block per head, scale = head_dim^-0.5), computed by PyTorch in float64 from seeded float32
operands. Writes Tests/Fixtures/attention/:

  cases.json           per case: tokens, heads, head_dim, scale, file names
  <case>_qkv.f32       [tokens, 3·heads·head_dim] float32 little-endian: the stacked Q|K|V
                       activations as the float path holds them (head h of Q at columns h·hd ..< (h+1)·hd,
                       K after all of Q, V after all of K)
  <case>_out.f64       [tokens, heads·head_dim] float64: each head's softmax(scale·Q·Kᵀ)·V at its columns

Cases: the bundled model's shape (129 tokens, head_dim 64) and an odd one (37 tokens, head_dim 24,
neither a multiple of the 16-lane panels nor of the 6-row tiles). Values are N(0, 1.5²) so the
softmax rows are neither uniform nor one-hot. Deterministic (numpy seed 20261203).
Run: /work/venv/bin/python scripts/make_attention_fixture.py
"""
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "Fixtures", "attention")

CASES = [("bundled", 129, 2, 64), ("odd", 37, 3, 24)]


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261203)
    meta = {}
    for name, tokens, heads, hd in CASES:
        d = heads * hd
        qkv = (rng.standard_normal((tokens, 3 * d)) * 1.5).astype(np.float32)
        scale = hd ** -0.5
        t = torch.from_numpy(qkv.astype(np.float64))
        out = torch.empty((tokens, d), dtype=torch.float64)
        for h in range(heads):
            q = t[:, h * hd:(h + 1) * hd]
            k = t[:, d + h * hd:d + (h + 1) * hd]
            v = t[:, 2 * d + h * hd:2 * d + (h + 1) * hd]
            a = torch.softmax(scale * (q @ k.T), dim=-1)
            out[:, h * hd:(h + 1) * hd] = a @ v
        qkv.astype("<f4").tofile(os.path.join(OUT, f"{name}_qkv.f32"))
        out.numpy().astype("<f8").tofile(os.path.join(OUT, f"{name}_out.f64"))
        meta[name] = {"tokens": tokens, "heads": heads, "head_dim": hd, "scale": scale,
                      "qkv": f"{name}_qkv.f32", "out": f"{name}_out.f64"}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
