"""The errors of the HTTP libraries Nightjar's clients run on: httpx (openai up to 2, huggingface_hub up to
1) and httpx2 (their later majors) raise classes of the same names from different modules, and both may be
installed; code that catches one of them asks here for each library's class."""

from __future__ import annotations

import importlib
from functools import cache

LIBRARIES = ("httpx", "httpx2")


@cache
def client_errors(name: str) -> tuple[type[Exception], ...]:
    """The exception class `name` (HTTPError, TransportError, ConnectError, ...) of each installed library."""
    found = []
    for library in LIBRARIES:
        try:
            found.append(getattr(importlib.import_module(library), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
