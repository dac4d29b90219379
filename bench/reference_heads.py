#!/usr/bin/env python3
"""PyTorch CPU timing of the bundled checkpoint's task decoders (M³ViT VisionTransformerUpHead, eval mode,
then the resize to the input size) on backbone features, for bench/run.sh's heads row.

Prints 'ms/frame: X' = the median in-process time of one frame through every decoder, after warm-up.
The decoders are scripts/reference_heads.py's (written from M³ViT's models/vit_up_head.py).
"""
import argparse
import collections
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import reference_heads as rh  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--features", required=True, help=".npy float32 [129, 192]")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sd = torch.load(a.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    heads = []
    for task in ("semseg", "depth"):
        p = f"module.decoders.{task}."
        part = collections.OrderedDict((k[len(p):], v) for k, v in sd.items() if k.startswith(p))
        heads.append(rh.load(rh.UpHead(192, part["conv_4.weight"].shape[0], (128, 256)), part))
    x = torch.from_numpy(np.load(a.features).reshape(1, 129, 192).astype(np.float32))
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.frames):
            t0 = time.perf_counter()
            for h in heads:
                rh.model_output(h, x, (128, 256))
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    print(f"ms/frame: {np.median(times) * 1000:.3f}")


if __name__ == "__main__":
    main()
