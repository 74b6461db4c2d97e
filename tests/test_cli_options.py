"""Options are declared once: every CLI option of annotate, pseudo-caption, calibrate and train-student reaches
a field of the command's options dataclass, through the command's one mapping table (`OptionMap`).

Read from the Typer/click command itself, so a CLI option added without a field (or a field renamed without
the CLI) fails here, naming the option.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.cli.annotate import ANNOTATE_OPTIONS
from glip_label.cli.calibrate import CALIBRATE_OPTIONS
from glip_label.cli.option_map import OptionMap
from glip_label.cli.pseudo_caption import PSEUDO_CAPTION_OPTIONS
from glip_label.cli.train import TRAIN_STUDENT_OPTIONS
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.calibrate import CalibrateOptions
from glip_label.runs.pseudo_caption import PseudoCaptionOptions
from glip_label.runs.train_student import TrainStudentOptions

TABLES: dict[str, tuple[OptionMap, type]] = {
    "annotate": (ANNOTATE_OPTIONS, AnnotateOptions),
    "pseudo-caption": (PSEUDO_CAPTION_OPTIONS, PseudoCaptionOptions),
    "calibrate": (CALIBRATE_OPTIONS, CalibrateOptions),
    "train-student": (TRAIN_STUDENT_OPTIONS, TrainStudentOptions),
}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _params(name: str) -> list[str]:
    return [param.name for param in _command(name).params]


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_cli_option_maps_to_a_field_of_the_options(command):
    table, options_class = TABLES[command]
    assert table.options_class() is options_class
    unmapped = table.unmapped(_params(command))
    assert not unmapped, (
        f"`glip-label {command}` option(s) {['--' + p.replace('_', '-') for p in unmapped]} set no field of "
        f"{options_class.__name__}: add the field, or map the option in the command's OptionMap "
        f"(renamed / convert / cli_only)")


@pytest.mark.parametrize("command", sorted(TABLES))
def test_the_mapping_table_names_only_real_options_and_fields(command):
    table, options_class = TABLES[command]
    params = set(_params(command))
    fields = {f.name for f in dataclasses.fields(options_class)}
    stale = sorted((set(table.renamed) | set(table.convert) | set(table.cli_only)) - params)
    assert not stale, f"{command}: the OptionMap names CLI options the command does not have: {stale}"
    assert not set(table.renamed.values()) - fields, f"{command}: renamed to fields that do not exist"
    assert not set(table.computed) - fields, f"{command}: computed fields that do not exist"
    assert not set(table.cli_only) & set(table.renamed), f"{command}: an option is both CLI-only and renamed"


@pytest.mark.parametrize("command", sorted(TABLES))
def test_cli_defaults_are_the_options_defaults(command):
    """An option passed through unchanged has one default, the field's (where the field has one)."""
    table, options_class = TABLES[command]
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    differ = []
    for param in _command(command).params:
        target = table.field_of(param.name)
        if target is None or param.name in table.convert or target in table.computed:
            continue
        spec = fields[target]
        if spec.default is not dataclasses.MISSING and spec.default != param.default:
            differ.append(f"--{param.name.replace('_', '-')}: CLI {param.default!r}, {target} {spec.default!r}")
    assert not differ, f"{command}: {differ}"


def _options_given_to(monkeypatch, module, function: str, args: list[str]):
    """The options object the command builds from `args` (the run itself replaced by a stand-in)."""
    captured = []

    def stand_in(options, *rest, **keywords):
        captured.append(options)
        raise ValueError("stand-in ran")

    monkeypatch.setattr(module, function, stand_in)
    result = CliRunner().invoke(app, args)
    assert "stand-in ran" in result.output, result.output
    return captured[0]


def test_annotate_options_are_built_through_the_table(monkeypatch):
    import glip_label.runs.annotate

    options = _options_given_to(monkeypatch, glip_label.runs.annotate, "annotate", [
        "annotate", "imgs", "--prompt", "a. b.", "--format", "coco, yolo", "--threads", "2", "--classes-file",
        "c.txt", "--config", "glip-t", "--tta-scales", "1,1.5", "--random-init", "--engine", "ray", "--report"])
    assert isinstance(options, AnnotateOptions)
    assert options.formats == ("coco", "yolo")
    assert options.torch_threads == 2
    assert options.classes_file == "c.txt" and options.ontology is None and options.thresholds is None
    assert options.config == "glip-t"
    assert options.tta_scales == (1.0, 1.5)
    assert options.model is None and options.random_init
    assert options.engine == "ray" and options.report
    assert options.source == "imgs" and options.out == Path("runs/annotate")


def test_train_student_options_are_built_through_the_table(monkeypatch):
    import glip_label.runs.train_student

    options = _options_given_to(monkeypatch, glip_label.runs.train_student, "train_student", [
        "train-student", "--out", "o", "--gold", "g.json", "--workers", "3", "--scales", "480,560"])
    assert isinstance(options, TrainStudentOptions)
    assert options.num_workers == 3
    assert options.gold == ["g.json"] and options.pseudo == () and options.val == ()
    assert options.scales == (480, 560)


def test_build_refuses_computed_fields_the_table_does_not_list():
    with pytest.raises(TypeError, match="computed"):
        TRAIN_STUDENT_OPTIONS.build({}, model="x")


REPO = Path(__file__).resolve().parents[1]


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every `glip-label ...` line that --help epilogs and the README show: (where, arguments). Backslash
    continuations are joined; a trailing `# comment` or `   (note)` is cut; lines with `...` are outlines."""
    texts = [(name, command.epilog or "") for name, command in typer.main.get_command(app).commands.items()]
    texts.append(("README.md", (REPO / "README.md").read_text(encoding="utf-8")))
    shown = []
    for where, text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line.startswith("glip-label "):
                continue
            body = re.sub(r"\s+#.*$", "", re.sub(r"\s{2,}\(.*\)\s*$", "", line))
            args = shlex.split(body)[1:]
            if "..." not in args:
                shown.append((where, args))
    return shown


def test_every_command_the_help_and_readme_show_parses_today():
    """A renamed or removed option, or a bundled file moved, breaks the examples users copy first: each shown
    command must parse with the CLI as it is (click's own parser, nothing runs), and name only bundled files
    that exist."""
    shown = _shown_commands()
    assert len(shown) >= 40 and {args[0] for _, args in shown} >= {*TABLES, "merge", "evaluate", "demo", "info"}
    for where, args in shown:
        try:
            _command(args[0]).make_context(args[0], args[1:])
        except click.exceptions.ClickException as exc:
            raise AssertionError(f"{where}: glip-label {shlex.join(args)}: {exc.format_message()}") from None
        for arg in args:
            if arg.startswith(("prompts/", "examples/")):
                assert (REPO / arg).exists(), f"{where}: glip-label {shlex.join(args)}: {arg} is not in the repo"
