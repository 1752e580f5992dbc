"""Settings read from the environment: the run token cap the usage dashboard measures each provider against.

``AUTOPACK_RUN_TOKEN_CAP``: a whole number of tokens, default 5,000,000; ``0`` means no cap. When it is unset,
``RUN_TOKEN_CAP`` (the name upstream Autopack reads) is used instead. Whitespace around the value is ignored
(a secrets file's trailing newline); anything else that is not a whole number from 0 up is refused in one
sentence naming the variable, never read as a default.
"""

import os
import re

from starlette.types import Scope

from autopack.started_settings import started_settings

RUN_TOKEN_CAP_ENV = "AUTOPACK_RUN_TOKEN_CAP"
UPSTREAM_RUN_TOKEN_CAP_ENV = "RUN_TOKEN_CAP"
DEFAULT_RUN_TOKEN_CAP = 5_000_000
# the sums it is compared with are BIGINT; a longer string of digits is a typo, not a cap
MAX_RUN_TOKEN_CAP = 2**63 - 1
_WHOLE_NUMBER = re.compile(r"[0-9]+")


class RunTokenCapError(ValueError):
    """The run token cap variable is set to something that is not a whole number of tokens."""


def run_token_cap(scope: Scope | None = None) -> int:
    """The configured run token cap (0: no cap), or ``RunTokenCapError`` in one sentence naming the variable: as
    start-up read it, or from the environment where start-up did not run."""
    started = started_settings(scope or {})
    if started is not None:
        return started.run_token_cap
    for name in (RUN_TOKEN_CAP_ENV, UPSTREAM_RUN_TOKEN_CAP_ENV):
        raw = os.environ.get(name)
        if raw is not None:
            return whole_number_of_tokens(name, raw)
    return DEFAULT_RUN_TOKEN_CAP


def whole_number_of_tokens(name: str, raw: str) -> int:
    """``raw`` as a cap, or ``RunTokenCapError`` in one sentence naming the variable ``name``."""
    value = raw.strip(" \t\r\n")
    if _WHOLE_NUMBER.fullmatch(value) and len(value) <= len(str(MAX_RUN_TOKEN_CAP)):
        cap = int(value)
        if cap <= MAX_RUN_TOKEN_CAP:
            return cap
    raise RunTokenCapError(
        f"{name} must be a whole number of tokens from 0 (no cap) to {MAX_RUN_TOKEN_CAP}, got {raw!r}: "
        f"set it to e.g. 5000000, or unset it to use the default of {DEFAULT_RUN_TOKEN_CAP:,}."
    )
