"""Per-class score thresholds from matched detections: the math of `glip-label calibrate`, model-free.

Each class's detections on the gold images, matched to its gold boxes (`ClassMatches`), give its
precision-recall curve. Three criteria:
- `micro-f1` (default): the per-class thresholds that together maximise the micro F1 of the labels, the
  measure of a labeled dataset (every box counts once). A box raises micro F1 exactly when it is a true
  positive with probability above F/2 (Lipton et al. 2014, "Thresholding classifiers to maximize F1"), so
  the best thresholds sit where each class's boxes stop being right more than F/2 of the time.
  With tens of gold images a class has a handful of gold boxes, and thresholds fitted to them can be noise
  (measured in the demo's world, benchmarks/label_quality.py: on one seed the per-class thresholds lost to
  one global threshold on held-out pictures). So the per-class thresholds are kept only when they validate:
  chosen on all but one fold of the gold images and scored on that fold, in turn, their pooled micro F1 must
  beat that of one global threshold chosen the same way; otherwise every class gets the global threshold.
- `class-f1`: per class, the threshold of that class's best F1. Each class then keeps boxes down to its own
  F_c/2, so a weak class (low F_c) keeps many wrong boxes.
- `target_precision`: per class, the lowest threshold that reaches it (most recall at that precision).
Classes the gold set does not box (no gold box on these images), or where the model finds none of the gold
boxes, get the fallback: the single global threshold that maximises micro F1 over the classes it does box.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
THRESHOLDS_VERSION = 1
CRITERIA = ("micro-f1", "class-f1")
VALIDATION_FOLDS = 8


def _known(index: np.ndarray | None, n: int) -> np.ndarray:
    return index if index is not None else np.full(n, -1, dtype=np.int64)


@dataclass
class ClassMatches:
    """A class's detections on the gold images: scores [N], whether each is a true positive, and how many
    gold boxes there are (the recall's denominator). `image_index` [N] and `gold_image_index` [n_gold] say
    which gold image each detection and gold box is from (-1 or None: unknown), for validation by folds."""

    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    is_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    n_gold: int = 0
    image_index: np.ndarray | None = None
    gold_image_index: np.ndarray | None = None

    def add(self, scores: np.ndarray, is_tp: np.ndarray, n_gold: int, image: int = -1) -> None:
        self.image_index = np.concatenate([_known(self.image_index, len(self.scores)),
                                           np.full(len(scores), image, dtype=np.int64)])
        self.gold_image_index = np.concatenate([_known(self.gold_image_index, self.n_gold),
                                                np.full(n_gold, image, dtype=np.int64)])
        self.scores = np.concatenate([self.scores, scores])
        self.is_tp = np.concatenate([self.is_tp, is_tp])
        self.n_gold += n_gold

    def images(self) -> np.ndarray | None:
        """The gold images this class's detections and gold boxes come from; None when any is unknown."""
        found = np.r_[_known(self.image_index, len(self.scores)), _known(self.gold_image_index, self.n_gold)]
        return None if (found < 0).any() else np.unique(found)

    def of_images(self, images: np.ndarray) -> ClassMatches:
        """The detections and gold boxes of these images only (image indices must be known)."""
        keep, keep_gold = np.isin(self.image_index, images), np.isin(self.gold_image_index, images)
        return ClassMatches(self.scores[keep], self.is_tp[keep], int(keep_gold.sum()), self.image_index[keep],
                            self.gold_image_index[keep_gold])


@dataclass
class PRCurve:
    """Precision / recall / F1 when keeping boxes scoring >= thresholds[k] (thresholds descending)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray  # true positives kept at each threshold
    kept: np.ndarray  # boxes kept at each threshold


def pr_curve(scores: np.ndarray, is_tp: np.ndarray, n_gold: int) -> PRCurve:
    """Every distinct score is a candidate threshold; ties are kept or dropped together."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], is_tp[order].astype(np.float64)
    tp, kept = np.cumsum(hits), np.arange(1, len(hits) + 1, dtype=np.float64)
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    tp, kept, thresholds = tp[last_of_tie], kept[last_of_tie], sorted_scores[last_of_tie]
    precision = tp / kept
    recall = tp / n_gold if n_gold else np.zeros_like(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return PRCurve(thresholds, precision, recall, f1, tp, kept)


def prf_at(scores: np.ndarray, is_tp: np.ndarray, n_gold: int, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (and counts) of the boxes scoring >= threshold."""
    keep = scores >= threshold
    tp, kept = int(is_tp[keep].sum()), int(keep.sum())
    precision = tp / kept if kept else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "kept": kept, "gold": n_gold}


def choose_threshold(scores: np.ndarray, is_tp: np.ndarray, n_gold: int, target_precision: float | None = None,
                     ) -> tuple[float | None, bool]:
    """The threshold maximising F1 (ties: the highest threshold, fewest boxes), or with target_precision
    the lowest threshold whose precision reaches it (most recall at that precision).

    Returns (threshold, met); threshold None when there is no true positive to keep (the caller falls
    back); met False when target_precision is never reached (then the highest-precision threshold).
    """
    curve = pr_curve(scores, is_tp, n_gold)
    if not len(curve.thresholds) or not is_tp.any():
        return None, False
    if target_precision is None:
        best = int(np.argmax(curve.f1))  # first maximum = highest threshold among ties
        return float(curve.thresholds[best]), True
    reaching = np.nonzero(curve.precision >= target_precision)[0]
    if len(reaching):
        return float(curve.thresholds[reaching[-1]]), True
    return float(curve.thresholds[int(np.argmax(curve.precision))]), False


def micro_f1_thresholds(per_class: dict[str, ClassMatches], fixed: dict[str, float], start_f1: float = 0.0,
                        max_rounds: int = 100) -> dict[str, float]:
    """Thresholds for the classes of `per_class` that maximise micro F1 together with the `fixed` ones.

    Micro F1 = 2 TP / (kept + gold) is a ratio; Dinkelbach's method maximises it exactly: for a fixed
    lambda, max of 2 TP - lambda * kept splits into one search per class over its own thresholds, and
    lambda = the F1 of that choice climbs to the optimum in a few rounds (it stops when F1 no longer rises).
    Each class keeps at least its top box (ties of the maximum: the highest threshold, fewest boxes).
    Classes without a true positive belong in `fixed` (their boxes at that threshold still count as kept).
    """
    curves = {name: pr_curve(m.scores, m.is_tp, m.n_gold) for name, m in per_class.items()}
    fixed_kept = sum(int((m.scores >= fixed[name]).sum()) for name, m in per_class.items() if name in fixed)
    curves = {name: c for name, c in curves.items() if name not in fixed and len(c.thresholds)}
    gold = sum(m.n_gold for m in per_class.values())
    lam, best = start_f1, {}
    for _ in range(max_rounds):
        pick = {name: int(np.argmax(2 * c.tp - lam * c.kept)) for name, c in curves.items()}
        tp = sum(c.tp[pick[name]] for name, c in curves.items())
        kept = fixed_kept + sum(c.kept[pick[name]] for name, c in curves.items())
        f1 = 2 * tp / (kept + gold) if kept + gold else 0.0
        if best and f1 <= lam + 1e-12:
            break
        lam, best = f1, {name: float(c.thresholds[pick[name]]) for name, c in curves.items()}
    return best


def micro_matches(per_class: dict[str, ClassMatches], classes: Sequence[str] | None = None) -> ClassMatches:
    """All classes' detections pooled (micro averaging)."""
    pooled = ClassMatches()
    for name in classes if classes is not None else per_class:
        m = per_class[name]
        pooled.add(m.scores, m.is_tp, m.n_gold)
    return pooled


def micro_prf(per_class: dict[str, ClassMatches], thresholds: dict[str, float]) -> dict[str, float]:
    """Micro precision / recall / F1 with a threshold per class."""
    tp = kept = gold = 0
    for name, m in per_class.items():
        keep = m.scores >= thresholds[name]
        tp, kept, gold = tp + int(m.is_tp[keep].sum()), kept + int(keep.sum()), gold + m.n_gold
    precision = tp / kept if kept else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "kept": kept, "gold": gold}


def calibrate_thresholds(per_class: dict[str, ClassMatches], categories: Sequence[str],
                         target_precision: float | None = None, floor: float = 0.0,
                         criterion: str = "micro-f1") -> dict[str, Any]:
    """thresholds.json's content from the matched detections of each category (see the module docstring).

    per_class holds the categories the gold set boxes (n_gold > 0 there); the others fall back to the
    global threshold (best micro F1 over the boxed categories, or the target precision when given).
    criterion ("micro-f1" or "class-f1") applies when no target_precision is given.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    boxed = [c for c in categories if c in per_class and per_class[c].n_gold > 0]
    if not boxed:
        raise ValueError("the gold set boxes none of the classes: nothing to calibrate on")
    boxed_matches = {c: per_class[c] for c in boxed}
    global_threshold, global_met = pooled_threshold(boxed_matches, target_precision)
    joint: dict[str, float] = {}
    validation = None
    if target_precision is None and criterion == "micro-f1":
        joint = joint_thresholds(boxed_matches, global_threshold)
        validation = cross_validate(boxed_matches)
        if validation is None:
            log.warning("per-class thresholds not validated: fewer than %d gold images (or boxes of unknown "
                        "image); they may fit the gold set's noise", 2 * VALIDATION_FOLDS)
        elif validation["chosen"] == "global":
            log.info("per-class thresholds did not validate (micro F1 %.3f vs %.3f for one global threshold on "
                     "held-out folds): every class gets the global threshold",
                     validation["per_class_f1"], validation["global_f1"])
    thresholds: dict[str, float] = {}
    classes: dict[str, Any] = {}
    for name in categories:
        m = per_class.get(name)
        if m is None or m.n_gold == 0:
            thresholds[name] = global_threshold
            classes[name] = {"threshold": global_threshold, "source": "fallback", "gold_boxes": 0}
            continue
        if joint:
            chosen, met = (joint[name] if m.is_tp.any() else None), True
        else:
            chosen, met = choose_threshold(m.scores, m.is_tp, m.n_gold, target_precision)
        source = "gold" if chosen is not None else "fallback"
        if chosen is not None and validation is not None and validation["chosen"] == "global":
            chosen, source = global_threshold, "global (per-class did not validate)"
        chosen = max(floor, chosen) if chosen is not None else global_threshold
        thresholds[name] = chosen
        classes[name] = {
            "threshold": chosen, "source": source, "gold_boxes": m.n_gold,
            **({"target_met": met} if target_precision is not None and source == "gold" else {}),
            "at_threshold": prf_at(m.scores, m.is_tp, m.n_gold, chosen),
            "at_global": prf_at(m.scores, m.is_tp, m.n_gold, global_threshold),
        }  # fmt: skip
    gold_only = {c: thresholds[c] for c in boxed}
    return {
        "version": THRESHOLDS_VERSION,
        "criterion": criterion if target_precision is None else f"precision>={target_precision}",
        "iou": MATCH_IOU,
        "default": global_threshold,
        "thresholds": thresholds,
        "classes": classes,
        "global": {"threshold": global_threshold, **({"target_met": global_met} if target_precision else {}),
                   **micro_prf(boxed_matches, dict.fromkeys(boxed, global_threshold))},
        "per_class_micro": micro_prf(boxed_matches, gold_only),
        "validation": validation,
    }



def pooled_threshold(per_class: dict[str, ClassMatches], target_precision: float | None = None,
                     ) -> tuple[float, bool]:
    """The single threshold for all these classes pooled (best micro F1, or the target precision): (threshold,
    met). Raises ValueError when no class has a true positive (no threshold can be chosen)."""
    pooled = micro_matches(per_class)
    threshold, met = choose_threshold(pooled.scores, pooled.is_tp, pooled.n_gold, target_precision)
    if threshold is None:
        raise ValueError("the model found none of the gold boxes (no true positive at IoU 0.5): "
                         "no threshold can be calibrated")
    return threshold, met


def joint_thresholds(per_class: dict[str, ClassMatches], global_threshold: float) -> dict[str, float]:
    """Per-class thresholds of best micro F1 together, climbing from the global threshold; classes without a
    true positive keep the global one."""
    no_tp = {c: global_threshold for c, m in per_class.items() if not m.is_tp.any()}
    start = micro_prf(per_class, dict.fromkeys(per_class, global_threshold))["f1"]
    joint = micro_f1_thresholds(per_class, no_tp, start)
    return {c: joint.get(c, global_threshold) for c in per_class}


def cross_validate(per_class: dict[str, ClassMatches], folds: int = VALIDATION_FOLDS) -> dict[str, Any] | None:
    """Whether per-class (micro-f1) thresholds beat one global threshold on gold images they were not fitted to.

    The gold images are dealt into `folds` folds (in order, round-robin); for each fold both kinds of
    threshold are chosen on the other folds and applied to it, and the counts are pooled into one micro F1
    per kind. None when image indices are unknown or there are fewer than 2 x folds images.
    """
    found = [m.images() for m in per_class.values()]
    if any(f is None for f in found):
        return None
    images = np.unique(np.concatenate(found))
    if len(images) < 2 * folds:
        return None
    counts = {"per_class": np.zeros(3), "global": np.zeros(3)}  # tp, kept, gold
    for k in range(folds):
        held = images[k::folds]
        fit = {c: m.of_images(np.setdiff1d(images, held)) for c, m in per_class.items()}
        scored = {c: m.of_images(held) for c, m in per_class.items()}
        try:
            global_threshold, _ = pooled_threshold(fit)
        except ValueError:  # no true positive in this fold's fitting images: both kinds alike, skip it
            continue
        joint = joint_thresholds(fit, global_threshold)
        for kind, thresholds in (("per_class", joint), ("global", dict.fromkeys(per_class, global_threshold))):
            r = micro_prf(scored, thresholds)
            counts[kind] += (r["tp"], r["kept"], r["gold"])
    f1 = {kind: float(2 * tp / (kept + gold)) if kept + gold else 0.0 for kind, (tp, kept, gold) in counts.items()}
    return {"folds": folds, "images": len(images), "per_class_f1": f1["per_class"], "global_f1": f1["global"],
            "chosen": "per-class" if f1["per_class"] > f1["global"] else "global"}


__all__ = ["CRITERIA", "ClassMatches", "MATCH_IOU", "PRCurve", "THRESHOLDS_VERSION", "VALIDATION_FOLDS",
           "calibrate_thresholds", "choose_threshold", "cross_validate", "joint_thresholds", "micro_f1_thresholds",
           "micro_matches", "micro_prf", "pooled_threshold", "pr_curve", "prf_at"]
