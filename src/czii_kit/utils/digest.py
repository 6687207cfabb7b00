"""sha256 of a file's bytes, read in chunks: what checkpoints, engines and Kaggle packs are identified by."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, bar=None) -> str:
    """Hex sha256 of ``path``; ``bar`` (a progress bar) is advanced by the bytes read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()
