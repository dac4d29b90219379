#!/usr/bin/env python3
"""Make moepack's seeded test fixtures and the bundled demo checkpoint (no network, re-runnable).

Writes, relative to the repository root (the parent of this script's folder):
  models/m3vit-tiny-edge-moe.pth, models/demo-frame.u8, models/demo-frame.png
  Tests/Fixtures/bundled/  reference outputs of the bundled model on the demo frame
  Tests/Fixtures/tiny/     a tiny M³ViT in every supported container + references + expected kernel bits

Run: /work/venv/bin/python scripts/make_fixtures.py   (needs torch, numpy, h5py, safetensors)
All values come from numpy PCG64 generators with fixed seeds; the float reference forward passes are
in scripts/reference_m3vit.py (PyTorch, float32).
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
import struct
import sys
import zipfile
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_m3vit as ref  # noqa: E402

ROOT = os.path.dirname(HERE)
MODELS = os.path.join(ROOT, "models")
FIX = os.path.join(ROOT, "Tests", "Fixtures")

SEED_BUNDLED = 20230601
SEED_TINY = 7
SEED_DEMO_FRAME = 1
SEED_TINY_FRAME = 2

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Seeded weights with a trained-ViT-like spread
# ----------------------------------------------------------------------------------------------

def _normal(rng, shape, std, outliers=4, outlier_scale=(3.0, 5.0), mean=0.0, clip=None):
    a = rng.normal(mean, std, size=shape)
    n = a.size
    if outliers and n > 8:
        idx = rng.choice(n, size=min(outliers, n // 4), replace=False)
        flat = a.reshape(-1)
        flat[idx] = mean + np.sign(rng.standard_normal(idx.size)) * std * rng.uniform(*outlier_scale, idx.size)
    if clip is not None:
        a = np.clip(a, mean - clip, mean + clip)
    return a


def _smooth_pos_embed(rng, cfg, std):
    """Smooth 2-D pattern over the patch grid + a little noise, like a learned position embedding."""
    gh, gw = cfg.height // cfg.patch, cfg.width // cfg.patch
    yy, xx = np.meshgrid(np.arange(gh) / gh, np.arange(gw) / gw, indexing="ij")
    d = cfg.embed_dim
    fy = rng.uniform(0.5, 3.0, d); fx = rng.uniform(0.5, 3.0, d)
    py = rng.uniform(0, 2 * np.pi, d); px = rng.uniform(0, 2 * np.pi, d)
    grid = (np.sin(2 * np.pi * fy[None, None] * yy[..., None] + py) +
            np.cos(2 * np.pi * fx[None, None] * xx[..., None] + px))           # [gh, gw, D]
    grid = grid.reshape(gh * gw, d)
    grid = grid / grid.std() * 0.8 + rng.normal(0, 0.6, grid.shape)
    cls_row = rng.normal(0, 1.0, (1, d))
    pos = np.concatenate([cls_row, grid], 0)
    return (pos / pos.std() * std)[None]                                       # [1, T, D]


def make_backbone(cfg: ref.Config, seed: int) -> "collections.OrderedDict[str, np.ndarray]":
    """Plain M³ViT backbone state_dict as float64 numpy arrays (key order as the model registers them)."""
    rng = np.random.default_rng(seed)
    D, Hm, He, E = cfg.embed_dim, cfg.mlp_hidden, cfg.expert_hidden, cfg.experts
    s = (192.0 / D) ** 0.5          # keep activations of small models at ViT-Tiny scale
    sd = collections.OrderedDict()
    sd["cls_token"] = rng.normal(0, 0.02, (1, 1, D))
    sd["pos_embed"] = _smooth_pos_embed(rng, cfg, 0.02)
    # |w| <= 0.1 so the folded weight w*256/(255*std_c) stays inside ap_fixed<16,0>'s [-0.5, 0.5).
    sd["patch_embed.proj.weight"] = _normal(rng, (D, cfg.in_chans, cfg.patch, cfg.patch), 0.02, outliers=6, clip=0.1)
    sd["patch_embed.proj.bias"] = _normal(rng, (D,), 0.03, outliers=2)
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"] = _normal(rng, (D,), 0.1, outliers=2, mean=1.0 + 0.02 * i)
        sd[p + "norm1.bias"] = _normal(rng, (D,), 0.03, outliers=2)
        qkv_std = np.concatenate([np.full((2 * D, 1), 0.045), np.full((D, 1), 0.035)])  # Q,K a bit wider than V
        sd[p + "attn.qkv.weight"] = _normal(rng, (3 * D, D), 1.0, outliers=8) * qkv_std * s
        sd[p + "attn.qkv.bias"] = _normal(rng, (3 * D,), 0.04, outliers=3)
        sd[p + "attn.proj.weight"] = _normal(rng, (D, D), 0.03 * s, outliers=6)
        sd[p + "attn.proj.bias"] = _normal(rng, (D,), 0.02, outliers=2)
        sd[p + "norm2.weight"] = _normal(rng, (D,), 0.1, outliers=2, mean=1.0 + 0.06 * i)
        sd[p + "norm2.bias"] = _normal(rng, (D,), 0.03, outliers=2)
        if i in cfg.moe_blocks:
            for t in range(cfg.tasks):
                # A per-task shared component + independent part: tasks route similarly but not identically.
                if t == 0:
                    base = rng.normal(0, 0.05 * s, (D, E))
                    sd[p + f"mlp.gate.{t}.w_gate"] = base + _normal(rng, (D, E), 0.02 * s, outliers=2)
                else:
                    sd[p + f"mlp.gate.{t}.w_gate"] = base + _normal(rng, (D, E), 0.03 * s, outliers=2)
            sd[p + "mlp.experts.htoh4.weight"] = _normal(rng, (E, He, D), 0.05 * s, outliers=8)
            sd[p + "mlp.experts.htoh4.bias"] = _normal(rng, (E, He), 0.03, outliers=4, mean=-0.02)
            sd[p + "mlp.experts.h4toh.weight"] = _normal(rng, (E, D, He), 0.05 * s / 1.4, outliers=8)
            sd[p + "mlp.experts.h4toh.bias"] = _normal(rng, (E, D), 0.02, outliers=4)
        else:
            sd[p + "mlp.fc1.weight"] = _normal(rng, (Hm, D), 0.04 * s, outliers=8)
            sd[p + "mlp.fc1.bias"] = _normal(rng, (Hm,), 0.04, outliers=4, mean=-0.03)
            sd[p + "mlp.fc2.weight"] = _normal(rng, (D, Hm), 0.03 * s, outliers=8)
            sd[p + "mlp.fc2.bias"] = _normal(rng, (D,), 0.02, outliers=2)
    sd["norm.weight"] = _normal(rng, (D,), 0.1, outliers=2, mean=1.0)
    sd["norm.bias"] = _normal(rng, (D,), 0.03, outliers=2)
    return sd


def to_torch(sd, dtype):
    return collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v)).to(dtype).clone())
                                   for k, v in sd.items())


def with_metadata(sd: collections.OrderedDict, prefix: str) -> collections.OrderedDict:
    """Attach the `_metadata` attribute nn.Module.state_dict() carries (pickled via OrderedDict BUILD)."""
    out = collections.OrderedDict(sd)
    meta = collections.OrderedDict()
    mods = {""}
    for k in sd:
        parts = k.split(".")[:-1]
        for j in range(len(parts) + 1):
            mods.add(".".join(parts[:j]))
    for m in sorted(mods, key=lambda x: (x.count("."), x)):
        meta[m] = {"version": 1}
    out._metadata = meta
    return out


def training_dict(plain_t: collections.OrderedDict, decoders: dict, dtype, epoch: int, rng) -> dict:
    sd = collections.OrderedDict(("module.backbone." + k, v) for k, v in plain_t.items())
    for k, v in decoders.items():
        sd[k] = v
    sd = with_metadata(sd, "")
    small = [k for k, v in sd.items() if v.dim() == 1][:4]
    state = {}
    for j, k in enumerate(small):
        state[j] = {"momentum_buffer": torch.from_numpy(rng.normal(0, 1e-3, tuple(sd[k].shape))).to(dtype)}
    opt = {"state": state,
           "param_groups": [{"lr": 2e-5, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                             "nesterov": False, "maximize": False, "foreach": None,
                             "params": list(range(len(sd)))}]}
    return {"epoch": epoch, "state_dict": sd, "optimizer": opt}


# ----------------------------------------------------------------------------------------------
# Deterministic torch.save: patch the random parts of the written bytes
# ----------------------------------------------------------------------------------------------

def _patch_zip_serialization_id(path: str, fixed: bytes):
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.filename.endswith(".data/serialization_id")]
        if not infos:
            return
        info = infos[0]
        old = z.read(info)
    assert len(fixed) == len(old) and info.compress_type == zipfile.ZIP_STORED, (len(fixed), len(old))
    off = info.header_offset
    assert data[off:off + 4] == b"PK\x03\x04"
    nlen, xlen = struct.unpack_from("<HH", data, off + 26)
    start = off + 30 + nlen + xlen
    assert bytes(data[start:start + len(old)]) == old
    data[start:start + len(old)] = fixed
    crc = zlib.crc32(fixed) & 0xFFFFFFFF
    flags = struct.unpack_from("<H", data, off + 6)[0]
    if flags & 8:   # CRC lives in the data descriptor after the data (torch's writer), local CRC field is 0
        dd = start + len(old)
        if data[dd:dd + 4] == b"PK\x07\x08":
            dd += 4
        assert struct.unpack_from("<I", data, dd)[0] == zlib.crc32(old) & 0xFFFFFFFF
        struct.pack_into("<I", data, dd, crc)
    else:
        struct.pack_into("<I", data, off + 14, crc)
    # central directory entry
    name = info.filename.encode()
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46:pos + 46 + n]) == name:
            struct.pack_into("<I", data, pos + 16, crc)
            break
        pos += 4
    open(path, "wb").write(bytes(data))


def save_zip(obj, path: str):
    torch.save(obj, path)
    _patch_zip_serialization_id(path, b"0" * 40)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def save_legacy(obj, path: str):
    """torch legacy (pre-1.6, non-zip) format, made byte-deterministic.

    torch names legacy storages by memory address and writes them in address order; here the storage keys
    are renamed "0", "1", ... in order of first use in the object pickle and the storages rewritten in
    that order (the layout torch.load expects: magic, protocol, sys_info, object, key list, then per key
    an int64 element count followed by the raw bytes).
    """
    import pickle
    import pickletools
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    up = io.BytesIO(data)
    bounds = []
    for _ in range(4):
        a = up.tell()
        for _op in pickletools.genops(up):   # walk one pickle to its STOP without executing it
            pass
        bounds.append((a, up.tell()))
    keys = pickle.load(up)
    itemsize = {}
    for v in obj.values():
        if isinstance(v, torch.Tensor):   # non-tensor entries (e.g. a step counter) have no storage
            st = v.untyped_storage()
            itemsize[str(st._cdata)] = v.element_size()
    blobs = {}
    for k in keys:
        n = struct.unpack("<q", up.read(8))[0]
        blobs[k] = struct.pack("<q", n) + up.read(n * itemsize[k])
    assert up.read() == b""
    a, b = bounds[3]
    objp = data[a:b]
    keyset = set(keys)
    order = []
    out = bytearray()
    last = 0
    for op, arg, pos in pickletools.genops(objp):
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8") and arg in keyset:
            if arg not in order:
                order.append(arg)
            new = str(order.index(arg)).encode()
            hdr = {"BINUNICODE": 5, "SHORT_BINUNICODE": 2, "BINUNICODE8": 9}[op.name]
            out += objp[last:pos] + b"X" + struct.pack("<I", len(new)) + new
            last = pos + hdr + len(arg.encode())
    out += objp[last:]
    assert sorted(order) == sorted(keys)
    new_keys = [str(j) for j in range(len(order))]
    result = (data[:bounds[2][1]] + bytes(out) + pickle.dumps(new_keys, protocol=2) +
              b"".join(blobs[k] for k in order))
    open(path, "wb").write(result)
    back = torch.load(path, map_location="cpu", weights_only=False)
    assert list(back) == list(obj) and all(
        torch.equal(back[k], obj[k]) if isinstance(obj[k], torch.Tensor) else back[k] == obj[k] for k in obj)


# ----------------------------------------------------------------------------------------------
# Synthetic street-scene frames
# ----------------------------------------------------------------------------------------------

def make_frame(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [3, h, w]: sky gradient, buildings, trees, road with lane marks, cars, sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * 0.45)
    t = (yy / max(horizon, 1))[..., None]
    sky = np.array([70, 130, 200]) * (1 - t) + np.array([200, 215, 230]) * t
    img[:] = sky
    # buildings
    x = 0
    while x < w:
        bw = int(rng.integers(max(3, w // 16), max(4, w // 5)))
        top = int(rng.integers(int(h * 0.08), horizon))
        col = rng.uniform(60, 170) + rng.normal(0, 12, 3)
        img[top:horizon + 2, x:x + bw] = col
        # windows
        for wy in range(top + 2, horizon - 1, max(2, h // 24)):
            for wx in range(x + 1, x + bw - 1, max(2, w // 48)):
                if rng.random() < 0.5:
                    img[wy:wy + max(1, h // 64), wx:wx + max(1, w // 128)] = col * 0.5
        x += bw + int(rng.integers(0, max(2, w // 32)))
    # road
    road_t = ((yy - horizon) / max(h - horizon, 1))[..., None]
    road = np.array([95, 92, 98]) + np.array([-25, -25, -20]) * road_t
    img = np.where((yy >= horizon)[..., None], road, img)
    # sidewalk strip
    img[horizon:horizon + max(1, h // 32)] = [150, 140, 135]
    # lane marks (perspective: converge to the vanishing point)
    cx = w / 2
    for r in range(horizon + 2, h):
        frac = (r - horizon) / (h - horizon)
        for lane in (-0.35, 0.35):
            xc = int(cx + lane * frac * w)
            half = max(0, int(frac * w / 200))
            if (r // max(2, h // 16)) % 2 == 0 and 0 <= xc < w:
                img[r, max(0, xc - half):xc + half + 1] = [235, 235, 225]
    # trees (green blobs)
    for _ in range(4):
        cy, cxx = rng.uniform(h * 0.2, horizon), rng.uniform(0, w)
        ry, rx = rng.uniform(h * 0.06, h * 0.15), rng.uniform(w * 0.02, w * 0.06)
        m = ((yy - cy) / ry) ** 2 + ((xx - cxx) / rx) ** 2 < 1
        img[m] = np.array([40, 110, 45]) + rng.normal(0, 15, (m.sum(), 3))
    # cars
    for _ in range(3):
        cw, ch = int(rng.uniform(w * 0.06, w * 0.14)), int(rng.uniform(h * 0.07, h * 0.14))
        x0 = int(rng.uniform(0, w - cw)); y0 = int(rng.uniform(horizon, h - ch))
        col = rng.choice([[180, 30, 30], [30, 50, 160], [220, 220, 220], [30, 30, 30]])
        img[y0:y0 + ch, x0:x0 + cw] = col
        img[y0 + ch // 5:y0 + ch // 2, x0 + cw // 6:x0 + cw - cw // 6] = [60, 80, 100]   # windows
    img += rng.normal(0, 5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


def write_png(path: str, chw: np.ndarray):
    c, h, w = chw.shape
    hwc = chw.transpose(1, 2, 0)
    raw = b"".join(b"\x00" + hwc[r].tobytes() for r in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
           chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    open(path, "wb").write(png)


# ----------------------------------------------------------------------------------------------
# Helpers for raw files + meta.json
# ----------------------------------------------------------------------------------------------

class Meta:
    def __init__(self, folder):
        self.folder = folder
        self.files = collections.OrderedDict()

    def raw(self, name, arr, dtype, desc):
        a = np.ascontiguousarray(arr).astype(dtype)
        a = a.astype(a.dtype.newbyteorder("<"))
        with open(os.path.join(self.folder, name), "wb") as f:
            f.write(a.tobytes())
        self.files[name] = {"shape": list(a.shape), "dtype": _dtname(a.dtype), "description": desc}

    def note(self, name, desc, **extra):
        self.files[name] = dict({"description": desc}, **extra)


def _dtname(dt):
    return {"f": "float", "i": "int", "u": "uint"}[dt.kind] + str(dt.itemsize * 8)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def routing_stats(res, cfg, probs_key="probs"):
    top = res["top2"].numpy()
    p = res[probs_key].numpy()
    srt = -np.sort(-p, axis=-1)
    stats = []
    for j, blk in enumerate(cfg.moe_blocks):
        pairs = {tuple(x) for x in top[j]}
        stats.append({
            "block": blk,
            "distinct_experts_used": int(len(np.unique(top[j]))),
            "distinct_first_choice": int(len(np.unique(top[j][:, 0]))),
            "distinct_top2_pairs": len(pairs),
            "min_margin_p2_minus_p3": float((srt[j, :, 1] - srt[j, :, 2]).min()),
            "median_margin_p2_minus_p3": float(np.median(srt[j, :, 1] - srt[j, :, 2])),
            "min_margin_p1_minus_p2": float((srt[j, :, 0] - srt[j, :, 1]).min()),
            "mean_top1_prob": float(srt[j, :, 0].mean()),
            "mean_top2_prob": float(srt[j, :, 1].mean()),
        })
    return stats


def block_stats(res):
    b = res["blocks"].numpy()
    return {"rms": [float(np.sqrt((x.astype(np.float64) ** 2).mean())) for x in b],
            "max_abs": [float(np.abs(x).max()) for x in b]}


# ----------------------------------------------------------------------------------------------
# Bundled demo model
# ----------------------------------------------------------------------------------------------

# Complete M³ViT task decoders (VisionTransformerUpHead, num_conv=4) for the Cityscapes task list:
# semseg (7 classes) then depth (1 channel), drawn by scripts/reference_heads.py's seeded generator.
BUNDLED_HEADS = (("semseg", 7), ("depth", 1))


def bundled_decoders(cfg):
    import reference_heads as rh
    rng = np.random.default_rng(SEED_BUNDLED + 2)
    out = collections.OrderedDict()
    for task, classes in BUNDLED_HEADS:
        head = rh.UpHead(cfg.embed_dim, classes, (cfg.height, cfg.width), patch=cfg.patch)
        for k, v in rh.seeded_state(rng, head).items():
            t = torch.from_numpy(np.asarray(v))
            out[f"module.decoders.{task}.{k}"] = t if k.endswith("num_batches_tracked") else t.half()
    return out


def make_bundled():
    cfg = ref.EDGE_MOE
    os.makedirs(MODELS, exist_ok=True)
    out_dir = os.path.join(FIX, "bundled")
    os.makedirs(out_dir, exist_ok=True)
    sd64 = make_backbone(cfg, SEED_BUNDLED)
    plain16 = to_torch(sd64, torch.float16)
    rng = np.random.default_rng(SEED_BUNDLED + 1)
    D = cfg.embed_dim
    decoders = bundled_decoders(cfg)
    ckpt = training_dict(plain16, decoders, torch.float16, 40, rng)
    model_path = os.path.join(MODELS, "m3vit-tiny-edge-moe.pth")
    save_zip(ckpt, model_path)

    frame = make_frame(cfg.height, cfg.width, SEED_DEMO_FRAME)
    frame.tofile(os.path.join(MODELS, "demo-frame.u8"))
    write_png(os.path.join(MODELS, "demo-frame.png"), frame)

    # Reference from what was written (reload to be sure the file round-trips).
    loaded = torch.load(model_path, map_location="cpu", weights_only=True)["state_dict"]
    plain = collections.OrderedDict((k[len("module.backbone."):], v) for k, v in loaded.items()
                                    if k.startswith("module.backbone."))
    assert all(torch.equal(plain[k], plain16[k]) for k in plain16)
    meta = Meta(out_dir)
    stats = {"config": cfg.as_json(), "tasks": {}}
    for t in range(cfg.tasks):
        r = ref.forward_training(plain, frame, cfg, t)
        out = r["out"].numpy()
        assert np.isfinite(out).all()
        meta.raw(f"ref_out_task{t}.f32", out, np.float32,
                 f"backbone output [tokens, D] after block {cfg.depth - 1} (no final norm), task {t}")
        meta.raw(f"ref_top2_task{t}.i32", r["top2"].numpy(), np.int32,
                 f"[moe block, token, 2] expert indices by probability descending, task {t}")
        meta.raw(f"ref_top2_prob_task{t}.f32", r["top2_prob"].numpy(), np.float32,
                 f"[moe block, token, 2] softmax probabilities of the chosen experts (not renormalised), task {t}")
        blocks = r["blocks"].numpy()
        if blocks.nbytes + out.nbytes + r["top2"].numpy().nbytes < 1.5e6:
            meta.raw(f"ref_blocks_task{t}.f32", blocks, np.float32, f"[block, token, D] x after each block, task {t}")
        stats["tasks"][str(t)] = {
            "out_mean": float(out.mean()), "out_std": float(out.std()), "out_max_abs": float(np.abs(out).max()),
            "blocks": block_stats(r), "routing": routing_stats(r, cfg)}
    # Sanity: the folded (kernel-semantics) float forward agrees with the training forward.
    folded = ref.fold(plain, cfg)
    for t in range(cfg.tasks):
        rk = ref.forward_kernel(folded, frame, cfg, t)
        rt = np.fromfile(os.path.join(out_dir, f"ref_out_task{t}.f32"), "<f4").reshape(cfg.tokens, D)
        diff = float(np.abs(rk["out"].numpy() - rt).max())
        stats["tasks"][str(t)]["folded_forward_max_abs_diff"] = diff
        stats["tasks"][str(t)]["folded_forward_top2_agreement"] = float(
            (rk["top2"].numpy() == np.fromfile(os.path.join(out_dir, f"ref_top2_task{t}.i32"), "<i4")
             .reshape(rk["top2"].shape)).mean())
        dq = ref.forward_kernel(ref.dequantized_folded(folded, cfg), frame, cfg, t)
        stats["tasks"][str(t)]["dequant_forward_max_abs_diff"] = float(np.abs(dq["out"].numpy() - rt).max())
        stats["tasks"][str(t)]["dequant_forward_top2_set_agreement_per_moe_block"] = [
            float((np.sort(dq["top2"].numpy()[j], -1) == np.sort(rk["top2"].numpy()[j], -1)).all(-1).mean())
            for j in range(len(cfg.moe_blocks))]
    ranges = {}
    for name, (arr, wi) in ref.kernel_arrays(folded, cfg, 0).items():
        lim = 2.0 ** (wi[1] - 1)
        ranges[name] = {"max_abs": float(np.abs(arr).max()), "type_limit": lim}
        assert np.abs(arr).max() < lim, (name, np.abs(arr).max(), lim)
    stats["kernel_array_ranges_task0"] = ranges
    manifest = {
        "description": "Reference outputs of models/m3vit-tiny-edge-moe.pth on models/demo-frame.u8, computed by "
                       "scripts/reference_m3vit.py (PyTorch float32 from the float16 weights upcast, training "
                       "semantics: input (b/255-mean)/std). Raw little-endian, C order, no header.",
        "model": "models/m3vit-tiny-edge-moe.pth", "model_sha256": sha256(model_path),
        "frame": "models/demo-frame.u8", "frame_sha256": sha256(os.path.join(MODELS, "demo-frame.u8")),
        "seed": SEED_BUNDLED, "frame_seed": SEED_DEMO_FRAME,
        "files": meta.files, "stats": stats,
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return stats, sd64


# ----------------------------------------------------------------------------------------------
# Tiny model
# ----------------------------------------------------------------------------------------------

# Exact half-step values of ap_fixed<16,2> (step 2^-14) planted in blocks.0.attn.qkv.weight row 0 so that
# round-half-even (AP_RND_CONV) and floor (AP_TRN) are both exercised on ties.
TIE_STEPS = [2.5, 3.5, -2.5, -3.5, 100.5, -101.5, 0.5, -0.5]


def make_tiny():
    cfg = ref.TINY
    d = os.path.join(FIX, "tiny")
    os.makedirs(os.path.join(d, "ep"), exist_ok=True)
    os.makedirs(os.path.join(d, "edge-moe"), exist_ok=True)
    sd64 = make_backbone(cfg, SEED_TINY)
    w = sd64["blocks.0.attn.qkv.weight"]
    for j, k in enumerate(TIE_STEPS):
        w[0, j] = k * 2.0 ** -14
    plain = to_torch(sd64, torch.float32)
    D = cfg.embed_dim
    rng = np.random.default_rng(SEED_TINY + 1)
    meta = Meta(d)
    names = list(plain.keys())

    # --- containers
    dec = {"module.decoders.semseg.conv.weight": torch.from_numpy(rng.normal(0, 0.05, (3, D, 1, 1))).float()}
    save_zip(training_dict(plain, dec, torch.float32, 40, rng), os.path.join(d, "model.pth"))
    meta.note("model.pth", "torch zip; training-style dict {'epoch': 40, 'state_dict': OrderedDict (with _metadata) "
              "of 'module.backbone.'+name plus 'module.decoders.semseg.conv.weight' [3,32,1,1], "
              "'optimizer': {'state': {int: {'momentum_buffer': tensor}}, 'param_groups': [...]}}; float32")
    save_zip(with_metadata(plain, ""), os.path.join(d, "plain.pth"))
    meta.note("plain.pth", "torch zip; top-level OrderedDict state_dict (with _metadata), plain names, float32")
    save_legacy(with_metadata(plain, ""), os.path.join(d, "legacy.pth"))
    meta.note("legacy.pth", "torch legacy (pre-1.6, non-zip) format of plain.pth's contents; float32")
    save_zip(collections.OrderedDict((k, v.half()) for k, v in plain.items()), os.path.join(d, "model_f16.pth"))
    meta.note("model_f16.pth", "torch zip; plain state_dict, float16 (values = float16(plain))")
    # expert parallel: rank r holds experts [2r, 2r+2) of every expert tensor
    half = cfg.experts // 2
    for r in range(2):
        sdr = collections.OrderedDict()
        for k, v in plain.items():
            if ".mlp.experts." in k:
                sdr[k] = v[r * half:(r + 1) * half].clone()
            elif r == 0:
                sdr[k] = v
        save_zip({"epoch": 40, "state_dict": collections.OrderedDict(("module.backbone." + k, v)
                                                                      for k, v in sdr.items())},
                 os.path.join(d, "ep", f"{r}.pth"))
    meta.note("ep/0.pth", "torch zip; {'epoch', 'state_dict' ('module.backbone.' prefixes)}: expert-parallel rank 0 "
              "of 2: every tensor, expert tensors (htoh4/h4toh weight+bias) hold experts 0..1 only")
    meta.note("ep/1.pth", "torch zip; same layout, rank 1: only the 4 expert tensors per MoE block, experts 2..3")
    from safetensors.torch import save_file
    save_file(collections.OrderedDict((k, v.contiguous()) for k, v in plain.items()),
              os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    meta.note("model.safetensors", "safetensors, plain names, F32")
    import h5py
    h5p = os.path.join(d, "model.h5")
    if os.path.exists(h5p):
        os.remove(h5p)
    gz = {"blocks.1.mlp.experts.htoh4.weight", "patch_embed.proj.weight"}
    with h5py.File(h5p, "w", track_order=True) as h:
        for k, v in plain.items():
            a = v.numpy()
            if k in gz:
                h.create_dataset(k.replace(".", "/"), data=a, chunks=tuple(max(1, s // 2) for s in a.shape),
                                 compression="gzip", compression_opts=4)
            else:
                h.create_dataset(k.replace(".", "/"), data=a)
    meta.note("model.h5", "HDF5, dataset path = name with '.'->'/', float32 little-endian; "
              "'blocks/1/mlp/experts/htoh4/weight' and 'patch_embed/proj/weight' chunked (half of each dim) + gzip 4")
    arrays = collections.OrderedDict((k, v.numpy()) for k, v in plain.items())
    np.savez(os.path.join(d, "model.npz"), **arrays)
    np.savez_compressed(os.path.join(d, "model_deflated.npz"), **arrays)
    meta.note("model.npz", "np.savez (stored), member '<name>.npy' per plain name, float32")
    meta.note("model_deflated.npz", "np.savez_compressed (deflate), same members")

    # --- frame and folded weights
    frame = make_frame(cfg.height, cfg.width, SEED_TINY_FRAME)
    meta.raw("frame.u8", frame, np.uint8, "input image bytes [3, H, W] (C, row, column)")
    folded = ref.fold(plain, cfg)
    em = os.path.join(d, "edge-moe")
    for f in os.listdir(em):
        os.remove(os.path.join(em, f))
    for k, v in folded.items():
        v.astype("<f4").tofile(os.path.join(em, f"{k}.float32.bin"))
    (frame.astype(np.float32) / 256.0).astype("<f4").tofile(os.path.join(em, "image.float32.bin"))
    rk0 = ref.forward_kernel(folded, frame, cfg, 0)
    rk0["out"].numpy().astype("<f4").tofile(os.path.join(em, f"l{cfg.depth - 1}_x_post_moe.float32.bin"))
    meta.note("edge-moe/", "Edge-MoE raw weight folder of the folded float32 weights ({stem}.float32.bin, raw LE "
              "float32, C order) incl. expert matrices; image.float32.bin = frame/256 [3,32,64]; "
              f"l{cfg.depth - 1}_x_post_moe.float32.bin = kernel-semantics float forward output, task 0 [9,32]")
    meta.raw("folded_patch_embed_weight.f32", folded["patch_embed_weight"], np.float32,
             "W*256/(255*std_c), float64 then rounded to float32 [D,3,p,p]")
    meta.raw("folded_patch_embed_bias.f32", folded["patch_embed_bias"], np.float32,
             "b - sum_{c,y,x} W*mean_c/std_c, float64 then rounded to float32 [D]")

    # --- references
    stats = {"tasks": {}}
    dq = ref.dequantized_folded(folded, cfg)
    for t in range(cfg.tasks):
        r = ref.forward_training(plain, frame, cfg, t)
        meta.raw(f"ref_out_task{t}.f32", r["out"].numpy(), np.float32,
                 f"training-semantics float32 forward output [tokens, D], task {t}")
        meta.raw(f"ref_top2_task{t}.i32", r["top2"].numpy(), np.int32,
                 f"[moe block, token, 2] expert indices, probability descending, task {t}")
        meta.raw(f"ref_top2_prob_task{t}.f32", r["top2_prob"].numpy(), np.float32,
                 f"[moe block, token, 2] chosen experts' softmax probabilities, task {t}")
        meta.raw(f"ref_blocks_task{t}.f32", r["blocks"].numpy(), np.float32,
                 f"[block, token, D] x after each block, task {t}")
        rk = ref.forward_kernel(folded, frame, cfg, t)
        meta.raw(f"ref_folded_out_task{t}.f32", rk["out"].numpy(), np.float32,
                 f"kernel-semantics float32 forward (input frame/256, folded float32 weights), task {t}")
        rq = ref.forward_kernel(dq, frame, cfg, t)
        meta.raw(f"ref_dequant_out_task{t}.f32", rq["out"].numpy(), np.float32,
                 f"kernel-semantics forward with every folded weight quantised (AP_RND_CONV, AP_SAT) to its kernel "
                 f"type and dequantised; activations float32; task {t}")
        meta.raw(f"ref_dequant_top2_task{t}.i32", rq["top2"].numpy(), np.int32,
                 f"[moe block, token, 2] routing of the dequantised forward, task {t}")
        stats["tasks"][str(t)] = {
            "out_std": float(r["out"].std()), "out_max_abs": float(r["out"].abs().max()),
            "blocks": block_stats(r), "routing": routing_stats(r, cfg),
            "folded_vs_training_max_abs_diff": float((rk["out"] - r["out"]).abs().max()),
            "dequant_vs_training_max_abs_diff": float((rq["out"] - r["out"]).abs().max()),
            "dequant_top2_agreement": float((rq["top2"] == r["top2"]).float().mean()),
        }

    # --- expected kernel bits, task 0
    ka = ref.kernel_arrays(folded, cfg, 0)
    types = {}
    for mode, prefix in (("rnd_conv_sat", "kernel_"), ("trn_wrap", "kernel_trn_wrap_")):
        for name, (arr, wi) in ka.items():
            raw = ref.quantize(arr, wi, mode)
            dt = np.int32 if wi[0] == 32 else np.int16
            ext = "i32" if wi[0] == 32 else "i16"
            mdesc = "AP_RND_CONV+AP_SAT" if mode == "rnd_conv_sat" else "AP_TRN+AP_WRAP"
            meta.raw(f"{prefix}{name}.{ext}", raw, dt,
                     f"raw ap_fixed<{wi[0]},{wi[1]}> ({mdesc}) of kernel argument {name}, task 0")
            types[name] = f"ap_fixed<{wi[0]},{wi[1]}>"
            if mode == "rnd_conv_sat":
                assert np.abs(arr).max() < 2.0 ** (wi[1] - 1), name

    qkv_q = ref.quantize(folded["l0_qkv_weight"][0, :len(TIE_STEPS)], ref.WT_LINEAR_T, "rnd_conv_sat")
    qkv_t = ref.quantize(folded["l0_qkv_weight"][0, :len(TIE_STEPS)], ref.WT_LINEAR_T, "trn_wrap")
    manifest = {
        "description": "Tiny seeded M³ViT (synthetic, not trained) in every supported container, with reference "
                       "outputs from scripts/reference_m3vit.py and the expected raw kernel arrays. Raw files are "
                       "little-endian, C order, no header.",
        "config": cfg.as_json(), "seed": SEED_TINY, "frame_seed": SEED_TINY_FRAME,
        "tensor_names": names,
        "tensor_shapes": {k: list(v.shape) for k, v in plain.items()},
        "conventions": {
            "normalisation": {"mean": ref.IMAGENET_MEAN, "std": ref.IMAGENET_STD,
                              "training_input": "(b/255 - mean_c)/std_c", "kernel_input": "b/256"},
            "folds": "computed in float64 from the float32 weights, rounded once to float32; pos_embed row 0 += "
                     "cls_token; gate transposed to [E, D]; Q,K,V = rows [0:D],[D:2D],[2D:3D] of qkv",
            "fold_precision_note": "folding the patch weight in float32 arithmetic instead (w * Float(256/(255*std))) "
                                   "differs from folded_patch_embed_weight.f32 by 1 ulp in many elements and changes "
                                   "a few raw kernel_patch_embed_weights values by 1 LSB (8 of 24576 at this seed); compare folds in "
                                   "double precision or allow +-1 LSB there",
            "quantisation": "raw = x*2^(W-I) in float64; AP_RND_CONV+AP_SAT: round half even then clamp; "
                            "AP_TRN+AP_WRAP: floor then wrap to W bits; applied to the float32 folded values",
            "kernel_types": types,
            "tie_values": {"tensor": "blocks.0.attn.qkv.weight", "row": 0, "columns": list(range(len(TIE_STEPS))),
                           "steps_of_2^-14": TIE_STEPS, "raw_rnd_conv": qkv_q.tolist(), "raw_trn": qkv_t.tolist()},
        },
        "files": meta.files, "stats": stats,
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return stats


def main():
    torch.manual_seed(0)
    tiny = make_tiny()
    bundled, _ = make_bundled()
    print(json.dumps({"tiny": tiny, "bundled": bundled}, indent=1))


if __name__ == "__main__":
    main()
