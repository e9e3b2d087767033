"""The merge, export and quantize stages: the candidate model file, made from the float master and the
adapters (the served version's, then the new ones), written as a float GGUF with the base's metadata and
quantized to the served type."""

from __future__ import annotations

from typing import Any

from trainer.context import RunContext


def merge(ctx: RunContext) -> dict[str, Any]:
    """The float model with all the adapters merged in, as a state dict."""
    from trainer.objectives import load_float

    return load_float(ctx.master, ctx.adapters).state_dict()


def export(ctx: RunContext, merged: dict[str, Any]) -> None:
    """Write the merged model as a float GGUF (`ctx.float_gguf`) with the base's metadata."""
    from trainer.export import export_gguf

    export_gguf(merged, ctx.base_gguf, ctx.float_gguf, ctx.config.train.export_type.upper())


def quantize(ctx: RunContext, again: bool = False) -> None:
    """Quantize the float GGUF into the candidate, in the served type, which goes into the plan; `again`:
    a scaled-down update (the eval stage), which starts at the type the whole update was served in."""
    from trainer.quantize import base_qtype, quantize_served

    base_type = base_qtype(ctx.base_gguf)
    start = ctx.plan.quant_type if again else None
    ctx.plan.quant_type, ctx.plan.update_kept = quantize_served(
        ctx.config.train, ctx.base_gguf, ctx.float_gguf, ctx.candidate, base_type, ctx.notes, start
    )
