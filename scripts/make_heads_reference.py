#!/usr/bin/env python3
"""Seeded PyTorch reference outputs of M³ViT's task decoders for moepack's heads tests (no network).

Writes Tests/Fixtures/heads/:
  tiny_heads.pth     training-style torch zip {'epoch', 'state_dict'} with 'module.decoders.<task>.*' of four
                     tiny decoders (D=32, 2x4 patch grid, img 32x64, 16 channels instead of 256):
                     semseg (7, num_conv=4), depth (1, num_conv=4), normals (3, num_conv=2, 3x3 conv_0,
                     num_upsampe_layer=1), edge (1, num_conv=2, 1x1 conv_0, num_upsampe_layer=2); float32
  tiny_features.f32  backbone output [9, 32] float32 the tiny references start from
  tiny_<task>.f32    model output [C, 32, 64] (decoder then resize to the input size)
  tiny_semseg_48x80.f32  semseg resized to a 48x80 input instead: [7, 48, 80]
  full_<task>.f32    the bundled checkpoint's (models/m3vit-tiny-edge-moe.pth) decoders run on its backbone
                     outputs Tests/Fixtures/bundled/ref_out_task{0,1}.f32 (semseg on task 0's, depth on task 1's):
                     [7, 128, 256] and [1, 128, 256]
  meta.json          shapes, seeds, conventions

Run: /work/venv/bin/python scripts/make_heads_reference.py  (after scripts/make_fixtures.py)
The decoder is scripts/reference_heads.py (written from M³ViT's models/vit_up_head.py).
"""
from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_heads as rh  # noqa: E402
from make_fixtures import save_zip, with_metadata  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "Tests", "Fixtures", "heads")
SEED_TINY_HEADS = 131

torch.set_num_threads(1)

# (task, classes, num_conv, num_upsampe_layer, conv3x3_conv1x1)
TINY_HEADS = (("semseg", 7, 4, 4, True), ("depth", 1, 4, 4, True),
              ("normals", 3, 2, 1, True), ("edge", 1, 2, 2, False))
TINY_D, TINY_IMG, TINY_CHANNELS = 32, (32, 64), 16
FULL_D, FULL_IMG = 192, (128, 256)


def write(name, arr, files, desc):
    a = np.ascontiguousarray(arr, dtype="<f4")
    a.tofile(os.path.join(OUT, name))
    files[name] = {"shape": list(a.shape), "dtype": "float32", "description": desc}


def tiny(files):
    rng = np.random.default_rng(SEED_TINY_HEADS)
    feats = rng.normal(0.0, 1.2, (1 + (TINY_IMG[0] // 16) * (TINY_IMG[1] // 16), TINY_D)).astype(np.float32)
    write("tiny_features.f32", feats, files, "backbone output [tokens, D] (cls first), normal(0, 1.2)")
    sd = collections.OrderedDict()
    x = torch.from_numpy(feats)[None]
    for task, classes, nc, nu, c3 in TINY_HEADS:
        head = rh.UpHead(TINY_D, classes, TINY_IMG, channels=TINY_CHANNELS, num_conv=nc,
                         num_upsampe_layer=nu, conv3x3_conv1x1=c3)
        values = rh.seeded_state(rng, head)
        rh.load(head, values)
        for k, v in head.state_dict().items():
            sd[f"module.decoders.{task}.{k}"] = v.clone()
        with torch.no_grad():
            y = rh.model_output(head, x, TINY_IMG)[0].numpy()
            write(f"tiny_{task}.f32", y, files, f"{task}: num_conv={nc}, num_upsampe_layer={nu}, "
                  f"conv3x3_conv1x1={c3}; output [C, H, W] at the input size {TINY_IMG}")
            if task == "semseg":
                y2 = rh.model_output(head, x, (48, 80))[0].numpy()
                write("tiny_semseg_48x80.f32", y2, files, "semseg resized to a 48x80 input")
    save_zip({"epoch": 3, "state_dict": with_metadata(sd, "")}, os.path.join(OUT, "tiny_heads.pth"))
    files["tiny_heads.pth"] = {"description": "torch zip {'epoch': 3, 'state_dict': 'module.decoders.<task>.*' "
                               "(float32; num_batches_tracked int64)}, tasks in the order semseg, depth, normals, edge"}


def full(files):
    ck = torch.load(os.path.join(ROOT, "models", "m3vit-tiny-edge-moe.pth"), map_location="cpu",
                    weights_only=True)["state_dict"]
    bundled = os.path.join(ROOT, "Tests", "Fixtures", "bundled")
    for t, (task, classes) in enumerate((("semseg", 7), ("depth", 1))):
        head = rh.UpHead(FULL_D, classes, FULL_IMG)
        prefix = f"module.decoders.{task}."
        rh.load(head, collections.OrderedDict((k[len(prefix):], v) for k, v in ck.items() if k.startswith(prefix)))
        feats = np.fromfile(os.path.join(bundled, f"ref_out_task{t}.f32"), "<f4").reshape(129, FULL_D)
        with torch.no_grad():
            y = rh.model_output(head, torch.from_numpy(feats)[None], FULL_IMG)[0].numpy()
        write(f"full_{task}.f32", y, files, f"bundled checkpoint's {task} decoder (float16 weights upcast) on "
              f"bundled/ref_out_task{t}.f32, output [C, 128, 256]")


def main():
    os.makedirs(OUT, exist_ok=True)
    files = collections.OrderedDict()
    tiny(files)
    full(files)
    meta = {"description": "PyTorch float32 reference of M³ViT VisionTransformerUpHead (eval mode) from "
                           "scripts/reference_heads.py; raw little-endian float32, C order, no header.",
            "seed": SEED_TINY_HEADS, "tiny": {"embed_dim": TINY_D, "img_size": list(TINY_IMG),
                                               "channels": TINY_CHANNELS,
                                               "heads": [list(h) for h in TINY_HEADS]},
            "full": {"embed_dim": FULL_D, "img_size": list(FULL_IMG), "channels": 256},
            "files": files}
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
