"""Progress of long commands: a tqdm bar in a terminal, a periodic one-line record in a log otherwise.

    with Progress(total=150, desc="evaluate mini_r2r", unit="episode") as p:
        for ...:
            p.update(1)

    for step in Progress(total, "sft", unit="step", initial=start).iterate(range(start, total)):
        ...

In a terminal (stderr is a TTY) the bar shows the count, rate and ETA; when stderr
goes to a file (every workflow job: ``> {log} 2>&1``) a record
``desc: 40/150 episodes (26.7 %), 1.3 episode/s, ETA 1m24s`` is logged every
``every`` seconds (default 30) and once at the end. ``SACA_PROGRESS=bar|log|off``
forces one form.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("saca.progress")


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str = "it", every: float = 30.0, initial: int = 0,
                 mode: str | None = None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.every, self.clock = total, desc, unit, float(every), clock
        self.n = self.start_n = int(initial)
        self.t0 = self.last = clock()
        mode = mode or os.environ.get("SACA_PROGRESS") or ("bar" if sys.stderr.isatty() else "log")
        if mode not in ("bar", "log", "off"):
            mode = "log"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)

    def line(self) -> str:
        """The one-line record: count, share, rate and ETA."""
        dt = max(self.clock() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / dt
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.1f} %)"
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(dt)}")
        return ", ".join(parts)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.mode == "log" and self.clock() - self.last >= self.every:
            self.last = self.clock()
            log.info(self.line())

    def iterate(self, iterable):
        """Yield the items of ``iterable``, counting one after each finished loop body; closed at the end."""
        try:
            for x in iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "log":
            log.info(self.line())
            self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
