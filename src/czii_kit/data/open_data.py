"""``--data`` of every tool: a directory is the Kaggle layout, a copick config JSON a copick project.

Kept apart from ``source`` (the interface and the built-in reader) and ``copick`` (the copick reader) so
that both readers sit below it and neither imports the other.
"""
from __future__ import annotations

from pathlib import Path

from czii_kit.data.source import DataSource, KaggleDirectory
from czii_kit.errors import DataError


def open_data(data: str | Path | DataSource) -> DataSource:
    """A directory -> the Kaggle layout; a copick config JSON -> that copick project (``pip install
    'czii-kit[copick]'``); a DataSource -> itself."""
    if isinstance(data, DataSource):
        return data
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".json":
        from czii_kit.data.copick import CopickProject

        return CopickProject(path)
    if path.is_file():
        raise DataError(f"--data {path} is a file but not a copick config (.json); pass the competition directory "
                        "or a copick project's config JSON")
    return KaggleDirectory(path)
