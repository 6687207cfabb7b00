"""Ray's own cost for one command, with none of the kit's Ray path: ``python -m czii_kit.bench.ray_floor ARGS``
starts a local Ray as ``--ray local`` does, runs the unchanged one-process ``czii ARGS`` in one actor that reserves
the CPUs a prediction worker reserves, and stops Ray. Against the plain command, the difference is what Ray itself
costs on this machine (starting Ray and a worker, stopping them) with no design of ours; the overhead bench's third
arm, against which the kit's own ``--ray`` path is judged (docs/scale.md)."""
from __future__ import annotations

import subprocess
import sys

from czii_kit.scale.predict import DEFAULT_CPUS_PER_WORKER
from czii_kit.scale.session import LOCAL, ray_session

CZII_COMMAND = [sys.executable, "-m", "czii_kit.cli.main"]  # ``czii`` as its own process, as a user runs it


class OneProcessCommand:
    """A Ray actor: one ``czii`` command, as a user types it, under the actor's CPUs; (exit code, stdout, stderr)."""

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        done = subprocess.run([*CZII_COMMAND, *argv], capture_output=True, text=True)
        return done.returncode, done.stdout, done.stderr


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with ray_session(LOCAL, report=lambda line: None) as ray:
        actor = ray.remote(OneProcessCommand).options(num_cpus=DEFAULT_CPUS_PER_WORKER).remote()
        code, out, err = ray.get(actor.run.remote(argv))
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main())
