"""Independent PyTorch reference of M³ViT's task decoders (VisionTransformerUpHead), eval mode.

Used only by scripts/make_fixtures.py and scripts/make_heads_reference.py to produce fixtures;
moepack itself never calls Python.

Written from the M³ViT model description (models/vit_up_head.py, models/models.py,
utils/common_config.py and the configs), not from any moepack code:

* One decoder per task, saved under ``decoders.<task>.`` in the order of the config's task list.
* Input: the backbone's tokens [N, T, D] (x after the last block, no final norm). When T % 48 != 0 the
  first (cls) token is dropped; then the head's own LayerNorm (eps 1e-6); tokens -> [N, D, H/16, W/16]
  (token order row-major over the patch grid).
* num_conv=4, num_upsampe_layer=4: four times 3x3 conv ``conv_i`` (padding 1) -> BatchNorm ``syncbn_fc_i``
  (eval: running statistics, eps 1e-5) -> ReLU, a bilinear x2 (align_corners=False) after the first three;
  then the 1x1 ``conv_4`` and a last bilinear x2.
* num_conv=2: ``conv_0`` (3x3 padding 1, or 1x1 when conv3x3_conv1x1 is False) -> ``syncbn_fc_0`` -> ReLU,
  [num_upsampe_layer=2: bilinear to size W*4 (an int size: both sides become W*4)], 1x1 ``conv_1``, bilinear
  to img_size.
* The multi-task model resizes every decoder output to the input size with F.interpolate(mode='bilinear')
  (align_corners left at its default, False).
* ``channels`` is 256 in M³ViT; the tiny fixtures use fewer to stay small (same structure).
"""
from __future__ import annotations

import collections

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5
LN_EPS = 1e-6


class UpHead(nn.Module):
    def __init__(self, embed_dim, num_classes, img_size, patch=16, channels=256, num_conv=4,
                 num_upsampe_layer=4, conv3x3_conv1x1=True):
        super().__init__()
        self.img_size = tuple(img_size)
        self.h, self.w = img_size[0] // patch, img_size[1] // patch
        self.num_conv, self.num_upsampe_layer = num_conv, num_upsampe_layer
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        if num_conv == 4:
            self.conv_0 = nn.Conv2d(embed_dim, channels, 3, 1, 1)
            self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
            self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
            self.conv_3 = nn.Conv2d(channels, channels, 3, 1, 1)
            self.conv_4 = nn.Conv2d(channels, num_classes, 1, 1)
            for i in range(4):
                setattr(self, f"syncbn_fc_{i}", nn.BatchNorm2d(channels, eps=BN_EPS))
        elif num_conv == 2:
            self.conv_0 = (nn.Conv2d(embed_dim, channels, 3, 1, 1) if conv3x3_conv1x1
                           else nn.Conv2d(embed_dim, channels, 1, 1))
            self.conv_1 = nn.Conv2d(channels, num_classes, 1, 1)
            self.syncbn_fc_0 = nn.BatchNorm2d(channels, eps=BN_EPS)
        else:
            raise ValueError(num_conv)

    @staticmethod
    def up2(x):
        return F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=False)

    def forward(self, x):
        if x.shape[1] % 48 != 0:
            x = x[:, 1:]
        x = self.norm(x)
        n, hw, c = x.shape
        x = x.transpose(1, 2).reshape(n, c, self.h, self.w)
        if self.num_conv == 4:
            for i in range(4):
                x = F.relu(getattr(self, f"syncbn_fc_{i}")(getattr(self, f"conv_{i}")(x)))
                if i < 3:
                    x = self.up2(x)
            return self.up2(self.conv_4(x))
        x = F.relu(self.syncbn_fc_0(self.conv_0(x)))
        if self.num_upsampe_layer == 2:
            x = F.interpolate(x, size=x.shape[-1] * 4, mode="bilinear", align_corners=False)
        x = self.conv_1(x)
        return F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False)


def model_output(head: UpHead, tokens: torch.Tensor, out_size) -> torch.Tensor:
    """What MultiTaskModel returns for one task: the decoder output resized to the input size."""
    return F.interpolate(head(tokens), out_size, mode="bilinear")


def seeded_state(rng: np.random.Generator, head: UpHead) -> "collections.OrderedDict[str, np.ndarray]":
    """Float64 values for every tensor of ``head`` (He-normal convs, BatchNorm with non-trivial running
    statistics: gamma ~ 1 ± 0.15, beta ± 0.1, running mean ± 0.3, running var 0.5..3)."""
    sd = collections.OrderedDict()
    for k, v in head.state_dict().items():
        shape = tuple(v.shape)
        if k == "norm.weight":
            a = rng.normal(1.0, 0.1, shape)
        elif k == "norm.bias":
            a = rng.normal(0.0, 0.05, shape)
        elif k.startswith("conv_") and k.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            a = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif k.startswith("conv_") and k.endswith(".bias"):
            a = rng.normal(0.0, 0.05, shape)
        elif k.endswith(".weight"):
            a = rng.normal(1.0, 0.15, shape)
        elif k.endswith(".bias"):
            a = rng.normal(0.0, 0.1, shape)
        elif k.endswith(".running_mean"):
            a = rng.normal(0.0, 0.3, shape)
        elif k.endswith(".running_var"):
            a = rng.uniform(0.5, 3.0, shape)
        elif k.endswith(".num_batches_tracked"):
            a = np.array(1000 + int(rng.integers(0, 1000)), dtype=np.int64)
        else:
            raise KeyError(k)
        sd[k] = a
    return sd


def load(head: UpHead, sd) -> UpHead:
    """Loads float64/float16 numpy or torch values into ``head`` (float32 parameters) and sets eval mode."""
    t = collections.OrderedDict()
    for k, v in sd.items():
        v = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
        t[k] = v.long() if k.endswith("num_batches_tracked") else v.float()
    head.load_state_dict(t)
    return head.eval()
