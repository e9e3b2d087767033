"""Retrieval's own error: a problem the user can act on (the CLI prints it as one line, exit code 2)."""


class RetrievalError(Exception):
    """The index, a document path or a retrieval setting is unusable; the message says what to do."""
