"""A Ray instance held open for other commands to join, standing in for a cluster that is already running:
``python -m czii_kit.bench.ray_instance`` starts a local Ray, prints ``ray address HOST:PORT`` on one line, and
stops Ray when its stdin closes. Against it, ``czii predict --ray HOST:PORT`` pays what a job on a running cluster
pays, without Ray's own start-up: the overhead bench's ``joined`` measurement (docs/scale.md)."""
from __future__ import annotations

import sys

from czii_kit.scale.session import LOCAL, ray_session

ADDRESS_LINE = "ray address "


def main() -> int:
    with ray_session(LOCAL, report=lambda line: None) as ray:
        print(ADDRESS_LINE + ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.read()  # until the parent closes it (or dies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
