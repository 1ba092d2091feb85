"""The `choice` field: a string restricted to the values listed in its metadata."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def choice(default: str, choices: tuple[str, ...]) -> Any:
    return field(default=default, metadata={"choices": choices})
