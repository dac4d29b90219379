#!/usr/bin/env python3
"""Make a checkpoint whose tensors are all views of ONE storage, as torch.save writes a state_dict of
slices of a flat parameter buffer (issue 16, reproduction 5), for timing moepack's zip reader on it.

The bundled model's tensors (models/m3vit-tiny-edge-moe.pth, state_dict key 'state_dict', float16) are
converted to float32 and copied, in name order, into one float32 storage padded with zeros to --megabytes (default 72); each
state_dict entry is a view (offset, shape, contiguous strides) of it. The zip holds a single storage
record data/0 of that size.

    /work/venv/bin/python scripts/make_shared_storage_checkpoint.py bench/out/shared-72mb.pth
    moepack pack bench/out/shared-72mb.pth -o /tmp/shared        # reads data/0 once, not once per tensor
"""
import argparse
import collections
import os

import torch

ap = argparse.ArgumentParser()
ap.add_argument("output")
ap.add_argument("--megabytes", type=float, default=72.0)
ap.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "models", "m3vit-tiny-edge-moe.pth"))
args = ap.parse_args()

ckpt = torch.load(args.source, map_location="cpu", weights_only=True)
sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
names = sorted(k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point())
total = sum(sd[k].numel() for k in names)
numel = max(total, int(args.megabytes * 1e6) // 4)
flat = torch.zeros(numel, dtype=torch.float32)
views = collections.OrderedDict()
offset = 0
for k in names:
    n = sd[k].numel()
    flat[offset:offset + n] = sd[k].reshape(-1).float()
    views[k] = flat[offset:offset + n].view(sd[k].shape)
    offset += n
torch.save({"state_dict": views}, args.output)
print(f"{args.output}: {len(views)} tensors, one storage of {numel * 4} bytes")
