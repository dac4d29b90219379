"""Independent PyTorch reference of the M³ViT backbone as the Edge-MoE accelerator runs it.

Used only by scripts/make_fixtures.py to produce test fixtures; moepack itself never calls Python.

Conventions (all written from the M³ViT model description, not from any moepack code):

* State-dict names are the plain backbone names (no 'module.backbone.' prefix), e.g.
  ``blocks.1.mlp.experts.htoh4.weight`` [E, He, D].
* Training semantics: input bytes b (uint8 [3, H, W]) -> (b/255 - mean_c)/std_c (ImageNet statistics),
  conv p x p stride p, tokens in row-major patch order, cls token prepended, pos_embed added,
  blocks x += proj(attn(norm1(x))); x += mlp(norm2(x)), LayerNorm eps 1e-6, exact (erf) GELU.
  MoE: p = softmax(norm2(x) @ w_gate[task]) over all E experts, top-2 by torch.topk, output
  p[e1]*expert_e1 + p[e2]*expert_e2 (no renormalisation). Backbone output = x after the last block.
* Kernel semantics: input pixel = b/256 (ap_ufixed<8,0>), folded patch embedding, pos_embed row 0
  already includes the cls token, gate stored transposed [E, D].
* Folds are computed in float64 from the float32 weights and rounded once to float32.
* Quantisation to ap_fixed<W,I> (Vitis HLS ap_fixed semantics): raw = x * 2^(W-I);
  AP_RND_CONV + AP_SAT: round half to even, clamp to [-2^(W-1), 2^(W-1)-1];
  AP_TRN + AP_WRAP: floor, then wrap to W-bit two's complement.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Config:
    embed_dim: int
    depth: int
    heads: int
    moe_blocks: tuple
    experts: int
    expert_hidden: int
    mlp_hidden: int
    tasks: int
    patch: int
    in_chans: int
    height: int
    width: int
    top_k: int = 2

    @property
    def patches(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def tokens(self) -> int:
        return self.patches + 1

    @property
    def dense_blocks(self) -> tuple:
        return tuple(i for i in range(self.depth) if i not in self.moe_blocks)

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["moe_blocks"] = list(self.moe_blocks)
        d["patches"] = self.patches
        d["tokens"] = self.tokens
        d["layer_norm_eps"] = LN_EPS
        return d


EDGE_MOE = Config(embed_dim=192, depth=12, heads=3, moe_blocks=(1, 3, 5, 7, 9, 11), experts=16,
                  expert_hidden=384, mlp_hidden=768, tasks=2, patch=16, in_chans=3, height=128, width=256)
TINY = Config(embed_dim=32, depth=4, heads=2, moe_blocks=(1, 3), experts=4, expert_hidden=16,
              mlp_hidden=64, tasks=2, patch=16, in_chans=3, height=32, width=64)

# Kernel element types of profile edge-moe-zcu102: (W, I) of ap_fixed<W,I>.
FM_T = (32, 10)
WT_LINEAR_T = (16, 2)
WT_ATTN_BIAS_T = (16, 7)
WT_BIAS_T = (16, 5)
WT_NORM_T = (16, 5)
WT_PATCH_EMBED_T = (16, 0)


# ----------------------------------------------------------------------------------------------
# Forward pass (shared by training and kernel semantics: only the embedding differs)
# ----------------------------------------------------------------------------------------------

def _attention(h, qkv_w, qkv_b, proj_w, proj_b, heads):
    t, d = h.shape
    hd = d // heads
    qkv = h @ qkv_w.T + qkv_b                      # [T, 3D]
    q = qkv[:, 0:d].reshape(t, heads, hd).transpose(0, 1)      # [heads, T, hd]
    k = qkv[:, d:2 * d].reshape(t, heads, hd).transpose(0, 1)
    v = qkv[:, 2 * d:3 * d].reshape(t, heads, hd).transpose(0, 1)
    scores = (q @ k.transpose(1, 2)) * (hd ** -0.5)            # [heads, T, T]
    a = torch.softmax(scores, dim=-1)
    o = (a @ v).transpose(0, 1).reshape(t, d)                  # heads are contiguous slices of D
    return o @ proj_w.T + proj_b


def _mlp(h, w1, b1, w2, b2):
    return F.gelu(h @ w1.T + b1, approximate="none") @ w2.T + b2


def _moe(h, gate_ed, w1, b1, w2, b2, top_k):
    """gate_ed: [E, D]; w1 [E, He, D]; b1 [E, He]; w2 [E, D, He]; b2 [E, D]."""
    logits = h @ gate_ed.T                                      # [T, E]
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = torch.topk(probs, top_k, dim=-1)             # sorted descending
    out = torch.zeros_like(h)
    for k in range(top_k):
        for e in range(gate_ed.shape[0]):
            sel = top_i[:, k] == e
            if sel.any():
                y = _mlp(h[sel], w1[e], b1[e], w2[e], b2[e])
                out[sel] += top_p[sel, k:k + 1] * y
    return out, top_i, top_p, probs


def _blocks(x, blk, cfg: Config, task: int):
    """blk(i, name) -> tensor in kernel/plain form. Returns x, per-block x, top-2 idx, top-2 probs, all probs."""
    per_block, tops, topps, allps = [], [], [], []
    for i in range(cfg.depth):
        h = F.layer_norm(x, (cfg.embed_dim,), blk(i, "norm1_weight"), blk(i, "norm1_bias"), LN_EPS)
        x = x + _attention(h, blk(i, "qkv_weight"), blk(i, "qkv_bias"), blk(i, "attn_proj_weight"),
                           blk(i, "attn_proj_bias"), cfg.heads)
        h = F.layer_norm(x, (cfg.embed_dim,), blk(i, "norm2_weight"), blk(i, "norm2_bias"), LN_EPS)
        if i in cfg.moe_blocks:
            y, ti, tp, p = _moe(h, blk(i, f"w_gate_T_task{task}"), blk(i, "htoh4_weight"),
                                blk(i, "htoh4_bias"), blk(i, "h4toh_weight"), blk(i, "h4toh_bias"), cfg.top_k)
            tops.append(ti); topps.append(tp); allps.append(p)
        else:
            y = _mlp(h, blk(i, "fc1_weight"), blk(i, "fc1_bias"), blk(i, "fc2_weight"), blk(i, "fc2_bias"))
        x = x + y
        per_block.append(x.clone())
    return {
        "out": x,
        "blocks": torch.stack(per_block),
        "top2": torch.stack(tops).to(torch.int32),
        "top2_prob": torch.stack(topps),
        "probs": torch.stack(allps),
    }


def folded_name_map(cfg: Config, i: int, name: str) -> str:
    """Plain M³ViT state_dict name for an Edge-MoE per-block file stem (unfolded, except the gate transpose)."""
    table = {
        "norm1_weight": f"blocks.{i}.norm1.weight", "norm1_bias": f"blocks.{i}.norm1.bias",
        "norm2_weight": f"blocks.{i}.norm2.weight", "norm2_bias": f"blocks.{i}.norm2.bias",
        "qkv_weight": f"blocks.{i}.attn.qkv.weight", "qkv_bias": f"blocks.{i}.attn.qkv.bias",
        "attn_proj_weight": f"blocks.{i}.attn.proj.weight", "attn_proj_bias": f"blocks.{i}.attn.proj.bias",
        "fc1_weight": f"blocks.{i}.mlp.fc1.weight", "fc1_bias": f"blocks.{i}.mlp.fc1.bias",
        "fc2_weight": f"blocks.{i}.mlp.fc2.weight", "fc2_bias": f"blocks.{i}.mlp.fc2.bias",
        "htoh4_weight": f"blocks.{i}.mlp.experts.htoh4.weight", "htoh4_bias": f"blocks.{i}.mlp.experts.htoh4.bias",
        "h4toh_weight": f"blocks.{i}.mlp.experts.h4toh.weight", "h4toh_bias": f"blocks.{i}.mlp.experts.h4toh.bias",
    }
    return table[name]


def forward_training(sd: dict, image_u8: np.ndarray, cfg: Config, task: int) -> dict:
    """Training-semantics float32 forward from an unfolded plain state_dict (tensors upcast to float32)."""
    g = {k: v.to(torch.float32) for k, v in sd.items()}
    img = torch.from_numpy(image_u8.astype(np.float32))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    inp = (img / 255.0 - mean) / std
    emb = F.conv2d(inp[None], g["patch_embed.proj.weight"], g["patch_embed.proj.bias"], stride=cfg.patch)
    tok = emb[0].flatten(1).T                                   # [patches, D], row-major patch order
    x = torch.cat([g["cls_token"][0], tok], dim=0) + g["pos_embed"][0]

    def blk(i, name):
        if name.startswith("w_gate_T_task"):
            t = int(name[len("w_gate_T_task"):])
            return g[f"blocks.{i}.mlp.gate.{t}.w_gate"].T
        return g[folded_name_map(cfg, i, name)]

    with torch.no_grad():
        return _blocks(x, blk, cfg, task)


def forward_kernel(folded: dict, image_u8: np.ndarray, cfg: Config, task: int) -> dict:
    """Kernel-semantics float32 forward from Edge-MoE-folder-form arrays (input = byte/256)."""
    g = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in folded.items()}
    inp = torch.from_numpy(image_u8.astype(np.float32) / 256.0)
    emb = F.conv2d(inp[None], g["patch_embed_weight"], g["patch_embed_bias"], stride=cfg.patch)
    tok = emb[0].flatten(1).T
    x = torch.cat([torch.zeros(1, cfg.embed_dim), tok], dim=0) + g["pos_embed"]

    def blk(i, name):
        return g[f"l{i}_{name}"]

    with torch.no_grad():
        return _blocks(x, blk, cfg, task)


# ----------------------------------------------------------------------------------------------
# Folds: plain state_dict -> Edge-MoE folder arrays (float32)
# ----------------------------------------------------------------------------------------------

def fold(sd: dict, cfg: Config) -> dict:
    """Return {edge-moe file stem: float32 ndarray} (without the image)."""
    f64 = {k: v.detach().to(torch.float64).numpy() for k, v in sd.items()}
    mean = np.array(IMAGENET_MEAN, dtype=np.float64)
    std = np.array(IMAGENET_STD, dtype=np.float64)
    w = f64["patch_embed.proj.weight"]                             # [D, 3, p, p]
    b = f64["patch_embed.proj.bias"]
    scale = 256.0 / (255.0 * std)                                  # kernel pixel u = b/256 -> b/255 = u*256/255
    w_f = w * scale[None, :, None, None]
    b_f = b - np.einsum("ocyx,c->o", w, mean / std)
    pos = f64["pos_embed"][0].copy()
    pos[0] += f64["cls_token"][0, 0]
    out = {"patch_embed_weight": w_f, "patch_embed_bias": b_f, "pos_embed": pos}
    for i in range(cfg.depth):
        for stem in ("norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias", "qkv_weight", "qkv_bias",
                     "attn_proj_weight", "attn_proj_bias"):
            out[f"l{i}_{stem}"] = f64[folded_name_map(cfg, i, stem)]
        if i in cfg.moe_blocks:
            for t in range(cfg.tasks):
                out[f"l{i}_w_gate_T_task{t}"] = f64[f"blocks.{i}.mlp.gate.{t}.w_gate"].T
            for stem in ("htoh4_weight", "htoh4_bias", "h4toh_weight", "h4toh_bias"):
                out[f"l{i}_{stem}"] = f64[folded_name_map(cfg, i, stem)]
        else:
            for stem in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
                out[f"l{i}_{stem}"] = f64[folded_name_map(cfg, i, stem)]
    return {k: np.ascontiguousarray(v).astype(np.float32) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Kernel arrays (argument name -> float32 array in the kernel's C shape, element type)
# ----------------------------------------------------------------------------------------------

def kernel_arrays(folded: dict, cfg: Config, task: int) -> dict:
    """{kernel argument: (float32 ndarray in C shape, (W, I))} for one task's gate."""
    L, moe, dense = cfg.depth, cfg.moe_blocks, cfg.dense_blocks
    attn_w = np.stack([np.stack([folded[f"l{i}_qkv_weight"][0:cfg.embed_dim],
                                 folded[f"l{i}_qkv_weight"][cfg.embed_dim:2 * cfg.embed_dim],
                                 folded[f"l{i}_qkv_weight"][2 * cfg.embed_dim:],
                                 folded[f"l{i}_attn_proj_weight"]]) for i in range(L)])
    attn_b = np.stack([np.stack([folded[f"l{i}_qkv_bias"][0:cfg.embed_dim],
                                 folded[f"l{i}_qkv_bias"][cfg.embed_dim:2 * cfg.embed_dim],
                                 folded[f"l{i}_qkv_bias"][2 * cfg.embed_dim:],
                                 folded[f"l{i}_attn_proj_bias"]]) for i in range(L)])
    st = lambda stem, blocks: np.stack([folded[f"l{i}_{stem}"] for i in blocks])
    arrays = {
        "patch_embed_weights": (folded["patch_embed_weight"], WT_PATCH_EMBED_T),
        "patch_embed_bias": (folded["patch_embed_bias"], WT_BIAS_T),
        "pos_embed": (folded["pos_embed"], FM_T),
        "attn_weights": (attn_w, WT_LINEAR_T),
        "attn_bias": (attn_b, WT_ATTN_BIAS_T),
        "moe_w_gate": (st(f"w_gate_T_task{task}", moe), WT_LINEAR_T),
        "moe_weights_l1": (st("htoh4_weight", moe), WT_LINEAR_T),
        "moe_bias_l1": (st("htoh4_bias", moe), WT_BIAS_T),
        "moe_weights_l2": (st("h4toh_weight", moe), WT_LINEAR_T),
        "moe_bias_l2": (st("h4toh_bias", moe), WT_BIAS_T),
        "vit_weights_l1": (st("fc1_weight", dense), WT_LINEAR_T),
        "vit_bias_l1": (st("fc1_bias", dense), WT_BIAS_T),
        "vit_weights_l2": (st("fc2_weight", dense), WT_LINEAR_T),
        "vit_bias_l2": (st("fc2_bias", dense), WT_BIAS_T),
        "norm_weights": (np.stack([np.stack([folded[f"l{i}_norm1_weight"], folded[f"l{i}_norm2_weight"]])
                                   for i in range(L)]), WT_NORM_T),
        "norm_bias": (np.stack([np.stack([folded[f"l{i}_norm1_bias"], folded[f"l{i}_norm2_bias"]])
                                for i in range(L)]), WT_BIAS_T),
    }
    return {k: (np.ascontiguousarray(v, dtype=np.float32), t) for k, (v, t) in arrays.items()}


# ----------------------------------------------------------------------------------------------
# ap_fixed quantisation
# ----------------------------------------------------------------------------------------------

def quantize(x: np.ndarray, wi: tuple, mode: str = "rnd_conv_sat") -> np.ndarray:
    """Raw two's-complement integers (int64) of ap_fixed<W,I> for float values x."""
    W, I = wi
    scaled = np.asarray(x, dtype=np.float64) * math.ldexp(1.0, W - I)   # exact for float32 inputs
    lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    if mode == "rnd_conv_sat":
        return np.clip(np.rint(scaled), lo, hi).astype(np.int64)
    if mode == "trn_wrap":
        r = np.floor(scaled).astype(np.int64)
        m = 1 << W
        r = np.mod(r, m)
        return np.where(r > hi, r - m, r).astype(np.int64)
    raise ValueError(mode)


def dequantize(raw: np.ndarray, wi: tuple) -> np.ndarray:
    W, I = wi
    return (raw.astype(np.float64) * math.ldexp(1.0, -(W - I))).astype(np.float32)


def dequantized_folded(folded: dict, cfg: Config) -> dict:
    """Every folded kernel weight quantised (AP_RND_CONV, AP_SAT) to its kernel type and dequantised."""
    types = {"patch_embed_weight": WT_PATCH_EMBED_T, "patch_embed_bias": WT_BIAS_T, "pos_embed": FM_T}
    for i in range(cfg.depth):
        types.update({f"l{i}_norm1_weight": WT_NORM_T, f"l{i}_norm2_weight": WT_NORM_T,
                      f"l{i}_norm1_bias": WT_BIAS_T, f"l{i}_norm2_bias": WT_BIAS_T,
                      f"l{i}_qkv_weight": WT_LINEAR_T, f"l{i}_attn_proj_weight": WT_LINEAR_T,
                      f"l{i}_qkv_bias": WT_ATTN_BIAS_T, f"l{i}_attn_proj_bias": WT_ATTN_BIAS_T})
        if i in cfg.moe_blocks:
            for t in range(cfg.tasks):
                types[f"l{i}_w_gate_T_task{t}"] = WT_LINEAR_T
            types.update({f"l{i}_htoh4_weight": WT_LINEAR_T, f"l{i}_h4toh_weight": WT_LINEAR_T,
                          f"l{i}_htoh4_bias": WT_BIAS_T, f"l{i}_h4toh_bias": WT_BIAS_T})
        else:
            types.update({f"l{i}_fc1_weight": WT_LINEAR_T, f"l{i}_fc2_weight": WT_LINEAR_T,
                          f"l{i}_fc1_bias": WT_BIAS_T, f"l{i}_fc2_bias": WT_BIAS_T})
    assert set(types) == set(folded), set(types) ^ set(folded)
    return {k: dequantize(quantize(v, types[k]), types[k]) for k, v in folded.items()}
