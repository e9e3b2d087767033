"""Nightjar's assistant: model serving, reasoning strategies, the conversation and its feedback."""
