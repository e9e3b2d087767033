"""Both HTTP libraries' errors are caught where either may be raised (httpx up to openai 2 and
huggingface_hub 1, httpx2 after them)."""

from __future__ import annotations

import importlib.util

import pytest

from assistant.http_errors import LIBRARIES, client_errors
from assistant.pull import _transport_error


def test_each_installed_librarys_class_is_named_and_unknown_names_give_none():
    installed = [lib for lib in LIBRARIES if importlib.util.find_spec(lib)]
    found = client_errors("TransportError")
    assert [cls.__module__.split(".")[0] for cls in found] == installed
    assert client_errors("NoSuchErrorClass") == ()


@pytest.mark.parametrize("library", [lib for lib in LIBRARIES if importlib.util.find_spec(lib)])
def test_a_transport_error_is_found_along_the_cause_chain(library: str):
    connect = importlib.import_module(library).ConnectError("connection refused")
    try:
        try:
            raise connect
        except Exception as inner:
            raise RuntimeError("the hub client gave up") from inner
    except RuntimeError as outer:
        assert _transport_error(outer) is connect
    assert _transport_error(RuntimeError("not a transport error")) is None
