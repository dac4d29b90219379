#!/usr/bin/env python3
"""Makes the small checkpoint fixtures for Tests/CheckpointTests (seeded; run with /work/venv/bin/python).

Writes Tests/Fixtures/checkpoint/: torch.save zip and legacy files, deflated / zip64 / corrupted /
truncated variants, a training-style checkpoint, expert-parallel folders, hostile pickles, a tiny
Edge-MoE-style raw float32 folder and an npz, plus expected values as raw little-endian float32
(`.f32`) / raw stored bytes (`.raw`) and `expected.json` (names, dtypes, shapes, skipped names).
"""
import io, json, os, pickle, shutil, struct, sys, zipfile
from collections import OrderedDict

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "checkpoint")
DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64"}


def out(*p):
    path = os.path.join(ROOT, *p)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_expected(tag, sd, raw_names=()):
    tensors = []
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        tensors.append({"name": k, "dtype": DT[v.dtype], "shape": list(v.shape)})
        with open(out("expected", tag, k + ".f32"), "wb") as f:
            f.write(v.detach().float().contiguous().numpy().astype("<f4").tobytes())
        if k in raw_names:
            c = v.detach().contiguous()
            b = c.view(torch.int16).numpy().tobytes() if c.dtype == torch.bfloat16 else c.numpy().tobytes()
            with open(out("expected", tag, k + ".raw"), "wb") as f:
                f.write(b)
    return tensors


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hostile_fixtures import DATE  # noqa: E402  (shared determinism helpers)
from make_fixtures import save_legacy  # noqa: E402  (legacy format with stable storage keys and order)
from torch_pickle_scan import load_storage_refs  # noqa: E402  (non-executing data.pkl scan)


def writestr(z, name, data, compress_type=None):
    """zipfile.writestr with a fixed timestamp (the default is the current time)."""
    info = zipfile.ZipInfo(name, DATE)
    info.compress_type = z.compression if compress_type is None else compress_type
    z.writestr(info, data)

def rezip(src, dst, compression, zip64=False):
    """Rewrites every record of a torch zip with the given compression (optionally forcing zip64)."""
    old = zipfile.ZIP64_LIMIT
    if zip64:
        zipfile.ZIP64_LIMIT = 16  # every record > 16 bytes gets zip64 extras; EOCD gets zip64 records
    try:
        with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", compression=compression) as zo:
            for info in zi.infolist():
                writestr(zo, info.filename, zi.read(info.filename), compress_type=compression)
    finally:
        zipfile.ZIP64_LIMIT = old


def flip_record_byte(path, record):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(record)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        nlen, xlen = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + nlen + xlen
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    torch.manual_seed(20240601)
    exp = {}

    # --- basic state_dict: module tensors + dtypes + non-contiguous views ---
    m = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        m(torch.randn(4, 5))  # BatchNorm1d in train mode updates running stats
    sd = m.state_dict()  # OrderedDict with a _metadata attribute
    base = torch.randn(4, 5)
    sd["half"] = torch.randn(2, 3).half()
    sd["bf16"] = torch.randn(3).bfloat16()
    sd["f64"] = torch.randn(2, 2, dtype=torch.float64)
    sd["transposed"] = torch.randn(3, 4).t()  # shape [4,3], stride (1,4)
    sd["sliced"] = base[1:3, 2:5]  # storage offset 7, stride (5,1)
    sd["sliced_t"] = base[:, ::2].t()  # shape [3,4], stride (2,5), shares base's storage
    sd["step"] = 5  # a non-tensor value inside the state_dict
    torch.save(sd, out("basic_zip.pth"))
    save_legacy(sd, out("basic_legacy.pth"))
    rezip(out("basic_zip.pth"), out("basic_deflated.pth"), zipfile.ZIP_DEFLATED)
    rezip(out("basic_zip.pth"), out("basic_zip64.pth"), zipfile.ZIP_STORED, zip64=True)
    exp["basic"] = {"tensors": write_expected("basic", sd, raw_names=("half", "bf16", "sliced_t")),
                    "skipped": ["step", "_metadata"]}
    # Corrupt one storage record: the record holding 'half'.
    with zipfile.ZipFile(out("basic_zip.pth")) as z:
        names = z.namelist()
    prefix = [n for n in names if n.endswith("data.pkl")][0][: -len("data.pkl")]
    half_key = storage_key(out("basic_zip.pth"), "half")
    shutil.copy(out("basic_zip.pth"), out("basic_badcrc.pth"))
    flip_record_byte(out("basic_badcrc.pth"), prefix + "data/" + half_key)
    exp["basic"]["badcrc_record"] = prefix + "data/" + half_key
    with open(out("basic_zip.pth"), "rb") as f:
        data = f.read()
    with open(out("truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])

    # --- training checkpoint ---
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    tsd = net.state_dict()
    ckpt = {"epoch": 7, "state_dict": tsd, "optimizer": opt.state_dict(), "best_acc": 0.5}
    torch.save(ckpt, out("training.pth"))
    exp["training"] = {"tensors": write_expected("training", tsd), "skipped": ["epoch", "optimizer", "best_acc", "_metadata"]}
    # Corrupt every storage record that belongs to the optimizer only.
    sd_keys = {storage_key(out("training.pth"), k, where="state_dict") for k in tsd}
    with zipfile.ZipFile(out("training.pth")) as z:
        tprefix = [n for n in z.namelist() if n.endswith("data.pkl")][0][: -len("data.pkl")]
        recs = [n for n in z.namelist() if n.startswith(tprefix + "data/")]
    opt_recs = [r for r in recs if r[len(tprefix + "data/"):] not in sd_keys]
    assert opt_recs
    shutil.copy(out("training.pth"), out("training_badopt.pth"))
    for r in opt_recs:
        flip_record_byte(out("training_badopt.pth"), r)
    exp["training"]["optimizer_records"] = len(opt_recs)

    # --- expert-parallel folders ---
    w0 = torch.randn(2, 3, 4)
    w1 = torch.randn(2, 3, 4)
    shared = torch.randn(5)
    torch.save({"blocks.1.mlp.experts.w": w0, "blocks.1.norm.weight": shared}, out("ep", "0.pth"))
    save_legacy({"blocks.1.mlp.experts.w": w1}, out("ep", "1.pth"))
    exp["ep"] = {"tensors": write_expected("ep", {"blocks.1.mlp.experts.w": torch.cat([w0, w1]), "blocks.1.norm.weight": shared})}
    torch.save({"w": w0}, out("ep_missing", "0.pth"))
    torch.save({"w": w1}, out("ep_missing", "2.pth"))
    torch.save({"w": w0}, out("ep_badshape", "0.pth"))
    torch.save({"w": torch.randn(2, 3, 5)}, out("ep_badshape", "1.pth"))

    # --- hostile pickles (never unpickled here) ---
    class EvilSystem:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    class EvilEval:
        def __reduce__(self):
            return (eval, ("__import__('os').system('echo pwned')",))

    def torch_like_zip(path, pkl):
        with zipfile.ZipFile(path, "w") as z:
            writestr(z, "evil/data.pkl", pkl)
            writestr(z, "evil/byteorder", "little")
            writestr(z, "evil/version", "3\n")

    torch_like_zip(out("evil_system.pth"), pickle.dumps({"w": EvilSystem()}, protocol=2))
    torch_like_zip(out("evil_eval.pth"), pickle.dumps({"w": EvilEval()}, protocol=4))
    legacy = b"".join([pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                       pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
                       pickle.dumps({"w": EvilSystem()}, protocol=2), pickle.dumps([], protocol=2)])
    with open(out("evil_legacy.pth"), "wb") as f:
        f.write(legacy)

    # --- tiny Edge-MoE-style folder: D=4, 3x2x4 image, 2x2 patches, 3 tokens, dense l0, MoE l1 ---
    rng = np.random.default_rng(7)
    D, E, HM, HX = 4, 2, 8, 6
    shapes = {"image": [3, 2, 4], "patch_embed_weight": [D, 3, 2, 2], "patch_embed_bias": [D], "pos_embed": [3, D]}
    for i in (0, 1):
        for n in ("norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias", "attn_proj_bias"):
            shapes[f"l{i}_{n}"] = [D]
        shapes[f"l{i}_qkv_weight"] = [3 * D, D]
        shapes[f"l{i}_qkv_bias"] = [3 * D]
        shapes[f"l{i}_attn_proj_weight"] = [D, D]
    shapes.update({"l0_fc1_weight": [HM, D], "l0_fc1_bias": [HM], "l0_fc2_weight": [D, HM], "l0_fc2_bias": [D],
                   "l1_w_gate_T_task0": [E, D], "l1_w_gate_T_task1": [E, D], "l1_htoh4_bias": [E, HX],
                   "l1_h4toh_bias": [E, D], "l1_htoh4_weight": [E, HX, D], "l1_h4toh_weight": [E, D, HX],
                   "l1_x_post_moe": [3, D]})
    for name, shp in shapes.items():
        rng.standard_normal(shp).astype("<f4").tofile(out("edge", name + ".float32.bin"))
    rng.standard_normal(5).astype("<f4").tofile(out("edge", "mystery_thing.float32.bin"))
    with open(out("edge", "README.txt"), "w") as f:
        f.write("tiny Edge-MoE-style folder for tests\n")
    exp["edge"] = {"tensors": [{"name": k, "dtype": "F32", "shape": v} for k, v in shapes.items()],
                   "skipped": ["README.txt", "mystery_thing"]}

    # --- npz (deflated, one Fortran-order array) ---
    a = np.arange(6, dtype="<f4").reshape(2, 3) * 0.5
    b = np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4) - 3.25)
    np.savez_compressed(out("tiny.npz"), a=a, b=b)
    for k, v in (("a", a), ("b", b)):
        with open(out("expected", "npz", k + ".f32"), "wb") as f:
            f.write(np.ascontiguousarray(v).astype("<f4").tobytes())
    exp["npz"] = {"tensors": [{"name": "a", "dtype": "F32", "shape": [2, 3]}, {"name": "b", "dtype": "F64", "shape": [3, 4]}]}

    with open(out("expected.json"), "w") as f:
        json.dump(exp, f, indent=1, sort_keys=True)
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(ROOT) for n in ns)
    print(f"fixtures: {total} bytes")


def storage_key(path, name, where=None):
    """Storage key of tensor `name` (inside top-level dict `where` if given), via a non-executing scan."""
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        obj = load_storage_refs(z.read(pkl))
    if where:
        obj = obj[where]
    return obj[name]


if __name__ == "__main__":
    main()
