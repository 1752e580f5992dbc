# Verbatim from the BUILD-144 operator runbook (Step 3, Option A: Quick Check); run by tests/test_runbook_snippets.py.
from autopack.database import SessionLocal, engine
from sqlalchemy import inspect, text, func

# Check column exists and is non-nullable
inspector = inspect(engine)
columns = {col['name']: col for col in inspector.get_columns('llm_usage_events')}

total_tokens_col = columns.get('total_tokens')
prompt_tokens_col = columns.get('prompt_tokens')
completion_tokens_col = columns.get('completion_tokens')

print(f"✅ total_tokens exists: {total_tokens_col is not None}")
print(f"✅ total_tokens NOT NULL: {total_tokens_col['nullable'] == False}")
print(f"✅ prompt_tokens nullable: {prompt_tokens_col['nullable'] in (True, None)}")
print(f"✅ completion_tokens nullable: {completion_tokens_col['nullable'] in (True, None)}")

# Check population rate
session = SessionLocal()
from autopack.models import LlmUsageEvent

total_count = session.query(func.count(LlmUsageEvent.id)).scalar()
non_null_total = session.query(func.count(LlmUsageEvent.id)).filter(
    LlmUsageEvent.total_tokens > 0
).scalar()

print(f"\nTotal events: {total_count}")
print(f"Events with total_tokens>0: {non_null_total} ({non_null_total/total_count*100:.1f}%)")

# Check NULL split patterns
null_splits_count = session.query(func.count(LlmUsageEvent.id)).filter(
    LlmUsageEvent.prompt_tokens.is_(None),
    LlmUsageEvent.completion_tokens.is_(None)
).scalar()

print(f"Total-only events (NULL splits): {null_splits_count} ({null_splits_count/total_count*100:.1f}%)")

session.close()
