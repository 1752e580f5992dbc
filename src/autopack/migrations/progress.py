"""Progress of long work, logged through Alembic's logger: rows done / total, percent, elapsed, rate and ETA."""

import logging
import time

PROGRESS_EVERY_S = 2.0


class Progress:
    """Logs ``rows done / total (percent), elapsed, rate, ETA`` at most every ``every_s`` seconds."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = PROGRESS_EVERY_S) -> None:
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.start = self.last = time.monotonic()

    def at(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        done = round(self.total * min(fraction, 1.0))
        elapsed = now - self.start
        rate = done / elapsed if elapsed else 0.0
        eta = f"about {(self.total - done) / rate:.0f}s left" if rate else "time left unknown"
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
