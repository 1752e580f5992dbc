"""Autopack's LLM usage accounting: the BUILD-144 schema, its migrations and the usage dashboard."""
