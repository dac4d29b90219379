#!/usr/bin/env python3
"""Make the seeded training-style checkpoints that `bench/run.sh` times moepack on (no network).

Two model sizes, both M³ViT backbones with the weight spread of scripts/make_fixtures.py:

  --size tiny   (default) the bundled model's shapes (ViT-Tiny, D=192, 3 heads, 12 blocks, odd blocks MoE
                16 experts x 384, dense MLP 768, 2 task gates, 129 tokens, input 3x128x256)
                -> bench/out/train-tiny.pth, about 214 MB
  --size small  ViT-Small-sized (D=384, 12 heads of 32 (as the performance issue specifies), 12 blocks, odd blocks MoE 16 experts x 768, dense
                MLP 1536, 2 task gates, 1025 tokens = 32x32 patches + cls, input 3x512x512, p=16)
                -> bench/out/train-small.pth, about 850 MB

Each file is what a training loop saves with torch.save (zip format):

  {'epoch': 40,
   'state_dict': OrderedDict (with nn.Module `_metadata`) of 'module.backbone.<M³ViT name>' float32 tensors
                 plus decoder heads 'module.decoders.{semseg,depth}.conv.{weight,bias}',
   'optimizer': torch.optim.AdamW state_dict: {'state': {i: {'step': tensor(float32),
                 'exp_avg': float32 like param i, 'exp_avg_sq': float32 like param i}} for EVERY parameter,
                 'param_groups': [{'lr', 'betas', 'eps', 'weight_decay', 'amsgrad', ..., 'params': [0..N-1]}]},
   'best_miou': float}

so the weights are about a third of the bytes: a converter that reads lazily skips two thirds of the file.
Float32 everywhere because that is what torch.optim keeps for float32 parameters (the brief's "~150 MB"
estimate assumed less; the real size of the tiny file is ~214 MB).

    /work/venv/bin/python scripts/make_bench_checkpoint.py                     # tiny -> bench/out/train-tiny.pth
    /work/venv/bin/python scripts/make_bench_checkpoint.py --size small        # -> bench/out/train-small.pth
    /work/venv/bin/python scripts/make_bench_checkpoint.py --write-profile bench/vit-small.json

`--write-profile` writes the moepack hardware profile (format moepack-profile/1) of the ViT-Small-sized
kernel, derived from Sources/MoepackPacking/Profiles/edge-moe-zcu102.json with the same scheme the kernel
header uses (include/hardware.hpp, include/kernel.hpp of Edge-MoE): buffers in ViT_compute argument
order, same element types, registers and alignment; shapes recomputed from the model dimensions
(tmp_hidden = tokens*ceil(max(mlp, expert hidden)/8) blocks of 8 fm_t; attn = [ceil((T+3)/4)][T][4]
[roundup_p2(heads)]; attn_softmax_info = [T][roundup_p2(2*heads)]).

Seeds: numpy PCG64 20240501 (tiny) / 20240502 (small) for weights, +1 for decoders and optimizer state.
The written bytes are deterministic (torch's random serialization id is patched to zeros).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402  (seeded weight generator, deterministic torch.save)
import reference_m3vit as ref  # noqa: E402

SMALL = ref.Config(embed_dim=384, depth=12, heads=12, moe_blocks=(1, 3, 5, 7, 9, 11), experts=16,
                   expert_hidden=768, mlp_hidden=1536, tasks=2, patch=16, in_chans=3, height=512, width=512)
CONFIGS = {"tiny": ref.EDGE_MOE, "small": SMALL}
SEEDS = {"tiny": 20240501, "small": 20240502}
DEFAULT_OUT = {"tiny": os.path.join(ROOT, "bench", "out", "train-tiny.pth"),
               "small": os.path.join(ROOT, "bench", "out", "train-small.pth")}
BASE_PROFILE = os.path.join(ROOT, "Sources", "MoepackPacking", "Profiles", "edge-moe-zcu102.json")


def _roundup_p2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def scaled_profile(cfg: ref.Config, name: str, description: str) -> dict:
    """The edge-moe-zcu102 profile with every shape recomputed for `cfg` (argument order, types kept)."""
    with open(BASE_PROFILE) as f:
        prof = json.load(f)
    out = copy.deepcopy(prof)
    out["name"] = name
    out["description"] = description
    T, D = cfg.tokens, cfg.embed_dim
    nmoe, ndense = len(cfg.moe_blocks), len(cfg.dense_blocks)
    fm_block = 256 // 32                                   # AXI_XFER_BIT_WIDTH / fm_t::width
    out["model"] = {
        "embedDim": D, "depth": cfg.depth, "heads": cfg.heads, "moeBlocks": list(cfg.moe_blocks),
        "experts": cfg.experts, "expertHidden": cfg.expert_hidden, "mlpHidden": cfg.mlp_hidden,
        "tasks": cfg.tasks, "topK": cfg.top_k, "tokens": T, "patchSize": cfg.patch, "inChans": cfg.in_chans,
        "imageHeight": cfg.height, "imageWidth": cfg.width, "layerNormEps": prof["model"]["layerNormEps"],
    }
    E, He, Hm, p, C = cfg.experts, cfg.expert_hidden, cfg.mlp_hidden, cfg.patch, cfg.in_chans
    shapes = {
        "images": [1, C, cfg.height, cfg.width],
        "x": [1, T, D],
        "tmp1": [T, D], "tmp2": [T, D], "tmp3": [T, D], "tmp4": [T, D],
        "tmp_hidden": [T * math.ceil(max(Hm, He) / fm_block), fm_block],
        "attn": [math.ceil((T + 3) / 4), T, 4, _roundup_p2(cfg.heads)],
        "attn_softmax_info": [T, _roundup_p2(2 * cfg.heads)],
        "patch_embed_weights": [D, C, p, p],
        "patch_embed_bias": [D],
        "pos_embed": [T, D],
        "attn_weights": [cfg.depth, 4, D, D],
        "attn_bias": [cfg.depth, 4, D],
        "moe_w_gate": [nmoe, E, D],
        "moe_weights_l1": [nmoe, E, He, D],
        "moe_bias_l1": [nmoe, E, He],
        "moe_weights_l2": [nmoe, E, D, He],
        "moe_bias_l2": [nmoe, E, D],
        "vit_weights_l1": [ndense, Hm, D],
        "vit_bias_l1": [ndense, Hm],
        "vit_weights_l2": [ndense, D, Hm],
        "vit_bias_l2": [ndense, D],
        "norm_weights": [cfg.depth, 2, D],
        "norm_bias": [cfg.depth, 2, D],
    }
    for b in out["buffers"]:
        b["shape"] = shapes[b["name"]]
    return out


def check_profile_scheme():
    """The scheme must reproduce the published profile itself for the ViT-Tiny config."""
    with open(BASE_PROFILE) as f:
        prof = json.load(f)
    again = scaled_profile(ref.EDGE_MOE, prof["name"], prof["description"])
    assert again == prof, "scaled_profile(EDGE_MOE) does not reproduce edge-moe-zcu102.json"


def decoders(cfg: ref.Config, rng) -> "collections.OrderedDict[str, torch.Tensor]":
    D = cfg.embed_dim
    return collections.OrderedDict([
        ("module.decoders.semseg.conv.weight", torch.from_numpy(rng.normal(0, 0.05, (19, D, 1, 1)).astype(np.float32))),
        ("module.decoders.semseg.conv.bias", torch.from_numpy(rng.normal(0, 0.01, (19,)).astype(np.float32))),
        ("module.decoders.depth.conv.weight", torch.from_numpy(rng.normal(0, 0.05, (1, D, 1, 1)).astype(np.float32))),
        ("module.decoders.depth.conv.bias", torch.from_numpy(rng.normal(0, 0.01, (1,)).astype(np.float32))),
    ])


def adamw_state(params: list, rng, step: float) -> dict:
    """torch.optim.AdamW.state_dict() layout with plausible moments for every parameter."""
    state = {}
    for j, p in enumerate(params):
        shape = tuple(p.shape)
        m = rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-4)
        v = rng.standard_normal(shape, dtype=np.float32)
        v = v * v * np.float32(1e-8)
        state[j] = {"step": torch.tensor(step, dtype=torch.float32),
                    "exp_avg": torch.from_numpy(m), "exp_avg_sq": torch.from_numpy(v)}
    groups = [{"lr": 2e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05, "amsgrad": False,
               "foreach": None, "maximize": False, "capturable": False, "differentiable": False, "fused": None,
               "params": list(range(len(params)))}]
    return {"state": state, "param_groups": groups}


def make_checkpoint(size: str, path: str):
    cfg = CONFIGS[size]
    seed = SEEDS[size]
    plain64 = mf.make_backbone(cfg, seed)
    sd = collections.OrderedDict()
    for k in list(plain64):
        sd["module.backbone." + k] = torch.from_numpy(np.ascontiguousarray(plain64.pop(k), dtype=np.float32))
    rng = np.random.default_rng(seed + 1)
    sd.update(decoders(cfg, rng))
    sd = mf.with_metadata(sd, "")
    opt = adamw_state(list(sd.values()), rng, step=40.0 * 372)
    ckpt = {"epoch": 40, "state_dict": sd, "optimizer": opt, "best_miou": 0.4321}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    mf.save_zip(ckpt, tmp)
    os.replace(tmp, path)
    nparam = sum(v.numel() for v in sd.values())
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(sd)} tensors, {nparam} parameters "
          f"(+ AdamW exp_avg/exp_avg_sq for each), config {size}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", nargs="?", help="checkpoint path (default bench/out/train-<size>.pth)")
    ap.add_argument("--size", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--write-profile", metavar="JSON",
                    help="write the ViT-Small-sized moepack profile to JSON and exit")
    args = ap.parse_args()
    torch.set_num_threads(2)
    check_profile_scheme()
    if args.write_profile:
        prof = scaled_profile(SMALL, "vit-small-bench",
                              "Benchmark-only: edge-moe-zcu102's ViT_compute argument table with every shape "
                              "scaled to a ViT-Small-sized M³ViT (D=384, 12 heads, 16 experts x 768, MLP 1536, "
                              "3x512x512 input, 1025 tokens); same types, argument order, registers and "
                              "alignment. Made by scripts/make_bench_checkpoint.py --write-profile. No such "
                              "bitstream exists.")
        with open(args.write_profile, "w") as f:
            json.dump(prof, f, indent=1)
            f.write("\n")
        print(f"wrote {args.write_profile}")
        return
    make_checkpoint(args.size, args.output or DEFAULT_OUT[args.size])


if __name__ == "__main__":
    main()
