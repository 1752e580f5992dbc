"""The online backfill's manners on a replicated cluster: a pause between batches, a batch size that adapts to a
target duration, and a wait while any streaming replica is too far behind.

Why. Each committed batch is WAL that every streaming replica must replay; pushed as fast as the primary takes
them, replicas fall behind, reads from them go stale and a failover loses its margin. So before each batch the
backfill reads ``pg_stat_replication`` (https://www.postgresql.org/docs/current/monitoring-stats.html) and
waits while a replica is more than ``max_replica_lag`` behind by ``replay_lag`` or more than
``max_replica_lag_bytes`` of WAL behind by ``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``: a replica
whose replay is paused or stuck stops acknowledging, so its ``replay_lag`` can stay small or turn NULL while the
bytes grow. Lag that cannot be read (a role without ``pg_read_all_stats`` sees NULLs) for 15 s is treated as
too high (fail closed). WAL senders that replay nothing — a WAL archiver such as ``pg_receivewal`` or Barman, a
running ``pg_basebackup`` — are not replicas anyone reads from: they are named once and not waited for. A standby
that has disconnected is not in ``pg_stat_replication`` at all and so is not waited for either (a replication
slot keeps the WAL it needs). After ``replica_wait_max`` of waiting in all, the backfill stops, resumable, in one
sentence: a replica delayed on purpose (``recovery_min_apply_delay``) must not hold the upgrade forever.
The same limits as gh-ost's ``--max-lag-millis`` (1.5 s) and pt-online-schema-change's ``--max-lag``.
"""

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from autopack.migrations.runtime.engine_traits import traits_of
from autopack.migrations.runtime.messages import refusal
from autopack.migrations.runtime.options import Options, interval_seconds

log = logging.getLogger("alembic.build144")

UNREADABLE_FOR_S = 15.0  # lag unreadable this long counts as too high
POLL_S = 0.5
NAP_S = 0.05  # how soon a pause notices a stop
SAY_EVERY_S = 5.0
# every WAL sender: a standby reports where it replayed; a WAL archiver (pg_receivewal, Barman) or a base backup
# (state 'backup', or its -X stream sender) replays nothing, so its replay_lsn stays NULL while sent_lsn is known;
# a role without pg_read_all_stats sees every position NULL
REPLICAS = """
SELECT COALESCE(NULLIF(application_name, ''), client_addr::text, 'replica') AS name,
       EXTRACT(EPOCH FROM replay_lag) AS lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS lag_bytes,
       state = 'backup' OR (sent_lsn IS NOT NULL AND replay_lsn IS NULL) AS replays_nothing
FROM pg_stat_replication
"""


@dataclass
class Throttle:
    options: Options
    connection: sa.Connection
    resumes: str  # what a stop between batches leaves, in the caller's words
    batch_rows: int = 0
    waited_s: float = 0.0
    watches_replicas: bool = field(default=False, init=False)
    stop_asked: str | None = None
    unreadable_since: float | None = field(default=None, repr=False)
    idle_s: float = 0.0  # pauses and replica waits: not the batches' own time (the progress rate leaves it out)
    ignored: set[str] = field(default_factory=set, repr=False)  # WAL receivers that replay nothing, said once
    batches_started: int = field(default=0, repr=False)
    said_stop: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.batch_rows = self.options.rows_per_batch
        # MariaDB: a primary does not see its replicas' lag (pace it with batch_pause / batch_seconds)
        traits = traits_of(self.connection.dialect)
        self.watches_replicas = self.options.max_replica_lag != "off" and traits.sees_replica_lag
        if self.options.max_replica_lag != "off" and not self.watches_replicas:
            log.info(
                "      replica lag is not watched on %s (a primary does not see it): pace the backfill for "
                "replicas with -x batch_pause or -x batch_seconds",
                self.connection.dialect.name,
            )

    @contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM during the backfill: the batch running finishes and commits, then the backfill stops
        (``before_batch``) in one sentence; a second signal is not waited for."""

        def ask(signum: int, _frame: object) -> None:
            if self.stop_asked:
                raise KeyboardInterrupt(f"a second {signal.Signals(signum).name}")
            # only a flag: a lock or a log write here could deadlock with the main thread holding it (an Event's
            # lock, the log stream); naps notice it within NAP_S, and the main thread says it
            self.stop_asked = signal.Signals(signum).name

        previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def before_batch(self) -> None:
        """Stop if asked; pause; wait while a replica is too far behind; stop past ``replica_wait_max``."""
        self.stop_if_asked()
        if self.options.batch_pause and self.batches_started:  # between batches, not before the first
            paused = time.monotonic()
            self.nap(interval_seconds(self.options.batch_pause))
            self.idle_s += time.monotonic() - paused
            self.stop_if_asked()
        self.batches_started += 1
        if not self.watches_replicas:
            return
        started, last_said = time.monotonic(), None
        while reason := self.too_far_behind():
            now = time.monotonic()
            if self.waited_s + (now - started) > interval_seconds(self.options.replica_wait_max):
                raise refusal(
                    "replicas_waited_too_long",
                    waited=self.options.replica_wait_max,
                    reason=reason,
                    resumes=self.resumes,
                )
            if last_said is None or now - last_said >= SAY_EVERY_S:
                log.info("      throttled: %s; waiting (%.0fs so far)", reason, self.waited_s + now - started)
                last_said = now
            self.nap(POLL_S)
            self.stop_if_asked()
        self.waited_s += time.monotonic() - started
        self.idle_s += time.monotonic() - started

    def nap(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short by a stop asked meanwhile (noticed within ``NAP_S``)."""
        until = time.monotonic() + seconds
        while not self.stop_asked and (left := until - time.monotonic()) > 0:
            time.sleep(min(NAP_S, left))

    def say_stopping(self) -> None:
        """Called by the backfill after each batch: a stop asked during it is said at once, then obeyed."""
        if self.stop_asked and not self.said_stop:
            self.said_stop = True
            log.info("      %s: stopping after the batch running now (send it again to stop at once)", self.stop_asked)

    def stop_if_asked(self) -> None:
        self.say_stopping()
        if self.stop_asked:
            raise refusal("stopped_between_batches", signal=self.stop_asked, resumes=self.resumes)

    def too_far_behind(self) -> str | None:
        max_lag_s = interval_seconds(self.options.max_replica_lag)
        behind, unreadable = [], []
        for name, lag_s, lag_bytes, replays_nothing in self.connection.exec_driver_sql(REPLICAS):
            if replays_nothing:  # an archiver or a backup: no reads are served from it, nothing to wait for
                if name not in self.ignored:
                    self.ignored.add(name)
                    log.info("      not waiting for %s: a WAL receiver that replays nothing (archiver, backup)", name)
            elif lag_bytes is None:
                unreadable.append(name)
            elif lag_bytes > self.options.max_replica_lag_bytes or (lag_s is not None and lag_s > max_lag_s):
                behind.append(f"{name} {float(lag_s or 0):.1f}s / {int(lag_bytes) / 2**20:.1f} MiB behind")
        now = time.monotonic()
        if not unreadable:
            self.unreadable_since = None
        elif self.unreadable_since is None:
            self.unreadable_since = now
        elif now - self.unreadable_since >= UNREADABLE_FOR_S:
            behind.append(f"lag of {', '.join(unreadable)} unreadable for {now - self.unreadable_since:.0f}s")
        return "; ".join(behind) or None

    def pause_per_row_s(self) -> float:
        """The batch pause still to come, per row left (for the ETA)."""
        pause = interval_seconds(self.options.batch_pause) if self.options.batch_pause else 0.0
        return pause / max(self.batch_rows, 1)

    def after_batch(self, seconds: float) -> None:
        """With ``batch_seconds``: the next batch's size aims at that duration (at most doubling or halving)."""
        if self.options.batch_seconds and seconds > 0:
            target = interval_seconds(self.options.batch_seconds)
            factor = min(2.0, max(0.5, target / seconds))
            self.batch_rows = max(100, min(1_000_000, round(self.batch_rows * factor)))
