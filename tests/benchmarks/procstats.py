"""Memory and CPU of another process, read from ``/proc`` (Linux), for the benchmarks' figures.

No dependency: ``/proc/PID/status`` has ``VmRSS`` (resident now) and ``VmHWM`` (the kernel's
high-water mark of resident memory over the process's whole life), ``/proc/PID/stat`` the CPU
time. ``RssSampler`` polls ``VmRSS`` on a thread (so a busy event loop in the driver cannot skip
samples) and keeps the peak per named phase; ``VmHWM`` is read as well because a spike shorter
than the sampling interval is still in it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

RSS_TARGET_MB = 200.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def hwm_mb(pid: int) -> float | None:
    """Peak resident memory of the process so far (MB), as the kernel counted it."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds; ``with sampler.phase("x"):`` labels samples."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self._phase: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss:{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            self._phase = name
        self._sample()  # at least one sample per phase, however short
        try:
            yield
        finally:
            self._sample()
            with self._lock:
                self._phase = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        value = rss_mb(self.pid)
        with self._lock:
            if value is not None and self._phase is not None:
                self.peaks[self._phase] = max(value, self.peaks.get(self._phase, 0.0))


def rss_verdict(peak_mb: float | None) -> str:
    if peak_mb is None:
        return "unknown (the process was gone)"
    return f"{peak_mb:.0f} MB -> target <= {RSS_TARGET_MB:.0f} MB: {'MET' if peak_mb <= RSS_TARGET_MB else 'MISSED'}"
