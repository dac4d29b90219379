#!/usr/bin/env python3
"""Writes the PNG frame fixtures used by Tests/InferenceTests/FramesTests.swift.

Run: /work/venv/bin/python scripts/make_frame_fixtures.py  (seeded, deterministic output)

Output folder Tests/Fixtures/frames/:
  small_rgb8.png, small_rgba8.png, small_gray8.png, small_rgb16.png, small_palette.png
      6x4 (W x H) frames; each has <name>.expected.u8 = uint8 [3,4,6] (channel, row, column):
      RGBA -> alpha dropped, grey -> replicated, 16-bit -> high byte, palette -> expanded.
  palette_index_past_plte.png, palette4_index_past_plte.png
      6x4 palette frames (8-bit and 4-bit indices) whose PLTE has 5 entries while pixel (x=4, y=2)
      holds index 5 (and, 8-bit, pixel (5, 3) index 200): an error by the PNG spec's PLTE rule
      (an index must be below the entry count). Fixed bytes, no random draws.
  big_rgb8.png       128x64 (W x H) RGB frame (random bytes).
  big_to_32x64.expected.u8, big_to_48x80.expected.u8
      uint8 [3,H,W] area-filter resizes of big_rgb8.png to H x W = 32x64 and 48x80, computed
      independently with numpy: coverage matrices with exact integer overlaps
      (source pixel r spans [r*H, (r+1)*H), output i spans [i*h, (i+1)*h) in units of 1/(H) pixel),
      value = round_half_up(sum(coverage * value) / (h*w)).
PNG files are written by hand (zlib + struct), filter type 0, no interlace, no gAMA/sRGB chunk.
"""
import os
import struct
import zlib

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "frames")


def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path, rows, width, height, bit_depth, color_type, palette=None):
    """rows: list of bytes objects (one per image row, already packed samples)."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette is not None:
        body += chunk(b"PLTE", palette)
    body += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(body)


def coverage(src, dst):
    """[dst, src] integer overlaps of output intervals with source pixels, scaled by dst."""
    m = np.zeros((dst, src), dtype=np.int64)
    for i in range(dst):
        lo, hi = i * src, (i + 1) * src
        for r in range(src):
            a, b = max(r * dst, lo), min((r + 1) * dst, hi)
            if b > a:
                m[i, r] = b - a
    return m


def area_resize(chw, H, W):
    c, h, w = chw.shape
    wy, wx = coverage(h, H), coverage(w, W)
    num = np.einsum("ir,crx,jx->cij", wy, chw.astype(np.int64), wx)
    den = h * w
    return ((2 * num + den) // (2 * den)).astype(np.uint8)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    h, w = 4, 6
    hwc = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    chw = hwc.transpose(2, 0, 1).copy()

    write_png(os.path.join(OUT, "small_rgb8.png"), [hwc[r].tobytes() for r in range(h)], w, h, 8, 2)
    chw.tofile(os.path.join(OUT, "small_rgb8.expected.u8"))

    alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
    rgba = np.concatenate([hwc, alpha], axis=2)
    write_png(os.path.join(OUT, "small_rgba8.png"), [rgba[r].tobytes() for r in range(h)], w, h, 8, 6)
    chw.tofile(os.path.join(OUT, "small_rgba8.expected.u8"))

    grey = hwc[:, :, 0]
    write_png(os.path.join(OUT, "small_gray8.png"), [grey[r].tobytes() for r in range(h)], w, h, 8, 0)
    np.stack([grey, grey, grey]).tofile(os.path.join(OUT, "small_gray8.expected.u8"))

    low = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint16)
    hwc16 = (hwc.astype(np.uint16) << 8) | low
    write_png(os.path.join(OUT, "small_rgb16.png"), [hwc16[r].astype(">u2").tobytes() for r in range(h)], w, h, 16, 2)
    chw.tofile(os.path.join(OUT, "small_rgb16.expected.u8"))

    pal = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, size=(h, w), dtype=np.uint8)
    write_png(os.path.join(OUT, "small_palette.png"), [idx[r].tobytes() for r in range(h)], w, h, 8, 3,
              palette=pal.tobytes())
    pal[idx].transpose(2, 0, 1).copy().tofile(os.path.join(OUT, "small_palette.expected.u8"))

    write_bad_palettes()

    bh, bw = 64, 128
    big = rng.integers(0, 256, size=(bh, bw, 3), dtype=np.uint8)
    write_png(os.path.join(OUT, "big_rgb8.png"), [big[r].tobytes() for r in range(bh)], bw, bh, 8, 2)
    bchw = big.transpose(2, 0, 1).copy()
    bchw.tofile(os.path.join(OUT, "big_rgb8.expected.u8"))
    area_resize(bchw, 32, 64).tofile(os.path.join(OUT, "big_to_32x64.expected.u8"))
    area_resize(bchw, 48, 80).tofile(os.path.join(OUT, "big_to_48x80.expected.u8"))


def write_bad_palettes():
    """Palette frames with an index past the PLTE chunk's 5 entries (written after the random
    fixtures and from no random draws, so those stay byte-identical)."""
    h, w = 4, 6
    pal = bytes(range(15))  # 5 RGB entries
    idx = np.array([[(x + y) % 5 for x in range(w)] for y in range(h)], dtype=np.uint8)
    idx[2, 4] = 5
    bad8 = idx.copy()
    bad8[3, 5] = 200
    write_png(os.path.join(OUT, "palette_index_past_plte.png"), [bad8[r].tobytes() for r in range(h)],
              w, h, 8, 3, palette=pal)
    packed = [bytes((int(row[i]) << 4) | int(row[i + 1]) for i in range(0, w, 2)) for row in idx]
    write_png(os.path.join(OUT, "palette4_index_past_plte.png"), packed, w, h, 4, 3, palette=pal)


if __name__ == "__main__":
    main()
