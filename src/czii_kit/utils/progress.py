"""Progress of long work: a live bar on a terminal, a few plain lines everywhere else.

A log file or a notebook cell that receives a carriage-return bar keeps every redraw: thousands of lines.
``progress_bar`` gives a tqdm bar only when its stream is a terminal; otherwise a ``PlainProgress`` that
prints one line when the work has advanced by ``PLAIN_PERCENT`` and ``PLAIN_SECONDS`` have passed since the
last line (whichever is rarer), and a last line when it closes. Both take the same calls (iteration,
``update``, ``set_postfix``, ``close``, use as a context manager), so callers never care which they got.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

PLAIN_PERCENT = 5.0  # a plain line once the work advanced by this much ...
PLAIN_SECONDS = 30.0  # ... and at least this long after the previous line


def _amount(value: float, unit: str, scale: bool) -> str:
    """12 (a count), or '12.3 MB' with ``scale`` (SI prefixes, like tqdm's unit_scale)."""
    if not scale:
        return f"{value:g}"
    prefixes, i = ("", "k", "M", "G", "T"), 0
    while abs(value) >= 1000 and i < len(prefixes) - 1:
        value, i = value / 1000, i + 1
    return f"{value:.3g} {prefixes[i]}{unit}"


class PlainProgress:
    """The plain-line progress of ``progress_bar`` for streams that are not terminals."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", unit_scale: bool = False, leave: bool = True, stream=None,
                 clock: Callable[[], float] = time.monotonic, every_percent: float = PLAIN_PERCENT,
                 every_seconds: float = PLAIN_SECONDS) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.leave, self.stream, self.clock = leave, stream or sys.stderr, clock
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self.n = 0
        self.postfix = ""
        self.start = self._last_time = clock()
        self._last_n = 0
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        advanced = (100.0 * (self.n - self._last_n) / self.total) if self.total else self.every_percent
        if advanced >= self.every_percent and now - self._last_time >= self.every_seconds:
            self._line(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and (self.n or self.total):
            self._line(self.clock(), done=True)

    def line(self, now: float | None = None, done: bool = False) -> str:
        """The text of a progress line: 'desc: 12/40 runs (30%) after 95 s, loss=0.1'."""
        now = self.clock() if now is None else now
        count = _amount(self.n, self.unit, self.unit_scale)
        if self.total:
            count += f"/{_amount(self.total, self.unit, self.unit_scale)}"
        unit = "" if self.unit_scale else f" {self.unit}"
        percent = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        verb = "done in" if done else "after"
        text = f"{self.desc + ': ' if self.desc else ''}{count}{unit}{percent} {verb} {now - self.start:.0f} s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _line(self, now: float, done: bool = False) -> None:
        print(self.line(now, done), file=self.stream, flush=True)
        self._last_time, self._last_n = now, self.n


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 unit_scale: bool = False, enabled: bool = True, leave: bool = True, stream=None):
    """A tqdm bar on a terminal, a ``PlainProgress`` elsewhere, nothing at all when not ``enabled``."""
    stream = stream or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave, file=stream,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total, desc, unit, unit_scale, leave, stream)
