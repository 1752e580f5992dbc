# Verbatim from the BUILD-144 operator runbook (Verify Dashboard Totals); run by tests/test_runbook_snippets.py.
import requests

response = requests.get("http://localhost:8000/dashboard/usage?period=week")
data = response.json()

print("=== Provider Totals ===")
for provider in data["providers"]:
    print(f"{provider['provider']}: {provider['total_tokens']} tokens")
    print(f"  Splits: {provider['prompt_tokens']} + {provider['completion_tokens']}")
    print()
