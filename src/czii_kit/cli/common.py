"""Shared bits of the command-line tools: error handling and default data/config choice."""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path

from czii_kit.errors import CziiError


def exit_on_user_error(main):
    """Print a CziiError's message (it names the problem and the fix) and exit 2, no traceback."""
    @wraps(main)
    def wrapper(argv=None) -> int:
        try:
            return main(argv)
        except CziiError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapper


def resolve_data_root(data: str | None) -> Path:
    """--data, or the built-in synthetic dataset (generated once, cached under ./data)."""
    if data:
        return Path(data)
    from czii_kit.data.synth import ensure_builtin_dataset

    root = ensure_builtin_dataset()
    print(f"no --data given: using the built-in synthetic dataset at {root}")
    return root


def default_config_name() -> str:
    import torch

    return "unet_r34" if torch.cuda.is_available() else "cpu_quick"
