"""The models operators import (``from autopack.models import LlmUsageEvent``) and their metadata.

A package, so that pytest-alembic's ``all_models_register_on_metadata`` check can walk it.
"""

from autopack.database import Base, metadata
from autopack.usage_recorder import LlmUsageEvent

__all__ = ["Base", "LlmUsageEvent", "metadata"]
