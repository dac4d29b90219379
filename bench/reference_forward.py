#!/usr/bin/env python3
"""PyTorch CPU forward of the M³ViT backbone, timed per frame (benchmark reference for `moepack run`).

    /work/venv/bin/python bench/reference_forward.py [--checkpoint CKPT] [--profile JSON] [--image FRAME]
                                                     [--frames 20] [--warmup 3] [--threads 2] [--task 0]

What a user would write to run the backbone on the CPU: torch.load(weights_only=True) the checkpoint,
fold it into the kernel's form (input = byte/256, normalisation folded into the patch embedding, cls in
pos_embed[0], gate transposed), then per frame: patch-embedding conv, 12 blocks of LayerNorm + attention
(F.scaled_dot_product_attention) + dense MLP or MoE, float32, torch.set_num_threads(2). MoE blocks: softmax
gate, top-2, tokens grouped per expert (each expert's MLP runs once on the tokens routed to it in either
slot, outputs weighted by the un-renormalised softmax probability and index_add-ed back). Backbone output
= x after the last block (no final norm).

Frames: --image (raw uint8 [3,H,W] bytes, C order) when its size matches
the model, else a seeded random frame (numpy PCG64, seed 0). Every timed frame is a fresh copy of it.

Prints per-frame times after --warmup untimed frames; the last line is `ms/frame: <median>` (what
bench/run.sh reads). With the bundled checkpoint and demo frame it also prints the largest difference to
the committed PyTorch reference output (Tests/Fixtures/bundled/ref_out_task{t}.f32) as a sanity check.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CKPT = os.path.join(ROOT, "models", "m3vit-tiny-edge-moe.pth")
DEFAULT_PROFILE = os.path.join(ROOT, "Sources", "MoepackPacking", "Profiles", "edge-moe-zcu102.json")
DEFAULT_IMAGE = os.path.join(ROOT, "models", "demo-frame.u8")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PREFIX = "module.backbone."


def load_frame(path: str, model: dict) -> np.ndarray:
    shape = (model["inChans"], model["imageHeight"], model["imageWidth"])
    if path and os.path.exists(path):
        a = np.fromfile(path, np.uint8)
        if a.size == int(np.prod(shape)):
            return a.reshape(shape)
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def fold(g: dict, model: dict, task: int) -> dict:
    """Kernel-form float32 torch tensors (folds in float64, rounded once)."""
    w = g["patch_embed.proj.weight"].astype(np.float64)
    b = g["patch_embed.proj.bias"].astype(np.float64)
    pos = g["pos_embed"][0].astype(np.float64)
    pos[0] += g["cls_token"][0, 0]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    k = {"pe_w": t(w * (256.0 / (255.0 * STD))[None, :, None, None]),
         "pe_b": t(b - np.einsum("ocyx,c->o", w, MEAN / STD)),
         "pos": t(pos), "blocks": []}
    for i in range(model["depth"]):
        p = f"blocks.{i}."
        blk = {n: t(g[p + n]) for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                         "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias")}
        if i in model["moeBlocks"]:
            blk["gate"] = t(g[p + f"mlp.gate.{task}.w_gate"].T)              # [E, D]
            for n in ("htoh4.weight", "htoh4.bias", "h4toh.weight", "h4toh.bias"):
                blk[n] = t(g[p + "mlp.experts." + n])
        else:
            for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                blk[n] = t(g[p + "mlp." + n])
        k["blocks"].append(blk)
    return k


def moe(h: torch.Tensor, blk: dict, top_k: int) -> torch.Tensor:
    probs = torch.softmax(F.linear(h, blk["gate"]), dim=-1)            # [T, E]
    top_p, top_i = torch.topk(probs, top_k, dim=-1)
    flat_e = top_i.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    tokens = order // top_k
    weights = top_p.reshape(-1)[order]
    counts = torch.bincount(flat_e, minlength=blk["gate"].shape[0]).tolist()
    out = torch.zeros_like(h)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        idx = tokens[start:start + n]
        y = F.gelu(F.linear(h[idx], blk["htoh4.weight"][e], blk["htoh4.bias"][e]))
        y = F.linear(y, blk["h4toh.weight"][e], blk["h4toh.bias"][e])
        out.index_add_(0, idx, y * weights[start:start + n, None])
        start += n
    return out


def forward(k: dict, frame_u8: np.ndarray, model: dict) -> torch.Tensor:
    D, heads, eps = model["embedDim"], model["heads"], model["layerNormEps"]
    hd = D // heads
    inp = torch.from_numpy(frame_u8).to(torch.float32).mul_(1.0 / 256.0)
    emb = F.conv2d(inp[None], k["pe_w"], k["pe_b"], stride=model["patchSize"])
    x = torch.cat([torch.zeros(1, D), emb[0].flatten(1).T], 0) + k["pos"]
    T = x.shape[0]
    for i, blk in enumerate(k["blocks"]):
        h = F.layer_norm(x, (D,), blk["norm1.weight"], blk["norm1.bias"], eps)
        qkv = F.linear(h, blk["attn.qkv.weight"], blk["attn.qkv.bias"]).reshape(T, 3, heads, hd).permute(1, 2, 0, 3)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])       # [heads, T, hd], scale hd^-0.5
        x = x + F.linear(o.transpose(0, 1).reshape(T, D), blk["attn.proj.weight"], blk["attn.proj.bias"])
        h = F.layer_norm(x, (D,), blk["norm2.weight"], blk["norm2.bias"], eps)
        if "gate" in blk:
            y = moe(h, blk, model["topK"])
        else:
            y = F.linear(F.gelu(F.linear(h, blk["fc1.weight"], blk["fc1.bias"])), blk["fc2.weight"], blk["fc2.bias"])
        x = x + y
    return x


def main():
    ap = argparse.ArgumentParser(description="Reference PyTorch CPU backbone forward, ms/frame")
    ap.add_argument("--checkpoint", default=DEFAULT_CKPT)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="moepack profile JSON (model dimensions)")
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = json.load(open(args.profile))["model"]
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    g = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v.float().numpy() for k, v in sd.items()
         if k.startswith(PREFIX) or not k.startswith("module.")}
    k = fold(g, model, args.task)
    frame = load_frame(args.image, model)

    times = []
    with torch.inference_mode():
        for j in range(args.warmup + args.frames):
            f = frame.copy()
            t0 = time.perf_counter()
            out = forward(k, f, model)
            dt = time.perf_counter() - t0
            if j >= args.warmup:
                times.append(dt * 1000.0)
    ref = os.path.join(ROOT, "Tests", "Fixtures", "bundled", f"ref_out_task{args.task}.f32")
    if (os.path.abspath(args.checkpoint) == os.path.abspath(DEFAULT_CKPT) and os.path.exists(ref)
            and os.path.abspath(args.image) == os.path.abspath(DEFAULT_IMAGE)):
        r = np.fromfile(ref, "<f4").reshape(out.shape)
        print(f"max |out - Tests/Fixtures/bundled/ref_out_task{args.task}| = {float(np.abs(out.numpy() - r).max()):.3g}")
    print(f"frames {args.frames} after {args.warmup} warm-up, {args.threads} threads, tokens {out.shape[0]}, "
          f"D {out.shape[1]}: min {min(times):.2f} ms, mean {statistics.fmean(times):.2f} ms")
    print(f"ms/frame: {statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
