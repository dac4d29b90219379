#!/usr/bin/env python3
"""Writes Tests/Fixtures/tiny/tensor_sha256.json: the expected `source.tensors` digests of a pack of
Tests/Fixtures/tiny/model.pth with the tiny-test profile (task 0), computed independently of moepack.

Rule (manifest `source.tensors`): a tensor's digest is the SHA-256 of its values as float32
little-endian in row-major order of its checkpoint shape; `tensors_sha256` is the SHA-256 of one line
per tensor, sorted by canonical name, "<name> <shape comma separated> <sha256>\\n".

Deterministic: reads only the committed model.pth (torch.load with weights_only=True); no randomness.
Run with a Python that has torch and numpy: /work/venv/bin/python scripts/make_digest_fixture.py
"""
import hashlib
import json
import os

import numpy as np
import torch

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "tiny")

sd = torch.load(os.path.join(TINY, "model.pth"), map_location="cpu", weights_only=True)
if "state_dict" in sd:
    sd = sd["state_dict"]

# What a task-0 pack of the tiny model reads: every backbone tensor except the final norm, the
# decoder heads, and the gates of tasks other than 0.
def used(name):
    if name.startswith("norm.") or "decoder" in name or "head" in name:
        return False
    if ".mlp.gate." in name and not name.split(".mlp.gate.")[1].startswith("0."):
        return False
    return True

tensors = []
for name in sorted(sd):
    canonical = name.removeprefix("module.").removeprefix("backbone.")
    if not used(canonical):
        continue
    a = sd[name].float().contiguous().numpy().astype("<f4")
    tensors.append({"name": canonical, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()})
tensors.sort(key=lambda t: t["name"])
text = "".join(f"{t['name']} {','.join(map(str, t['shape']))} {t['sha256']}\n" for t in tensors)
out = {"tensors": tensors, "tensors_sha256": hashlib.sha256(text.encode()).hexdigest()}
with open(os.path.join(TINY, "tensor_sha256.json"), "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"{len(tensors)} tensors, tensors_sha256 {out['tensors_sha256']}")
