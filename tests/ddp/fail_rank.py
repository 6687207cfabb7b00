"""Run by torchrun from tests/test_distributed.py: rank 1 fails before joining, rank 0 starts a real training run
(czii train) and would wait for it; the job must end, non-zero, within a bounded time, naming the rank."""
import os
import sys

from czii_kit.cli.common import exit_on_user_error
from czii_kit.cli.main import main as czii


@exit_on_user_error
def fail(argv=None) -> int:
    raise RuntimeError("a deliberate failure")


if __name__ == "__main__":
    sys.exit(fail() if os.environ["RANK"] == "1" else czii(sys.argv[1:]))
