"""`glip-label calibrate`: per-class score thresholds from a few gold images, for annotate --thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from glip_label.cli.app import app, check_device_and_dtype, fail, setup_logging
from glip_label.cli.option_map import OptionMap, command_params, parse_tta_scales, path_text
from glip_label.cli.params import DEVICE_PARAMS, TTA_PARAMS, ConfigOpt, ModelOpt, VerboseOpt, with_params
from glip_label.runs.calibrate_options import EVIDENCE

# calibrate's CLI parameters -> CalibrateOptions fields; a parameter not named here sets the field of its name.
CALIBRATE_OPTIONS = OptionMap(
    "glip_label.runs.calibrate_options:CalibrateOptions",
    convert={"classes_file": path_text, "ontology": path_text},
    cli_only={"tta_merge": "folded with --tta and --tta-scales into the tta field (a TTAOptions)",
              "tta_scales": "folded with --tta and --tta-merge into the tta field (a TTAOptions)",
              "verbose": "logging and the progress bar of this process, not an option of the run"},
    computed={"tta": "a TTAOptions of --tta-scales and --tta-merge with --tta, else None"},
)


@app.command(
    epilog="Examples:\n\n"
    "  glip-label calibrate --model glip-t --gold gold/coco.json@gold/images --classes-file classes.txt --out runs/cal"
    "\n\n  glip-label annotate ./images --classes-file classes.txt --thresholds runs/cal/thresholds.json --out runs/x"
    "\n\n  glip-label calibrate ... --target-precision 0.9   (per class: the most recall at 90% precision)"
)
@with_params(DEVICE_PARAMS, TTA_PARAMS)
def calibrate(
    gold: Annotated[str, typer.Option(help="A small gold set (tens of images): a COCO detection json, as FILE "
                                      "or FILE@IMAGE_ROOT, or a YOLO data.yaml (its val split); its category names "
                                      "are matched to the classes.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: thresholds.json, ontology.calibrated.yaml, "
                                      "pr_curves/*.png.")] = Path("runs/calibrate"),
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Classes as 'a. b. c.'")] = None,
    classes_file: Annotated[Path | None, typer.Option(help="One class name per line.")] = None,
    ontology: Annotated[Path | None, typer.Option(help="Ontology yaml/json (classes with several prompts).")] = None,
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    target_precision: Annotated[float | None, typer.Option(help="Per class, the lowest threshold reaching this "
                                                           "precision (instead of --criterion).")] = None,
    criterion: Annotated[str, typer.Option(help="micro-f1: per-class thresholds that raise the labels' micro F1 "
                                           "(every box counts once) above one global threshold: the mean of one "
                                           "that moves a class only as far as its gold boxes give evidence "
                                           "(--evidence) and one fitted to all classes' boxes at once, each class "
                                           "kept near the others (weighing less as the class's gold boxes grow); "
                                           "class-f1: each class's own best F1 (keeps more "
                                           "wrong boxes of weak classes); global: one threshold for every "
                                           "class.")] = "micro-f1",
    evidence: Annotated[float, typer.Option(help="micro-f1: how sure the gold boxes must be (posterior probability "
                                            "that the boxes crossed are right more, or less, often than the break-"
                                            "even precision F1/2) before the evidence-based part of the mean moves "
                                            "a class's threshold from the global one. 0: that part follows the gold "
                                            "set exactly (for many gold images, where the pooled fit weighs "
                                            "little); higher stays closer to the global threshold.")] = EVIDENCE,
    floor: Annotated[float, typer.Option(help="Lowest score considered (boxes below are never kept).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 1,
    verbose: VerboseOpt = False,
    **shared: Any,  # DEVICE_PARAMS and TTA_PARAMS, see @with_params
) -> None:
    """Per-class score thresholds that maximise F1 (IoU 0.5) on a few gold images, for annotate --thresholds.

    By default each class's threshold is a weighted mean of two estimates that start from the single best global
    threshold and aim at the micro F1 of the labels (every box counts once): one moves a class where its own gold
    boxes give evidence for it, the other fits all classes' scores together and keeps each class near the others,
    and counts less the more gold boxes a class has. With a handful of gold boxes per class, thresholds that follow
    the gold set exactly fit its noise.

    --criterion class-f1 takes each class's own best F1; --criterion global one threshold for all;
    --target-precision the most recall at that precision.

    Classes the gold set does not box get the single global threshold of best micro F1.

    Use the same --tta setting here as when labeling: scores shift under augmentation.
    """
    params = command_params(locals())  # before any other name is bound

    from glip_label.runs.calibrate import calibrate as run_calibrate
    from glip_label.tta import TTAOptions

    setup_logging(verbose)
    check_device_and_dtype(params["device"], params["dtype"])
    try:
        tta_options = (TTAOptions(scales=parse_tta_scales(params["tta_scales"]), merge=params["tta_merge"])
                       if params["tta"] else None)
        result = run_calibrate(CALIBRATE_OPTIONS.build(params, tta=tta_options), progress=verbose)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    table = Table(title=f"glip-label calibrate → {out / 'thresholds.json'}",
                  caption="source: gold = chosen from its gold boxes; global = the global threshold "
                          "(--criterion global, or its gold boxes did not move it); fallback = the global threshold, "
                          "the gold set boxes no such object or the model found none of them")
    for column in ("class", "threshold", "source", "gold boxes", "P", "R", "F1", "F1 at global"):
        table.add_column(column)
    for name, entry in result["classes"].items():
        at, at_global = entry.get("at_threshold"), entry.get("at_global")
        table.add_row(name, f"{entry['threshold']:.3f}", entry["source"], str(entry["gold_boxes"]),
                      *(f"{at[k]:.3f}" if at else "-" for k in ("precision", "recall", "f1")),
                      f"{at_global['f1']:.3f}" if at_global else "-")
    Console().print(table)
    Console().print(f"micro F1 on the gold set: {result['per_class_micro']['f1']:.3f} with these thresholds, "
                    f"{result['global']['f1']:.3f} with the one global threshold {result['default']:.3f}")
    if result.get("validation"):
        v = result["validation"]
        Console().print(f"on held-out folds of the gold images ({v['folds']} folds, {v['images']} images): per-class "
                        f"{v['per_class_f1']:.3f}, global {v['global_f1']:.3f} (a noisy estimate with tens of images)")

