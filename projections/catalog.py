"""The read models by name and by category."""

from __future__ import annotations

from projections import projects, tasks, users
from projections.model import ReadModel

MODELS: dict[str, ReadModel] = {m.name: m for m in (users.MODEL, projects.MODEL, tasks.MODEL)}
BY_CATEGORY: dict[str, ReadModel] = {m.category: m for m in MODELS.values()}
