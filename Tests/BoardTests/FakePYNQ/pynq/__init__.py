"""A test-only stand-in for the subset of PYNQ (2.7/3.0) that moepack_pynq.py uses, backed by
`moepack board-sim`: Overlay (ip_dict with the register map read from the .hwh beside the .bit),
MMIO over the simulated board's /dev/mem file, and allocate() returning numpy buffers inside the
simulated u-dma-buf file with physical_address, flush/invalidate and sync_to_device/sync_from_device.

Cache maintenance goes through the board's u-dma-buf sysfs files (sync_offset, sync_size,
sync_direction, then a write to the sync_for_device/sync_for_cpu FIFO) and waits until the board has
taken the request, as PYNQ's flush returns only when the cache lines are written back.

Environment: MOEPACK_FAKE_DEVMEM, MOEPACK_FAKE_DMA, MOEPACK_FAKE_DMA_PHYS, MOEPACK_FAKE_SYSFS (the
board's files); MOEPACK_FAKE_MAX_ALLOC (bytes): larger allocations fail, as on a fragmented CMA.
"""
import array
import fcntl
import mmap
import os
import re
import struct
import termios
import time

import numpy as np

__all__ = ["Overlay", "MMIO", "allocate"]

_PAGE = mmap.PAGESIZE
_next_offset = 0


def _env(name):
    v = os.environ.get(name)
    if v is None:
        raise RuntimeError("fake pynq: %s is not set" % name)
    return v


class MMIO:
    def __init__(self, base_addr, length=4):
        fd = os.open(_env("MOEPACK_FAKE_DEVMEM"), os.O_RDWR)
        start = base_addr & ~(_PAGE - 1)
        self._skip = base_addr - start
        self._map = mmap.mmap(fd, self._skip + length, offset=start)
        os.close(fd)
        self.base_addr, self.length = base_addr, length

    def read(self, offset=0, length=4):
        return struct.unpack_from("<I", self._map, self._skip + offset)[0]

    def write(self, offset, data):
        struct.pack_into("<I", self._map, self._skip + offset, data & 0xFFFFFFFF)


def _parse_hwh(path):
    text = open(path, encoding="utf-8").read()
    ip_dict = {}
    for m in re.finditer(r'<MODULE [^>]*INSTANCE="([^"]+)"[^>]*MODTYPE="([^"]+)"[^>]*VLNV="([^"]+)"[^>]*>(.*?)</MODULE>', text, re.S):
        instance, _, vlnv, body = m.groups()
        base = re.search(r'<PARAMETER NAME="C_S_AXI_CONTROL_BASEADDR" VALUE="([^"]+)"', body)
        high = re.search(r'<PARAMETER NAME="C_S_AXI_CONTROL_HIGHADDR" VALUE="([^"]+)"', body)
        if not base or not high:
            continue
        regs = {}
        for r in re.finditer(r'<REGISTER NAME="([^"]+)">(.*?)</REGISTER>', body, re.S):
            off = re.search(r'NAME="ADDRESS_OFFSET" VALUE="([^"]+)"', r.group(2))
            if off and r.group(1) not in regs:
                regs[r.group(1)] = {"address_offset": int(off.group(1), 0), "size": 32, "access": "read-write", "description": ""}
        b, h = int(base.group(1), 0), int(high.group(1), 0)
        ip_dict[instance] = {"phys_addr": b, "addr_range": h - b + 1, "type": vlnv, "registers": regs, "fullpath": instance}
    return ip_dict


class Overlay:
    def __init__(self, bitfile_name, download=True):
        if not os.path.isfile(bitfile_name):
            raise IOError("%s does not exist" % bitfile_name)
        hwh = os.path.splitext(bitfile_name)[0] + ".hwh"
        if not os.path.isfile(hwh):
            raise IOError("%s does not exist" % hwh)
        self.ip_dict = _parse_hwh(hwh)


class PynqBuffer(np.ndarray):
    def _sync(self, fifo):
        sysfs = _env("MOEPACK_FAKE_SYSFS")
        for name, value in (("sync_offset", self._offset), ("sync_size", self.nbytes), ("sync_direction", 1 if fifo == "sync_for_device" else 2)):
            with open(os.path.join(sysfs, name), "w") as f:
                f.write(str(value))
        fd = os.open(os.path.join(sysfs, fifo), os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"1")
            if os.environ.get("MOEPACK_FAKE_SYNC_FILES"):   # plain files: nobody takes the request
                return
            deadline = time.monotonic() + 10
            pending = array.array("i", [1])
            while True:
                fcntl.ioctl(fd, termios.FIONREAD, pending, True)
                if pending[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("fake pynq: the board did not take the %s request" % fifo)
                time.sleep(0.0005)
        finally:
            os.close(fd)

    def flush(self):
        self._sync("sync_for_device")

    def invalidate(self):
        self._sync("sync_for_cpu")

    sync_to_device = flush
    sync_from_device = invalidate

    @property
    def physical_address(self):
        return self._phys

    device_address = physical_address

    def freebuffer(self):
        pass

    close = freebuffer


def allocate(shape, dtype="u4", target=None, **kwargs):
    global _next_offset
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    limit = os.environ.get("MOEPACK_FAKE_MAX_ALLOC")
    if limit is not None and n > int(limit):
        raise RuntimeError("Failed to allocate Memory!")
    path = _env("MOEPACK_FAKE_DMA")
    size = os.path.getsize(path)
    offset = _next_offset
    if offset + n > size:
        raise RuntimeError("Failed to allocate Memory!")
    _next_offset = (offset + n + _PAGE - 1) // _PAGE * _PAGE
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, max(n, 1), offset=offset)
    os.close(fd)
    buf = np.ndarray(shape, dtype=dtype, buffer=m).view(PynqBuffer)
    buf._offset, buf._phys, buf._map = offset, int(_env("MOEPACK_FAKE_DMA_PHYS"), 0) + offset, m
    return buf
