"""Failures are recognised by the drivers' own codes, not by their wording: SQLite's result codes
(``sqlite3.Error.sqlite_errorcode``, extended codes included), PyMySQL's error numbers, PostgreSQL's SQLSTATE."""

import sqlite3

import pymysql
import pytest
from sqlalchemy.engine import URL

from autopack.migrations.runtime.errors import explain

SQLITE = URL.create("sqlite", database="app.db")
MARIADB = URL.create("mysql+pymysql", host="db", database="app")


def sqlite_error(message: str, code: int | None) -> sqlite3.Error:
    error = sqlite3.OperationalError(message)
    if code is not None:
        error.sqlite_errorcode = code
    return error


def said(error: BaseException, url: URL = SQLITE) -> str | None:
    return explain(error, url, busy_timeout_s=10, lock_timeout="10s", table="llm_usage_events")


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (5, "is locked by another process"),  # SQLITE_BUSY
        (517, "is locked by another process"),  # SQLITE_BUSY_SNAPSHOT: an extended code of BUSY
        (6, "is locked by another process"),  # SQLITE_LOCKED
        (13, "is full"),  # SQLITE_FULL
        (26, "is not a SQLite database"),  # SQLITE_NOTADB
        (1032, "cannot be written"),  # SQLITE_READONLY_DBMOVED
    ],
)
def test_sqlite_failures_are_told_by_their_result_code(code: int, phrase: str):
    sentence = said(sqlite_error("a message in any wording", code))
    assert sentence is not None and phrase in sentence, sentence


def test_a_sqlite_message_without_its_code_is_not_guessed_from_its_words():
    assert said(sqlite_error("database is locked", None)) is None


def test_mariadb_failures_are_told_by_their_error_number():
    read_only = pymysql.err.OperationalError(1290, "in any wording")
    assert "accepts no writes" in said(read_only, MARIADB)
    denied = pymysql.err.OperationalError(1142, "in any wording")
    assert "lacks a privilege" in said(denied, MARIADB)
    assert said(pymysql.err.OperationalError(9999, "running with --read-only"), MARIADB) is None  # not by its words
