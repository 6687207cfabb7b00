"""A small MRC2014 reader and writer (density maps only), so the kit needs no extra dependency.

Why our own: the templates are a handful of small maps, and all that is needed is the 1024-byte
header (sizes, mode, cell, axis order, extended-header length, byte order) and the data block.
Reference: https://www.ccpem.ac.uk/mrc_format/mrc2014.php
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from czii_kit.errors import DataError

HEADER_BYTES = 1024
# MRC mode -> numpy dtype (little-endian; swapped for big-endian files)
MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def _byte_order(header: bytes) -> str:
    """'<' or '>' from the machine stamp (bytes 212-213), else from which reading gives sane sizes."""
    stamp = header[212:214]
    if stamp in (b"\x44\x44", b"\x44\x41"):
        return "<"
    if stamp == b"\x11\x11":
        return ">"
    for order in "<>":
        sizes = np.frombuffer(header[:12], dtype=f"{order}i4")
        if (sizes > 0).all() and (sizes < 100_000).all():
            return order
    return "<"


def read_mrc(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(density float32 (z, y, x), voxel size (z, y, x) in Å from the header; 0 where the header has none)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read map {path} ({e}); check the path in the mapping file") from e
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path} is {len(raw)} bytes, shorter than an MRC header; is it an MRC map?")
    order = _byte_order(raw[:HEADER_BYTES])
    ints = np.frombuffer(raw[:HEADER_BYTES], dtype=f"{order}i4")
    floats = np.frombuffer(raw[:HEADER_BYTES], dtype=f"{order}f4")
    (nc, nr, ns), mode = ints[0:3], int(ints[3])
    if mode not in MODES:
        raise DataError(f"{path}: MRC mode {mode} is not supported (supported: {sorted(MODES)}, i.e. real-valued "
                        "maps); convert it to float32 (mode 2)")
    if min(nc, nr, ns) < 1:
        raise DataError(f"{path}: header sizes {nc, nr, ns} are not positive; the file is not an MRC map or corrupt")
    dtype = np.dtype(MODES[mode]).newbyteorder(order)
    start = HEADER_BYTES + max(int(ints[23]), 0)  # NSYMBT: extended header bytes
    count = int(nc) * int(nr) * int(ns)
    if len(raw) < start + count * dtype.itemsize:
        raise DataError(f"{path}: holds {len(raw) - start} data bytes, the header promises "
                        f"{count * dtype.itemsize}; the file is truncated")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(ns, nr, nc).astype(np.float32)
    axes = [int(a) for a in ints[16:19]]  # MAPC, MAPR, MAPS: which of x=1, y=2, z=3 columns/rows/sections are
    if sorted(axes) != [1, 2, 3]:
        axes = [1, 2, 3]  # unset in some writers: the standard order
    # data axes are (sections, rows, columns) = (axes[2], axes[1], axes[0]); put them in (z, y, x) order
    data = np.ascontiguousarray(data.transpose([[axes[2], axes[1], axes[0]].index(a) for a in (3, 2, 1)]))
    if not np.isfinite(data).all():
        raise DataError(f"{path}: the map holds NaN or infinite values; fix the map")
    sampling = ints[7:10].astype(float)  # MX, MY, MZ
    cell = floats[10:13].astype(float)  # Å
    with np.errstate(divide="ignore", invalid="ignore"):
        voxel_xyz = np.where(sampling > 0, cell / np.maximum(sampling, 1), 0.0)
    return data, voxel_xyz[::-1].copy()


def write_mrc(path: str | Path, density: np.ndarray, voxel_size: float) -> Path:
    """Write a float32 (z, y, x) map as little-endian MRC2014 with a cubic voxel of ``voxel_size`` Å."""
    density = np.ascontiguousarray(density, dtype="<f4")
    if density.ndim != 3:
        raise DataError(f"a map must be 3-D (z, y, x); got shape {density.shape}")
    nz, ny, nx = density.shape
    header = np.zeros(256, dtype="<i4")
    floats = header.view("<f4")
    header[0:4] = nx, ny, nz, 2
    header[7:10] = nx, ny, nz
    floats[10:13] = nx * voxel_size, ny * voxel_size, nz * voxel_size
    floats[13:16] = 90.0
    header[16:19] = 1, 2, 3
    floats[19:22] = density.min(), density.max(), density.mean()
    header[22] = 1  # ISPG: a single volume
    header[27] = 20140  # NVERSION
    floats[54] = density.std()
    raw = bytearray(header.tobytes())
    raw[208:212] = b"MAP "
    raw[212:216] = b"\x44\x44\x00\x00"
    path = Path(path)
    path.write_bytes(bytes(raw) + density.tobytes())
    return path
