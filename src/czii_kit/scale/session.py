"""Start Ray on this machine (``--ray local``) or join a running cluster (``--ray auto``, ``--ray HOST:6379``,
``--ray ray://HOST:10001``), and leave it again when the job ends."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from czii_kit.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[ray]"'
LOCAL = "local"
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch for token authentication ("token" or "disabled")


# Read by Ray when it is imported (a user's own setting wins): every worker line shown as it is (Ray's dedup
# merges lines that differ only in numbers, such as two folds' epoch lines), and no autoscaler event every 5 s
# while trials wait for a free slot, which is how a study queues on purpose.
QUIET_RAY = {"RAY_DEDUP_LOGS": "0", "RAY_SCHEDULER_EVENTS": "0"}


def require_ray():
    """The ray module, or a ConfigError saying how to install the optional extra."""
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, an optional extra of czii-kit: {INSTALL} (or pip install "
                          "'ray[client]>=2.9'); without --ray every job runs in this process") from None
    return ray


@dataclass(frozen=True)
class Resources:
    """What one trial or worker asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0:
            raise ConfigError(f"each Ray trial or worker needs more than 0 CPUs and at least 0 GPUs (--cpus-per-trial, "
                              f"--cpus-per-worker, --gpus-per-...), got {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)")

    @property
    def threads(self) -> int:
        """torch threads inside the trial: the CPUs it reserved (at least one)."""
        return max(1, int(self.cpus))

    def options(self) -> dict:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (a variable the user set is left as it is), removed after."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def ray_session(address: str, report: Callable[[str], None] = print) -> Iterator[object]:
    """Ray, started (``local``) or joined (any other address) for the duration of the block; a session that was
    already open (a test, a notebook) is used as it is and left open."""
    ray = require_ray()
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # plain worker-line prefixes in a log file
    if ray.is_initialized():
        yield ray
        return
    # Ray's v1 autoscaler monitor answers SIGTERM by reporting to the GCS, which ray.shutdown stops first, so each
    # shutdown waited out its 1-s grace period; a one-node instance has nothing to autoscale either way
    started_here = {"RAY_enable_autoscaler_v2": "1"} if address == LOCAL else {}
    options = {"include_dashboard": False, "logging_level": logging.WARNING}
    check_reachable(address)
    try:
        with environment(started_here):  # read by the daemons ray.init starts, not left behind for later sessions
            ray.init(address=address, **options)  # "local": a new instance, never a cluster someone else started
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"--ray {address}: could not join a Ray cluster there ({type(e).__name__}: {e}); "
                          f"{join_hint(address, os.environ)}") from None
    try:
        resources = ray.cluster_resources()
        report(f"Ray at {address}: {resources.get('CPU', 0):g} CPU(s), {resources.get('GPU', 0):g} GPU(s), "
               f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s)")
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT address must answer within ``timeout_s``: ray.init retries an address where nothing listens for
    minutes, printing only its own connection warnings."""
    host, sep, port = address.rpartition(":")
    if address in (LOCAL, "auto") or "://" in address or not sep or not port.isdigit():
        return
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--ray {address}: nothing answers there ({e.strerror or e}); check the head node's address "
                          f"and port (`ray status` on the head node prints it); {join_hint(address, os.environ)}"
                          ) from None


def join_hint(address: str, environ) -> str:
    """What to try after a failed join. Ray sends its token only to a cluster it found itself (``auto``) or when
    token authentication is switched on here, so an explicit address of a cluster that checks tokens (every local
    ``ray.init`` one, and a ``ray start`` one where ~/.ray/auth_token existed) refuses us without it."""
    hint = "start one with `ray start --head` (docs/scale.md), or use --ray local"
    if address not in (LOCAL, "auto") and AUTH_MODE not in environ:
        hint += (f"; if the cluster uses token authentication, set {AUTH_MODE}=token and its token here "
                 "(RAY_AUTH_TOKEN, or the same ~/.ray/auth_token)")
    return hint


def resources_for(ray, cpus: float, gpus: float | None, device: str, address: str) -> Resources:
    """What each trial or worker asks for; ``gpus`` None: one GPU when the cluster has one and ``device`` is not
    cpu (a GPU cluster is not left idle by forgetting a flag), else none."""
    if gpus is None:
        gpus = 1.0 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    if str(device).startswith("cuda") and not gpus:
        raise ConfigError(f"device {device} asked for, but the Ray cluster at {address} offers no GPU to the "
                          "workers; use --device auto or cpu, or add GPU nodes")
    return Resources(cpus, gpus)


def check_fits(ray, resources: Resources, what: str, flags: str = "--cpus-per-trial / --gpus-per-trial") -> None:
    """Refuse before any work when no node of the cluster could ever give one trial what it asks for."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= resources.cpus and n.get("GPU", 0) >= resources.gpus for n in nodes):
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise ConfigError(f"{what} asks each Ray worker for {resources.cpus:g} CPU(s) and {resources.gpus:g} GPU(s), "
                          f"but the largest node offers {biggest.get('CPU', 0):g} CPU(s) and {biggest.get('GPU', 0):g} "
                          f"GPU(s); lower {flags}")


def refuse_time_budget(time_budget_h: float | None) -> None:
    """--time-budget shares one clock between the threads of one machine; Ray's workers have no clock to share."""
    if time_budget_h:
        raise ConfigError("--time-budget shares one clock between the workers of one machine; with --ray give the "
                          "job enough workers instead (docs/scale.md), or drop --ray")


def describe_failure(error: BaseException) -> str:
    """'Type: message' of what failed inside a Ray task (its cause, not Ray's wrapper)."""
    cause = getattr(error, "cause", None) or error
    text = " ".join(line.strip() for line in str(cause).strip().splitlines())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
