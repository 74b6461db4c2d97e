"""`glip-label convert-weights` and `glip-label info`: a lean copy of a weights file, and what one holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from glip_label.cli.app import app, fail


@app.command("convert-weights", epilog="Example:\n\n  glip-label convert-weights glip_tiny_model_o365_goldg.pth "
             "glip-t.safetensors --dtype fp16")
def convert_weights(
    src: Annotated[Path, typer.Argument(help="Official GLIP .pth (memory-mapped, never loaded whole).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors with the model weights only.")],
    dtype: Annotated[str, typer.Option(help="fp32, fp16 or bf16 for float tensors.")] = "fp32",
    ema: Annotated[bool, typer.Option(help="Take 'model_ema' instead of 'model' (the authors advise 'model').")] = (
        False
    ),
) -> None:
    """Write a lean safetensors copy of a GLIP checkpoint (about a quarter of the official .pth)."""
    from glip_label.weights import CheckpointError
    from glip_label.weights import convert_weights as run_convert

    try:
        stats = run_convert(src, dst, dtype=dtype, prefer="model_ema" if ema else "model")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    Console().print(f"wrote {dst}: {stats['tensors']} tensors, {stats['bytes_out'] / 1e6:.1f} MB "
                    f"(from {stats['bytes_in'] / 1e6:.1f} MB)")


@app.command(epilog="Example:\n\n  glip-label info glip_large_model.pth")
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A .pth (official or glip-label) or .safetensors checkpoint.")],
    ema: Annotated[bool, typer.Option(help="Describe 'model_ema' instead of 'model'.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """What a checkpoint holds: architecture, parameter count, dtype, prompt tuning and stored metadata."""
    import json

    from glip_label.weights import CheckpointError, describe_checkpoint

    try:
        facts = describe_checkpoint(checkpoint, prefer="model_ema" if ema else "model")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if json_out:
        Console().print_json(json.dumps(facts))
        return
    prompt = facts["prompt_tuning"]
    chosen_by = facts["architecture_source"] or "no released layout matches"
    table = Table(title=str(checkpoint), show_header=False)
    rows = [
        ("architecture", f"{facts['architecture'] or 'unknown'} ({chosen_by})"),
        ("layout", facts["layout"]),
        ("parameters", f"{facts['parameters'] / 1e6:.1f} M in {facts['tensors']} tensors"),
        ("dtype", ", ".join(f"{k} ({v / 1e6:.1f} M)" for k, v in facts["dtypes"].items()) or "none"),
        ("prompt tuning", f"yes: {prompt['rows']} x {prompt['width']} prompt rows, {prompt['nonzero_rows']} non-zero"
         if prompt else "no"),
        ("entries", ", ".join(facts["entries"]) + f" (model from {facts['source_entry']!r})" if facts["entries"]
         else "a bare state dict"),
        ("module. prefix", "yes" if facts["module_prefix"] else "no"),
        ("stored config", json.dumps(facts["stored_config"]) if facts["stored_config"] else "none"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)

