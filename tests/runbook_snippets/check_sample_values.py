# Verbatim from the BUILD-144 operator runbook (Post-Migration Verification: Check Sample Values); run by tests/test_runbook_snippets.py.
from autopack.database import SessionLocal
from autopack.models import LlmUsageEvent

session = SessionLocal()

# Check exact split events
exact_splits = session.query(LlmUsageEvent).filter(
    LlmUsageEvent.prompt_tokens.isnot(None),
    LlmUsageEvent.completion_tokens.isnot(None)
).limit(3).all()

print("=== Exact Split Events ===")
for event in exact_splits:
    calculated_total = (event.prompt_tokens or 0) + (event.completion_tokens or 0)
    print(f"Provider: {event.provider}, Model: {event.model}")
    print(f"  prompt_tokens: {event.prompt_tokens}")
    print(f"  completion_tokens: {event.completion_tokens}")
    print(f"  total_tokens: {event.total_tokens}")
    print(f"  Sum matches: {calculated_total == event.total_tokens}")
    print()

# Check total-only events (NULL splits)
total_only = session.query(LlmUsageEvent).filter(
    LlmUsageEvent.prompt_tokens.is_(None),
    LlmUsageEvent.completion_tokens.is_(None),
    LlmUsageEvent.total_tokens > 0
).limit(3).all()

print("=== Total-Only Events (NULL splits) ===")
for event in total_only:
    print(f"Provider: {event.provider}, Model: {event.model}")
    print(f"  prompt_tokens: {event.prompt_tokens} (NULL)")
    print(f"  completion_tokens: {event.completion_tokens} (NULL)")
    print(f"  total_tokens: {event.total_tokens} (preserved!)")
    print()

session.close()
