"""Nightjar's terminal UI (Textual). It holds presentation only; logic lives in the assistant's API."""
