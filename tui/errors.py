"""Errors a user can act on, shown as a notification instead of ending the app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from textual.dom import DOMNode

from assistant.errors import NightjarError


@contextmanager
def reported(node: DOMNode) -> Iterator[None]:
    """Run a block; a `NightjarError` in it becomes an error notification (the app keeps running)."""
    try:
        yield
    except NightjarError as exc:
        node.notify(str(exc), title="error", severity="error", timeout=10)
