"""The `glip-label` command line. Each command parses options and calls one library function, nothing more.

`glip_label.cli.app` holds the Typer app; each command module registers its commands on it when imported
here, so `glip_label.cli:app` (the console script) and `python -m glip_label` see every command.
"""

from glip_label.cli import annotate, calibrate, pseudo_caption, train, weights  # noqa: F401 - registers them
from glip_label.cli.app import app


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = ["app", "main"]
