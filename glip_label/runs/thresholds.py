"""Per-class score thresholds from matched detections: the math of `glip-label calibrate`, model-free.

Each class's detections on the gold images, matched to its gold boxes (`ClassMatches`), give its
precision-recall curve. The criteria:
- `micro-f1` (default): per-class thresholds that raise the micro F1 of the labels, the measure of a labeled
  dataset (every box counts once), above that of one global threshold. A box raises micro F1 exactly when it
  is a true positive with probability above F/2 (Lipton et al. 2014, "Thresholding classifiers to maximize
  F1"), so each class's threshold belongs where its boxes stop being right more than F/2 of the time. With
  tens of gold images a class has a handful of gold boxes, and the exact optimum on them moves thresholds on
  noise (measured in the demo's world, benchmarks/label_quality.py: it lost to one global threshold on
  held-out pictures in most draws of 32 gold images for some teachers). Two estimates that err differently are
  averaged (`micro_f1_blend`): the evidence rule (`micro_f1_thresholds`) moves a class's threshold from the global
  one only across boxes whose gold matches show, with posterior probability `EVIDENCE`, that they are right more
  (lowering) or less (raising) often than F/2; the pooled fit (`pooled_fit_thresholds`) calibrates all classes'
  scores at once, each class's offset from the others shrunk towards zero, and weighs less as a class's gold boxes
  grow. The evidence rule's 0.75 and the pooled fit's shrinkage and weight were chosen on development seeds (2-7)
  of that benchmark and then checked on seeds they had not seen (the evidence rule on seeds 8-13, the rest on 0,
  1 and 8-13).
- `class-f1`: per class, the threshold of that class's best F1. Each class then keeps boxes down to its own
  F_c/2, so a weak class (low F_c) keeps many wrong boxes.
- `global`: the single threshold of best micro F1 for every class (the baseline the others are measured by).
- `target_precision`: per class, the lowest threshold that reaches it (most recall at that precision).
Classes the gold set does not box (no gold box on these images), or where the model finds none of the gold
boxes, get the fallback: the single global threshold that maximises micro F1 over the classes it does box.
How per-class thresholds would have done on gold images they were not chosen on is reported (`cross_validate`,
folds of the gold images), not used to choose: with tens of images that estimate is too noisy to decide by.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from glip_label.runs.calibrate_options import CRITERIA, EVIDENCE

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
THRESHOLDS_VERSION = 1
VALIDATION_FOLDS = 8
POOLED_PRIOR_SD = 0.5  # pooled_fit_thresholds' shrinkage and fit window, chosen on seeds 2-7 of label_quality.py
POOLED_FIT_BOXES = 3
POOLED_FIT_WEIGHT = 10.0  # gold boxes of a class at which its own estimate and the pooled fit count equally


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


def prf_of_counts(tp: int, kept: int, gold: int) -> dict[str, float]:
    """Precision, recall, F1 (and the counts) of `kept` boxes of which `tp` are right, against `gold` boxes."""
    precision = tp / kept if kept else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "kept": kept, "gold": gold}


def prf_at(scores: np.ndarray, is_tp: np.ndarray, n_gold: int, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (and counts) of the boxes scoring >= threshold."""
    keep = scores >= threshold
    return prf_of_counts(int(is_tp[keep].sum()), int(keep.sum()), n_gold)


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


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (exact for the few thousand boxes of a gold set)."""
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    j = np.arange(k + 1)
    log_factorial = np.r_[0.0, np.cumsum(np.log(np.arange(1, n + 1)))]
    log_pmf = log_factorial[n] - log_factorial[j] - log_factorial[n - j] + j * np.log(p) + (n - j) * np.log1p(-p)
    return float(min(1.0, np.exp(log_pmf).sum()))


def precision_above(k: int, n: int, x: float) -> float:
    """Posterior probability that boxes of which k of n were right are right more often than x (uniform prior):
    P(Beta(k + 1, n - k + 1) > x) = P(Binomial(n + 1, x) <= k)."""
    return binomial_cdf(k, n + 1, x)


def micro_f1_thresholds(per_class: dict[str, ClassMatches], global_threshold: float, evidence: float = EVIDENCE,
                        max_rounds: int = 100) -> dict[str, float]:
    """Per-class thresholds that raise the labels' micro F1 above that of one global threshold.

    Micro F1 = 2 TP / (kept + gold) is a ratio; Dinkelbach's method maximises it: for a fixed lambda, maximising
    2 TP - lambda * kept splits into one choice per class, and lambda = the F1 of that choice climbs until it no
    longer rises. Moving a class's threshold from the global one across a band of n of its boxes, k of them right,
    changes 2 TP - lambda * kept by +-(2 k - lambda n): lowering pays when the band is right more often than
    lambda / 2, raising when less. With `evidence` > 0 a class moves only across bands where the gold boxes say so
    with that posterior probability (`precision_above`); a handful of gold boxes per class otherwise moves
    thresholds on noise (measured in the demo's world, benchmarks/label_quality.py). evidence = 0 is the exact
    maximum over all threshold combinations. Classes without a true positive keep the global threshold.
    """
    at_global = dict.fromkeys(per_class, global_threshold)
    movable = {name: m for name, m in per_class.items() if m.is_tp.any()}
    curves = {name: pr_curve(m.scores, m.is_tp, m.n_gold) for name, m in movable.items()}
    base = {name: (int(m.is_tp[m.scores >= global_threshold].sum()), int((m.scores >= global_threshold).sum()))
            for name, m in movable.items()}  # (tp, kept) at the global threshold
    lam = micro_prf(per_class, at_global)["f1"]
    best, best_f1 = at_global, lam
    for _ in range(max_rounds):
        chosen = dict(at_global)
        for name, c in curves.items():
            tp0, kept0 = base[name]
            band_tp, band_n = np.abs(c.tp - tp0), np.abs(c.kept - kept0)
            lowering = c.kept > kept0
            gain = 2 * (c.tp - tp0) - lam * (c.kept - kept0)  # change of 2 TP - lambda kept
            for i in np.argsort(-gain, kind="stable"):
                if gain[i] <= 1e-12:
                    break
                above = precision_above(int(band_tp[i]), int(band_n[i]), lam / 2)
                if (above if lowering[i] else 1.0 - above) >= evidence:
                    chosen[name] = float(c.thresholds[i])
                    break
        f1 = micro_prf(per_class, chosen)["f1"]
        if f1 <= best_f1 + 1e-12:
            break
        best, best_f1, lam = chosen, f1, f1
    return best


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _map_logistic(design: np.ndarray, y: np.ndarray, prior_precision: np.ndarray, iterations: int = 50,
                  ) -> np.ndarray:
    """Logistic regression weights at the posterior mode, each weight with a N(0, 1 / prior_precision) prior
    (Newton's method: the log posterior is concave, a few steps converge)."""
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (y - p) - prior_precision * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + np.diag(prior_precision)
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return w


def pooled_fit_thresholds(per_class: dict[str, ClassMatches], prior_sd: float = POOLED_PRIOR_SD,
                          fit_boxes: float = POOLED_FIT_BOXES) -> dict[str, float]:
    """Per-class thresholds from one calibration of every class's scores, each class's offset shrunk to the others.

    P(right | score, class k) = sigmoid(a + u_k + b logit(score)) with u_k ~ N(0, prior_sd^2), fitted (posterior
    mode) on the `fit_boxes` x (gold boxes) highest-scoring detections of all classes pooled: the boxes near the
    thresholds that matter, not the thousands of low-scoring ones, which would set the slope. A class whose few
    boxes say little keeps an offset near 0, so the classes share what the pooled boxes say about the slope. One
    threshold on the calibrated probability, the one of best micro F1 on the gold set, is one score threshold per
    class. Classes without a true positive are left out; {} when the fit finds scores that do not rise with
    rightness (b <= 0).
    """
    movable = {name: m for name, m in per_class.items() if m.is_tp.any()}
    if not movable:
        return {}
    names = list(movable)
    logits = [_logit(movable[name].scores) for name in names]
    x = np.concatenate(logits)
    is_tp = np.concatenate([movable[name].is_tp for name in names])
    class_of = np.concatenate([np.full(len(lg), k) for k, lg in enumerate(logits)])
    n_gold = sum(m.n_gold for m in movable.values())
    fit = np.argsort(-x, kind="stable")[:int(fit_boxes * n_gold)]
    design = np.zeros((len(fit), 2 + len(names)))  # [N_fit, 2 + K]: intercept a, slope b, class offsets u_k
    design[:, 0], design[:, 1] = 1.0, x[fit]
    design[np.arange(len(fit)), 2 + class_of[fit]] = 1.0
    prior_precision = np.r_[1e-4, 1e-4, np.full(len(names), prior_sd ** -2)]  # a and b nearly free
    w = _map_logistic(design, is_tp[fit].astype(np.float64), prior_precision)
    a, b, offsets = w[0], w[1], w[2:]
    if not np.isfinite(w).all() or b <= 0:
        return {}
    calibrated = a + offsets[class_of] + b * x  # [N] calibrated logit of every detection
    chosen, _ = choose_threshold(calibrated, is_tp, n_gold)
    thresholds = {}
    for k, name in enumerate(names):
        threshold = 1.0 / (1.0 + np.exp(-(chosen - a - offsets[k]) / b))  # the score whose calibrated logit is chosen
        kept = movable[name].scores[calibrated[class_of == k] >= chosen]
        # the box the search stopped at maps back to its own score up to rounding, which must not drop it
        thresholds[name] = float(min(threshold, kept.min())) if len(kept) else float(threshold)
    return thresholds


class MicroF1Blend(NamedTuple):
    """micro_f1_blend's thresholds and the two estimates they weigh (thresholds.json shows both)."""

    thresholds: dict[str, float]
    evidence_rule: dict[str, float]  # micro_f1_thresholds
    pooled_fit: dict[str, float]  # pooled_fit_thresholds ({} when the fit failed; without classes lacking a TP)


def micro_f1_blend(per_class: dict[str, ClassMatches], global_threshold: float, evidence: float = EVIDENCE,
                   ) -> MicroF1Blend:
    """The micro-f1 criterion's thresholds: per class, a weighted mean of the evidence rule's
    (`micro_f1_thresholds`) and the pooled fit's (`pooled_fit_thresholds`). With a handful of gold boxes per class
    both err, and differently: the evidence rule moves a class only where its own boxes show it, by whole bands of
    boxes; the pooled fit moves every class a little, by its offset from the others, but its one slope for all
    classes is a simplification that more gold boxes expose. So the pooled fit weighs n0 / (n0 + gold boxes of the
    class), n0 = `POOLED_FIT_WEIGHT` (half at 10 boxes, about what 32 gold pictures give a class in the demo's world).

    Measured in the demo's world (benchmarks/label_quality.py: 100 draws of gold pictures from each teacher's 200
    held-out ones, mean micro F1 gain over one global threshold). With 32 pictures the plain mean of the two
    gained +0.015 against +0.013 for the evidence rule alone on seeds 2-7, where it was chosen, and +0.012 against
    +0.009 on seeds 0, 1 and 8-13, checked once (the pooled fit alone, in a development script: +0.012 and
    +0.007). With 128 pictures the plain mean fell behind the evidence rule alone (+0.025 against +0.030 on seeds
    2-7, development script), hence the weight, chosen on seeds 2-7 and checked once on the others: +0.0115 with
    32 pictures, +0.020 with 64, +0.026 with 128 there, against +0.009, +0.020 and +0.025 for the evidence rule.
    """
    by_evidence = micro_f1_thresholds(per_class, global_threshold, evidence)
    by_fit = pooled_fit_thresholds(per_class)
    thresholds = dict(by_evidence)
    for name, fitted in by_fit.items():
        weight = POOLED_FIT_WEIGHT / (POOLED_FIT_WEIGHT + per_class[name].n_gold)
        thresholds[name] = weight * fitted + (1 - weight) * by_evidence[name]
    return MicroF1Blend(thresholds, by_evidence, by_fit)


def micro_matches(per_class: dict[str, ClassMatches]) -> ClassMatches:
    """All classes' detections pooled (micro averaging)."""
    pooled = ClassMatches()
    for m in per_class.values():
        pooled.add(m.scores, m.is_tp, m.n_gold)
    return pooled


def micro_prf(per_class: dict[str, ClassMatches], thresholds: dict[str, float]) -> dict[str, float]:
    """Micro precision / recall / F1 with a threshold per class."""
    tp = kept = gold = 0
    for name, m in per_class.items():
        keep = m.scores >= thresholds[name]
        tp, kept, gold = tp + int(m.is_tp[keep].sum()), kept + int(keep.sum()), gold + m.n_gold
    return prf_of_counts(tp, kept, gold)


def calibrate_thresholds(per_class: dict[str, ClassMatches], categories: Sequence[str],
                         target_precision: float | None = None, floor: float = 0.0,
                         criterion: str = "micro-f1", evidence: float = EVIDENCE) -> dict[str, Any]:
    """thresholds.json's content from the matched detections of each category (see the module docstring).

    per_class holds the categories the gold set boxes (n_gold > 0 there); the others fall back to the
    global threshold (best micro F1 over the boxed categories, or the target precision when given).
    criterion ("micro-f1", "class-f1" or "global") applies when no target_precision is given; evidence is
    micro-f1's (`micro_f1_thresholds`).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not 0.0 <= evidence < 1.0:
        raise ValueError(f"evidence must be in [0, 1), got {evidence}")
    boxed = [c for c in categories if c in per_class and per_class[c].n_gold > 0]
    if not boxed:
        raise ValueError("the gold set boxes none of the classes: nothing to calibrate on")
    boxed_matches = {c: per_class[c] for c in boxed}
    global_threshold, global_met = pooled_threshold(boxed_matches, target_precision)
    blend: MicroF1Blend | None = None
    validation = None
    if target_precision is None and criterion == "micro-f1":
        blend = micro_f1_blend(boxed_matches, global_threshold, evidence)
        validation = cross_validate(boxed_matches, evidence=evidence)
        if validation is not None and validation["per_class_f1"] < validation["global_f1"]:
            log.warning("on held-out folds of the gold images the per-class thresholds scored micro F1 %.3f, one "
                        "global threshold %.3f: with tens of images this estimate is noisy, but more gold images "
                        "(or --criterion global) may serve better", validation["per_class_f1"],
                        validation["global_f1"])
    thresholds: dict[str, float] = {}
    classes: dict[str, Any] = {}
    for name in categories:
        m = per_class.get(name)
        if m is None or m.n_gold == 0:
            thresholds[name] = global_threshold
            classes[name] = {"threshold": global_threshold, "source": "fallback", "gold_boxes": 0}
            continue
        met = True
        if target_precision is None and criterion == "global":
            chosen, source = global_threshold, "global"
        elif blend is not None:
            chosen = blend.thresholds[name] if m.is_tp.any() else None
            # "global": neither part moved this class
            source = "fallback" if chosen is None else "gold" if chosen != global_threshold else "global"
        else:
            chosen, met = choose_threshold(m.scores, m.is_tp, m.n_gold, target_precision)
            source = "gold" if chosen is not None else "fallback"
        chosen = max(floor, chosen) if chosen is not None else global_threshold
        thresholds[name] = chosen
        parts = ({"evidence_rule": blend.evidence_rule[name], "pooled_fit": blend.pooled_fit.get(name)}
                 if blend is not None and m.is_tp.any() else {})
        classes[name] = {
            "threshold": chosen, "source": source, "gold_boxes": m.n_gold, **parts,
            **({"target_met": met} if target_precision is not None and source == "gold" else {}),
            "at_threshold": prf_at(m.scores, m.is_tp, m.n_gold, chosen),
            "at_global": prf_at(m.scores, m.is_tp, m.n_gold, global_threshold),
        }  # fmt: skip
    gold_only = {c: thresholds[c] for c in boxed}
    return {
        "version": THRESHOLDS_VERSION,
        "criterion": criterion if target_precision is None else f"precision>={target_precision}",
        **({"evidence": evidence} if target_precision is None and criterion == "micro-f1" else {}),
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


def cross_validate(per_class: dict[str, ClassMatches], folds: int = VALIDATION_FOLDS, evidence: float = EVIDENCE,
                   ) -> dict[str, Any] | None:
    """How per-class (micro-f1) thresholds and one global threshold do on gold images they were not chosen on.

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
        joint = micro_f1_blend(fit, global_threshold, evidence).thresholds
        for kind, thresholds in (("per_class", joint), ("global", dict.fromkeys(per_class, global_threshold))):
            r = micro_prf(scored, thresholds)
            counts[kind] += (r["tp"], r["kept"], r["gold"])
    f1 = {kind: float(2 * tp / (kept + gold)) if kept + gold else 0.0 for kind, (tp, kept, gold) in counts.items()}
    return {"folds": folds, "images": len(images), "per_class_f1": f1["per_class"], "global_f1": f1["global"]}


__all__ = ["CRITERIA", "EVIDENCE", "ClassMatches", "MATCH_IOU", "MicroF1Blend", "POOLED_FIT_BOXES", "POOLED_FIT_WEIGHT",
           "POOLED_PRIOR_SD", "PRCurve", "THRESHOLDS_VERSION", "VALIDATION_FOLDS", "binomial_cdf",
           "calibrate_thresholds", "choose_threshold", "cross_validate", "micro_f1_blend", "micro_f1_thresholds",
           "micro_matches", "micro_prf", "pooled_fit_thresholds", "pooled_threshold", "pr_curve", "precision_above",
           "prf_at", "prf_of_counts"]
