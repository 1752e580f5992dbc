"""Writers that were not stopped: the BUILD-144 application still recording total-only rows while
``alembic downgrade -1`` runs, and old code updating a row's splits after a default-mode upgrade."""

import threading
import time

from sqlalchemy import create_engine, text

from support import (
    alembic,
    autopack_command,
    current,
    execute,
    finish_online,
    line,
    scalar,
    table_names,
    token_rows,
    verify,
)

HOLDOVER = "llm_usage_events_build144_holdover"
SEEDED = 60_000


def seed_build144(url, rows=SEEDED):
    """A BUILD-144 table of ``rows`` events: every 5th total-only (a downgrade sets it aside), the rest exact."""
    alembic(url, "upgrade", "head")
    values = [
        {"pt": None, "ct": None, "tt": 1000 + i}
        if i % 5 == 0
        else {"pt": i % 1000, "ct": i % 333, "tt": i % 1000 + i % 333}
        for i in range(1, rows + 1)
    ]
    engine = create_engine(url)
    with engine.begin() as connection:
        for chunk in range(0, rows, 20_000):
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens,"
                    " total_tokens, created_at, is_doctor_call) VALUES ('p', 'm', 'builder', :pt, :ct, :tt,"
                    " '2025-12-31 00:00:00', false)"
                ),
                values[chunk : chunk + 20_000],
            )
    engine.dispose()


class TotalOnlyWriter:
    """The BUILD-144 application, still running: it commits one total-only event after another (as its recorder
    does for a provider that reports only a total) and remembers each one that committed."""

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"timeout": 30} if url.get_backend_name() == "sqlite" else {})
        self.committed: dict[int, int] = {}  # total -> id
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.write, daemon=True)

    def write(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            total = 7_000_000 + n
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        text(
                            "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens,"
                            " total_tokens, created_at, is_doctor_call) VALUES ('late', 'm', 'builder', NULL, NULL,"
                            " :total, '2026-01-02 00:00:00', false)"
                        ),
                        {"total": total},
                    )
                self.committed[total] = n
            except Exception as error:  # the column is gone once the downgrade committed: old schema
                self.errors.append(str(error).splitlines()[0])
                time.sleep(0.02)
            time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        while not self.committed and not self.errors:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        self.engine.dispose()


def late_rows(url) -> dict[int, tuple]:
    """The rows the writer committed, by their total (the upgrade has put each back, or not)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT total_tokens, prompt_tokens, completion_tokens FROM llm_usage_events WHERE provider = 'late'")
        )
        found = {r[0]: (r[1], r[2]) for r in rows}
    engine.dispose()
    return found


def test_rows_written_during_a_downgrade_are_set_aside_and_come_back(db_url, backend):
    seed_build144(db_url)
    with TotalOnlyWriter(db_url) as writer:
        time.sleep(0.3)
        down = alembic(db_url, "downgrade", "-1", check=False)
        time.sleep(0.3)
    assert writer.committed, writer.errors
    assert "Traceback" not in down.stderr, down.stderr
    if down.returncode != 0:  # one sentence naming the writer, and nothing left for an upgrade to miss
        failed = line(down.stdout + down.stderr, "FAILED")
        assert "stop the application" in failed, failed
        assert current(db_url).startswith("0002")
        assert late_rows(db_url) == dict.fromkeys(writer.committed, (None, None))
        return
    assert current(db_url).startswith("0001")
    # every total-only row the writer committed before the schema change is in the set-aside table
    held = scalar(db_url, f"SELECT COUNT(*) FROM {HOLDOVER} WHERE provider = 'late'")
    assert held == len(writer.committed), (held, len(writer.committed), writer.errors[:3])
    alembic(db_url, "upgrade", "head")
    assert late_rows(db_url) == dict.fromkeys(writer.committed, (None, None))
    assert scalar(db_url, "SELECT COUNT(*) FROM llm_usage_events WHERE prompt_tokens IS NULL") == (
        SEEDED // 5 + len(writer.committed)
    )
    assert HOLDOVER not in table_names(db_url)
    assert verify(db_url).returncode == 0


def test_verify_names_the_command_that_restores_what_a_stopped_downgrade_set_aside(db_url):
    """A downgrade that stopped after setting rows aside (as MariaDB's did: its set-aside step committed, the schema
    change failed) leaves events reading 0/0 at 0002; verify fails naming the command that puts them back."""
    alembic(db_url, "upgrade", "head")
    execute(
        db_url,
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES (1, 'p', 'm', 'builder', NULL, NULL, 1812, '2025-12-31 00:00:00',"
        " false), (2, 'p', 'm', 'builder', 10, 20, 30, '2025-12-31 00:00:00', false)",
    )
    # what the stopped downgrade left: the row set aside, its NULL splits reading 0, the revision still 0002
    execute(
        db_url,
        f"CREATE TABLE {HOLDOVER} AS SELECT id AS event_id, provider, model, role, created_at, prompt_tokens,"
        " completion_tokens, total_tokens FROM llm_usage_events WHERE id = 1",
        "UPDATE llm_usage_events SET prompt_tokens = 0, completion_tokens = 0 WHERE id = 1",
    )
    checked = verify(db_url)
    assert checked.returncode == 1
    assert "python -m autopack restore-set-aside" in line(checked.stdout, "set aside"), checked.stdout
    # the placeholders are not stale splits: the totals check and repair-totals send the operator to the restore
    assert "run 'python -m autopack restore-set-aside' first" in line(checked.stdout, "totals match their splits")
    refused = autopack_command(db_url, "repair-totals")
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr
    assert "1 rows a downgrade set aside still read 0/0 splits: run 'python -m autopack restore-set-aside'" in (
        refused.stderr
    )
    assert token_rows(db_url) == {1: (0, 0, 1812), 2: (10, 20, 30)}  # nothing changed
    up = alembic(db_url, "upgrade", "head")  # at head already: nothing to run, and it says so, naming the restore
    assert "Nothing to do" in up.stderr, up.stderr
    assert (
        "1 rows a downgrade that stopped set aside still read 0/0 splits: run 'python -m autopack restore-set-aside'"
        in (up.stderr)
    )
    restored = autopack_command(db_url, "restore-set-aside")
    assert restored.returncode == 0, restored.stderr
    assert "Restored 1 set-aside rows" in restored.stdout, restored.stdout
    assert token_rows(db_url) == {1: (None, None, 1812), 2: (10, 20, 30)}
    assert HOLDOVER not in table_names(db_url)
    assert current(db_url).startswith("0002")
    assert verify(db_url).returncode == 0


def stale_totals(url):
    """After a default-mode upgrade, old code still running updates two rows' splits and leaves their totals."""
    alembic(url, "upgrade", "head")
    execute(
        url,
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES"
        " (1, 'p', 'm', 'builder', 60000, 40000, 100000, '2025-12-31 00:00:00', false),"
        " (2, 'p', 'm', 'builder', 1, 2, 3, '2025-12-31 00:00:00', false),"
        " (3, 'p', 'm', 'builder', NULL, NULL, 5000, '2025-12-31 00:00:00', false),"
        " (4, 'p', 'm', 'builder', 700, 300, 1000, '2025-12-31 00:00:00', false)",
        # a streamed call finishing late: the pre-BUILD-144 code updates the splits it knows
        "UPDATE llm_usage_events SET prompt_tokens = 90000, completion_tokens = 60000 WHERE id = 1",
        "UPDATE llm_usage_events SET completion_tokens = 500 WHERE id = 4",
    )


def test_verify_names_repair_totals_and_it_fixes_exactly_the_stale_rows(db_url):
    stale_totals(db_url)
    checked = verify(db_url)
    assert checked.returncode == 1
    mismatch = line(checked.stdout, "totals match their splits")
    assert "2 rows" in mismatch and "python -m autopack repair-totals" in mismatch, mismatch
    finished = finish_online(db_url, check=False)
    assert "every row of llm_usage_events has its total" not in finished.stdout, finished.stdout
    assert finished.returncode == 1 and "2 rows" in finished.stdout, finished.stdout
    assert "python -m autopack repair-totals" in finished.stdout, finished.stdout
    repaired = autopack_command(db_url, "repair-totals")
    assert repaired.returncode == 0, repaired.stderr
    assert "2 rows" in repaired.stdout, repaired.stdout
    assert token_rows(db_url) == {1: (90000, 60000, 150000), 2: (1, 2, 3), 3: (None, None, 5000), 4: (700, 500, 1200)}
    assert verify(db_url).returncode == 0
    again = autopack_command(db_url, "repair-totals")
    assert again.returncode == 0 and "0 rows" in again.stdout, again.stdout


def test_a_round_trip_does_not_launder_stale_totals(db_url):
    stale_totals(db_url)
    alembic(db_url, "downgrade", "-1")
    alembic(db_url, "upgrade", "head")
    checked = verify(db_url)
    assert checked.returncode == 1
    assert "repair-totals" in line(checked.stdout, "totals match their splits"), checked.stdout
    assert autopack_command(db_url, "repair-totals").returncode == 0
    assert token_rows(db_url)[1] == (90000, 60000, 150000)


def test_repair_totals_never_lowers_a_total_on_a_guess_nor_traces_back(db_url):
    """Rows repair-totals must leave: one split NULL (the total may hold the other), splits summing past what
    total_tokens holds (corrupt splits); the row beside them in the same batch is still repaired."""
    alembic(db_url, "upgrade", "head")
    huge = 2**62 if db_url.get_backend_name() == "sqlite" else 2 * 10**9  # past the column: 2^63, or past INTEGER
    execute(
        db_url,
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        f" created_at, is_doctor_call) VALUES (1, 'p', 'm', 'r', {huge}, {huge}, 5, '2025-12-31 00:00:00', false),"
        " (2, 'p', 'm', 'r', 100, 100, 5, '2025-12-31 00:00:00', false),"
        " (3, 'p', 'm', 'r', 100, NULL, 150, '2025-12-31 00:00:00', false)",
    )
    repaired = autopack_command(db_url, "repair-totals")
    assert repaired.returncode == 1 and "Traceback" not in repaired.stderr, repaired.stderr
    assert repaired.stdout.strip() == (
        "Repaired 1 rows of llm_usage_events whose total_tokens was not the sum of their splits; 2 rows still have "
        "a total that is not the sum of their splits: 1 with one split NULL (the total may hold what the missing "
        "split was: never lowered here; check them by hand); 1 whose splits sum past what total_tokens holds "
        "(corrupt splits?)."
    )
    assert token_rows(db_url) == {1: (huge, huge, 5), 2: (100, 100, 200), 3: (100, None, 150)}
