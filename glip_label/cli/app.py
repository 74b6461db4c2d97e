"""The `glip-label` Typer app, and what every command shares: logging, the one-line error exit, device checks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from glip_label.cli.params import HUB_PRESETS_TEXT
from glip_label.presets import HUB_REPO

T = TypeVar("T")

app = typer.Typer(
    name="glip-label",
    help="Label images and caption corpora with the GLIP grounded detector, and train better students on them.\n\n"
    f"Weights: --model takes a hub preset ({HUB_PRESETS_TEXT}; downloaded once from {HUB_REPO}) or a local "
    ".pth/.safetensors file.\n\n"
    "Every command lets glibc's malloc keep large freed blocks for the next image (faster on CPU); set "
    "GLIP_LABEL_DEFAULT_MALLOC=1 to keep the default allocator.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


@app.callback()
def startup() -> None:
    # Large freed tensors are kept for reuse instead of being unmapped and faulted in again on every image
    # (glip_label.runtime; set GLIP_LABEL_DEFAULT_MALLOC=1 to keep the default allocator).
    from glip_label.runtime import keep_freed_memory

    keep_freed_memory()


def setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def config_arg(config: list[str] | None) -> str | list[str] | None:
    """--config as load_model takes it: None, one preset/yaml, or yamls to merge in order."""
    if not config:
        return None
    return config[0] if len(config) == 1 else list(config)


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, however narrow the terminal
    raise typer.Exit(code=2)


def fail_run(message: str) -> NoReturn:
    """A run that labeled nothing (its outputs and errors.jsonl say why): exit 1, where bad input exits 2."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=1)


def run_labeling(run: Callable[[Any], T], options: Any, bad_input: tuple[type[Exception], ...] = ()) -> T:
    """annotate's or pseudo-caption's job: a run that labeled nothing exits 1 (fail_run), bad input exits 2."""
    from glip_label.runs.journal import JournalError
    from glip_label.runs.labeler import NothingLabeledError

    try:
        return run(options)
    except NothingLabeledError as exc:
        fail_run(str(exc))
    except (ValueError, FileNotFoundError, JournalError, *bad_input) as exc:
        fail(str(exc))


def check_device_and_dtype(device: str | None, dtype: str | None = None, amp: str | None = None) -> None:
    """--device / --dtype / --amp checked before any work: one error line and exit 2 (e.g. cuda without a GPU)."""
    from glip_label.precision import HALF_DTYPES, check_device, parse_amp, parse_dtype

    try:
        parsed = check_device(device)
        half = dtype is not None and parse_dtype(dtype) in HALF_DTYPES
        parse_amp(amp)
    except ValueError as exc:
        fail(str(exc))
    if half and (parsed is None or parsed.type == "cpu"):
        # Measured on 2-core CPUs without AVX512 (benchmarks/README.md): GLIP-T 16 s fp32, 134 s bf16, 450 s fp16.
        console.print(f"[yellow]note:[/] --dtype {dtype} on a CPU is usually much slower than fp32 (half-precision "
                      "kernels need AVX512-BF16/AMX); half precision pays on GPUs.")

