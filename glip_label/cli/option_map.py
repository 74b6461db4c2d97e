"""How a command's CLI parameters become its options dataclass, written once as a table per command.

Every CLI parameter sets the options field of the same name unless the command's :class:`OptionMap` says
otherwise: `renamed` (the field has another name), `convert` (the CLI value is turned into the field's),
`cli_only` (no field takes it, and why), `computed` (fields the command works out from several parameters,
and how). The command builds its options from its parsed parameters with :meth:`OptionMap.build`, and
tests/test_cli_options.py checks that every CLI parameter of annotate, pseudo-caption, calibrate and
train-student reaches a field (with the field's default), so an option added to one side only fails loudly.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glip_label.cli.app import check_device_and_dtype, fail, setup_logging


@dataclass(frozen=True)
class OptionMap:
    """One command's CLI parameters -> fields of its options dataclass (see the module docstring).

    options: the dataclass as "module:Class", imported when needed (so the CLI starts without loading the
    heavy modules of every command).
    """

    options: str
    renamed: Mapping[str, str] = field(default_factory=dict)
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    cli_only: Mapping[str, str] = field(default_factory=dict)
    computed: Mapping[str, str] = field(default_factory=dict)

    def options_class(self) -> type:
        module, name = self.options.split(":")
        return getattr(importlib.import_module(module), name)

    def field_of(self, param: str) -> str | None:
        """The options field a CLI parameter sets; None for a CLI-only parameter."""
        return None if param in self.cli_only else self.renamed.get(param, param)

    def unmapped(self, params: list[str]) -> list[str]:
        """The CLI parameters that reach no field of the options dataclass (should be none)."""
        fields = {f.name for f in dataclasses.fields(self.options_class())}
        return [p for p in params if (target := self.field_of(p)) is not None and target not in fields]

    def build(self, params: Mapping[str, Any], **computed: Any) -> Any:
        """The options object from the command's parameters (`command_params`) and the fields
        the table lists as `computed` (they replace what a parameter of the same name would give)."""
        if set(computed) != set(self.computed):
            raise TypeError(f"{self.options}: computed fields {sorted(computed)}, but the table lists "
                            f"{sorted(self.computed)}")
        values = {}
        for param, value in params.items():
            target = self.field_of(param)
            if target is not None and target not in computed:
                values[target] = self.convert[param](value) if param in self.convert else value
        return self.options_class()(**values, **computed)


def path_text(path: Path | None) -> str | None:
    """A path option as the options keep it: its text, or None when not given."""
    return str(path) if path else None


def comma_list(text: str) -> tuple[str, ...]:
    """"coco, odvg" -> ("coco", "odvg")."""
    return tuple(f.strip() for f in text.split(",") if f.strip())


def or_empty(values: list[str] | None) -> tuple[str, ...] | list[str]:
    """A repeatable option not given (None) as an empty sequence."""
    return values or ()


def parse_tta_scales(text: str) -> tuple[float, ...]:
    """--tta-scales "0.8,1,1.2" as the options take it; a bad list is the one-line error exit."""
    from glip_label.tta import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        fail(str(exc))


def command_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """A command's parameter values as Typer passed them: the command's ``locals()`` taken first thing in its
    body (before any other name is bound there), with the values of its `**shared` groups merged in."""
    own = {name: value for name, value in values.items() if name != "shared"}
    return {**own, **values.get("shared", {})}


def labeling_options(table: OptionMap, params: Mapping[str, Any]) -> Any:
    """The options of a labeling command (annotate, pseudo-caption) from its parameters (`command_params`),
    after setting up logging and checking --device / --dtype; --random-init runs without a --model."""
    setup_logging(params["verbose"])
    check_device_and_dtype(params["device"], params["dtype"])
    return table.build(params, model=None if params["random_init"] else params["model"])
