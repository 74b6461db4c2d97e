"""CLI parameters that several commands take alike, declared once: their types and help, and whole groups.

An option type (`ModelOpt`, `VerboseOpt`...) is written once here and used in each command's signature.
A group (`DEVICE_PARAMS`, `ENGINE_PARAMS`, `TTA_PARAMS`, `REPORT_PARAMS`; `LABELING_PARAMS`, these and --verbose)
is a run of parameters several commands take with the same defaults; `with_params` adds it to a command,
whose `**shared` parameter receives the values (Typer reads the command's signature, so the options
appear in its --help and are parsed like its own).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from glip_label.presets import ARCHITECTURE_NAMES, HUB_PRESET_NAMES, HUB_REPO

# Preset names in --help come from the one preset table, so a new preset shows up here by itself.
HUB_PRESETS_TEXT = ", ".join(HUB_PRESET_NAMES)
ARCHITECTURES_TEXT = ", ".join(ARCHITECTURE_NAMES)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help=f"Hub preset ({HUB_PRESETS_TEXT}; downloaded once from {HUB_REPO}) or a local "
                 ".pth/.safetensors checkpoint. [dim]e.g. --model glip-t or --model runs/student/model_final.pth[/]"),
]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option("--config", "-c", metavar="PRESET|YAML",
                 help=f"Architecture: a preset ({ARCHITECTURES_TEXT}) or an official GLIP yaml; "
                 "repeat it to merge a task yaml over its base, as the official tools do "
                 "(--config glip_Swin_T_O365_GoldG.yaml --config odinw/CottontailRabbits.yaml). Default: from the "
                 "hub preset, the checkpoint's own metadata, or recognised from the checkpoint's keys and shapes."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32 (default, exact), fp16 (T4/V100 GPUs) or bf16 (A100/H100): half "
                                       "precision, near-identical boxes; runs on CPU too, but is fast on GPUs only.")]
EngineOpt = Annotated[str, typer.Option(help="local, or ray (a pool of long-lived Ray actors; same records as "
                                        "local).")]
RayAddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address ('auto' after 'ray start'); default: "
                                                   "a local instance.")]
RayActorsOpt = Annotated[int, typer.Option(help="Model actors in the Ray pool (each loads the model once).")]
RayCpusOpt = Annotated[float, typer.Option(help="CPUs per actor (fractions allowed).")]
RayGpusOpt = Annotated[float, typer.Option(help="GPUs per actor. [dim]e.g. 1 with --ray-actors 8 on an 8-GPU node[/]")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch threads per process (equal counts give bit-identical "
                                                "records across engines).")]
TTAOpt = Annotated[bool, typer.Option(help="Test-time augmentation as the official GLIP test code offers it: every "
                                      "image at several scales and mirrored, boxes merged per class (slower: one "
                                      "forward pass per view).")]
TTAMergeOpt = Annotated[str, typer.Option(help="How --tta merges the views' boxes: nms (class-wise, official) or wbf "
                                          "(weighted box fusion).")]
TTAScalesOpt = Annotated[str, typer.Option(help="--tta scales, as factors of the model's test size.")]
ReportOpt = Annotated[bool, typer.Option(help="Also write OUT/report.html: boxes and score histograms per class, the "
                                         "highest- and lowest-scoring boxes as crops, the errors (one file, opens "
                                         "offline in any browser).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v")]

Command = TypeVar("Command", bound=Callable[..., Any])


def param_group(**params: tuple[Any, Any]) -> tuple[inspect.Parameter, ...]:
    """A group of CLI parameters: name=(option type, default), in the order they appear in --help."""
    return tuple(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                                   default=default) for name, (annotation, default) in params.items())


DEVICE_PARAMS = param_group(device=(DeviceOpt, "cpu"), dtype=(DtypeOpt, "fp32"))
ENGINE_PARAMS = param_group(
    engine=(EngineOpt, "local"),
    ray_address=(RayAddressOpt, None),
    ray_actors=(RayActorsOpt, 1),
    ray_cpus_per_actor=(RayCpusOpt, 1.0),
    ray_gpus_per_actor=(RayGpusOpt, 0.0),
    threads=(ThreadsOpt, None),
)
TTA_PARAMS = param_group(tta=(TTAOpt, False), tta_merge=(TTAMergeOpt, "nms"), tta_scales=(TTAScalesOpt, "0.8,1,1.2"))
REPORT_PARAMS = param_group(report=(ReportOpt, False))
VERBOSE_PARAMS = param_group(verbose=(VerboseOpt, False))
# annotate and pseudo-caption: all of the above, --verbose last
LABELING_PARAMS = (*DEVICE_PARAMS, *ENGINE_PARAMS, *TTA_PARAMS, *REPORT_PARAMS, *VERBOSE_PARAMS)


def with_params(*groups: tuple[inspect.Parameter, ...]) -> Callable[[Command], Command]:
    """Give a command the parameters of `groups` after its own options (before --verbose, which stays last in
    --help); the command's `**shared` parameter receives their values (Typer passes every value by name)."""

    def add(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = next((i for i, p in enumerate(own) if p.name == "verbose"), len(own))
        added = [p for group in groups for p in group]
        command.__signature__ = signature.replace(parameters=[*own[:at], *added, *own[at:]])
        return command

    return add

