"""Shared bits of the command-line tools: error handling and default data/config choice."""
from __future__ import annotations

import errno
import sys
from functools import wraps
from typing import TYPE_CHECKING

from czii_kit.errors import CziiError

if TYPE_CHECKING:
    from czii_kit.data.source import DataSource


FILE_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # refused, full, read-only


def exit_on_user_error(main):
    """Print a CziiError's message (it names the problem and the fix) and exit 2, no traceback; the same when the
    system refuses a file (permissions, a full or read-only disk), and one line for Ctrl-C (exit 130). Under
    torchrun the message names the rank, and any other failure says which rank failed before its traceback."""
    @wraps(main)
    def wrapper(argv=None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted; checkpoints, submissions and reports are written whole or not at all; to go on, "
                  "rerun the command (training with --resume; prediction with --ray keeps its finished runs)",
                  file=sys.stderr)
            return 130
        except Exception as e:
            from czii_kit.train.distributed import rank_prefix  # here: importing it imports torch

            if isinstance(e, CziiError):
                print(f"error: {rank_prefix()}{e}", file=sys.stderr)
                return 2
            if isinstance(e, OSError) and e.errno in FILE_ERRNOS:  # the system's no, not a bug of ours
                where = f": {e.filename}" if e.filename else ""
                print(f"error: {rank_prefix()}{e.strerror or e}{where}; check that path (its permissions, the free "
                      "space) or choose another", file=sys.stderr)
                return 2
            if rank_prefix():
                print(f"error: {rank_prefix()}failed with {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            raise
    return wrapper


def resolve_data(data: str | None) -> DataSource:
    """--data (a competition directory or a copick config JSON), or the built-in synthetic dataset (generated
    once, cached under ./data). Imported here: pandas comes with it, and a tool starts faster without it."""
    from czii_kit.data.open_data import open_data

    if data:
        return open_data(data)
    from czii_kit.data.synth import ensure_builtin_dataset

    root = ensure_builtin_dataset()
    print(f"no --data given: using the built-in synthetic dataset at {root}")
    return open_data(root)


def default_config_name() -> str:
    import torch

    return "unet_r34" if torch.cuda.is_available() else "cpu_quick"
