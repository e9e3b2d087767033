"""Nightjar's trainer: replay buffer -> LoRA -> merged, requantized, evaluated model versions."""
