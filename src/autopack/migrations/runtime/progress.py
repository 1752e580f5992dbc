"""Progress of long work, logged through Alembic's logger: rows done / total, percent, elapsed, rate and ETA;
for one statement that reports none (a table rewrite), how long it has been running."""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_EVERY_S = 2.0


class Progress:
    """Logs ``rows done / total (percent), elapsed, rate, ETA`` at most every ``every_s`` seconds."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = PROGRESS_EVERY_S) -> None:
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.start = self.last = time.monotonic()

    def at(self, fraction: float, idle_s: float = 0.0, pause_per_row_s: float = 0.0) -> None:
        """``idle_s``: time spent waiting so far (pauses, replica waits), left out of the rate; the ETA adds the
        pauses still to come (``pause_per_row_s`` for each row left), not replica waits, which nobody can foresee."""
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        done = round(self.total * min(fraction, 1.0))
        elapsed = now - self.start
        working = elapsed - idle_s
        rate = done / working if working > 0 else 0.0
        left = (self.total - done) / rate + (self.total - done) * pause_per_row_s if rate else None
        eta = f"about {left:.0f}s left" if left is not None else "time left unknown"
        self.log.info(
            "      %s: %s / %s rows (%.1f%%), %.1fs elapsed, %s rows/s, %s",
            self.what,
            f"{done:,}",
            f"{self.total:,}",
            100 * min(fraction, 1.0),
            elapsed,
            f"{rate:,.0f}",
            eta,
        )


@contextmanager
def while_running(log: logging.Logger, what: str, every_s: float = PROGRESS_EVERY_S) -> Iterator[None]:
    """For one long statement that reports no progress of its own (a table rewrite): a line every ``every_s``
    seconds (at least 1) saying it is still running and for how long, from a thread, until it ends."""
    start, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(max(every_s, 1.0)):
            log.info("      %s: still running, %.0fs elapsed", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
