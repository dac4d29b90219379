#!/usr/bin/env python3
"""The NumPy + PyTorch script a user would write instead of `moepack pack` (benchmark reference).

    /work/venv/bin/python bench/reference_pack.py CKPT -o OUT_DIR [--profile JSON] [--task 0]

Loads a training checkpoint with torch.load(weights_only=True) (whole file into memory), takes its
'state_dict' ('module.backbone.' prefixes), folds it into the Edge-MoE kernel's form and writes
OUT_DIR/ddr.bin: every ViT_compute argument of the profile in argument order, each at a 4096-byte
aligned offset (the profile's `alignment`), weights quantized to their ap_fixed type, every other
buffer (images, x, tmp*, attn*) zero. OUT_DIR/offsets.json lists name, offset, bytes.

Folds (exact algebra; same conventions as scripts/reference_m3vit.py and moepack):
  * input normalisation into the patch embedding: the kernel pixel is byte/256 (ap_ufixed<8,0>), training
    used (byte/255 - mean_c)/std_c with ImageNet mean/std, so W' = W*256/(255*std_c) and
    b' = b - sum_{c,y,x} W[o,c,y,x]*mean_c/std_c (float64, rounded once to float32);
  * cls token into pos_embed[0]; qkv split into Q, K, V rows; gate w_gate [D, E] transposed to [E, D]
    for the chosen task (default 0).
Quantisation (Vitis HLS ap_fixed<W,I> with AP_RND_CONV, AP_SAT): raw = round_half_even(x * 2^(W-I)) clamped
to [-2^(W-1), 2^(W-1)-1] (ap_ufixed: [0, 2^W-1]), stored little-endian in a 1/2/4-byte container.

Nothing here is random; the output is a pure function of the checkpoint and profile. No network.
"""
from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROFILE = os.path.join(ROOT, "Sources", "MoepackPacking", "Profiles", "edge-moe-zcu102.json")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PREFIX = "module.backbone."


def parse_type(spelled: str):
    m = re.fullmatch(r"\s*ap_(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*>\s*", spelled)
    if not m:
        raise SystemExit(f"reference_pack: unsupported type {spelled!r}")
    return m.group(1) != "u", int(m.group(2)), int(m.group(3))


def quantize(x: np.ndarray, signed: bool, W: int, I: int) -> np.ndarray:
    """Raw ap_fixed<W,I> (AP_RND_CONV, AP_SAT) values in the little-endian container."""
    # Scaling by a power of two is exact; float32 holds every raw value of W <= 24 exactly, wider types
    # (fm_t = ap_fixed<32,10>) need float64 so the clamp bound 2^31-1 is representable.
    work = np.float32 if W <= 24 else np.float64
    scaled = np.asarray(x, dtype=work) * work(2.0 ** (W - I))
    lo, hi = (-(1 << (W - 1)), (1 << (W - 1)) - 1) if signed else (0, (1 << W) - 1)
    raw = np.clip(np.rint(scaled), lo, hi)
    nbytes = 1 if W <= 8 else 2 if W <= 16 else 4
    return raw.astype(f"<{'i' if signed else 'u'}{nbytes}")


def kernel_arrays(g: dict, model: dict, task: int) -> dict:
    """Kernel argument name -> float32 array in its C shape (folds applied)."""
    D, depth = model["embedDim"], model["depth"]
    moe = model["moeBlocks"]
    dense = [i for i in range(depth) if i not in moe]
    w = g["patch_embed.proj.weight"].astype(np.float64)
    b = g["patch_embed.proj.bias"].astype(np.float64)
    pe_w = (w * (256.0 / (255.0 * STD))[None, :, None, None]).astype(np.float32)
    pe_b = (b - np.einsum("ocyx,c->o", w, MEAN / STD)).astype(np.float32)
    pos = g["pos_embed"][0].astype(np.float64)
    pos[0] += g["cls_token"][0, 0]
    blk = lambda i, n: g[f"blocks.{i}.{n}"]

    def qkvp(i, kind):
        qkv = blk(i, f"attn.qkv.{kind}")
        return [qkv[0:D], qkv[D:2 * D], qkv[2 * D:3 * D], blk(i, f"attn.proj.{kind}")]

    return {
        "patch_embed_weights": pe_w,
        "patch_embed_bias": pe_b,
        "pos_embed": pos.astype(np.float32),
        "attn_weights": np.stack([np.stack(qkvp(i, "weight")) for i in range(depth)]),
        "attn_bias": np.stack([np.stack(qkvp(i, "bias")) for i in range(depth)]),
        "moe_w_gate": np.stack([blk(i, f"mlp.gate.{task}.w_gate").T for i in moe]),
        "moe_weights_l1": np.stack([blk(i, "mlp.experts.htoh4.weight") for i in moe]),
        "moe_bias_l1": np.stack([blk(i, "mlp.experts.htoh4.bias") for i in moe]),
        "moe_weights_l2": np.stack([blk(i, "mlp.experts.h4toh.weight") for i in moe]),
        "moe_bias_l2": np.stack([blk(i, "mlp.experts.h4toh.bias") for i in moe]),
        "vit_weights_l1": np.stack([blk(i, "mlp.fc1.weight") for i in dense]),
        "vit_bias_l1": np.stack([blk(i, "mlp.fc1.bias") for i in dense]),
        "vit_weights_l2": np.stack([blk(i, "mlp.fc2.weight") for i in dense]),
        "vit_bias_l2": np.stack([blk(i, "mlp.fc2.bias") for i in dense]),
        "norm_weights": np.stack([np.stack([blk(i, "norm1.weight"), blk(i, "norm2.weight")]) for i in range(depth)]),
        "norm_bias": np.stack([np.stack([blk(i, "norm1.bias"), blk(i, "norm2.bias")]) for i in range(depth)]),
    }


def main():
    ap = argparse.ArgumentParser(description="Reference pack: training checkpoint -> Edge-MoE DDR image")
    ap.add_argument("checkpoint")
    ap.add_argument("-o", "--output", required=True, help="output folder (ddr.bin, offsets.json)")
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="moepack profile JSON (argument table)")
    ap.add_argument("--task", type=int, default=0)
    args = ap.parse_args()

    with open(args.profile) as f:
        prof = json.load(f)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    g = {k[len(PREFIX):]: v.float().numpy() for k, v in sd.items() if k.startswith(PREFIX)}
    del ckpt, sd
    arrays = kernel_arrays(g, prof["model"], args.task)

    align = prof["alignment"]
    os.makedirs(args.output, exist_ok=True)
    offsets = []
    with open(os.path.join(args.output, "ddr.bin"), "wb") as f:
        for buf in prof["buffers"]:
            signed, W, I = parse_type(prof["types"][buf["type"]])
            count = int(np.prod(buf["shape"]))
            nbytes = (1 if W <= 8 else 2 if W <= 16 else 4) * count
            pad = -f.tell() % align
            f.write(bytes(pad))
            off = f.tell()
            if buf["role"] == "weight":
                a = arrays[buf["name"]]
                if a.size != count:
                    raise SystemExit(f"reference_pack: {buf['name']}: model shape {a.shape}, profile {buf['shape']}")
                f.write(quantize(a, signed, W, I).tobytes())
            else:
                f.write(bytes(nbytes))
            offsets.append({"name": buf["name"], "offset": off, "bytes": nbytes})
        f.write(bytes(-f.tell() % align))
        total = f.tell()
    with open(os.path.join(args.output, "offsets.json"), "w") as f:
        json.dump({"bytes": total, "buffers": offsets}, f, indent=1)
    print(f"wrote {args.output}/ddr.bin: {total} bytes, {len(offsets)} buffers")


if __name__ == "__main__":
    main()
