"""`nightjar serve`: an OpenAI-compatible HTTP server over the assistant (Starlette + uvicorn).

- `app`: the routes (chat completions, models, feedback), token check, binding.
- `schema`: requests parsed into typed dataclasses, OpenAI's error shape.
- `queue`: the one model's fair FIFO queue.

Nothing here is needed by another face: answers, feedback and recording are the `Assistant`'s.
"""
