"""Nightjar's retrieval: documents -> index -> ranked, cited chunks."""
