"""Threshold search on known precision-recall curves, thresholds.json through annotate, the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from glip_label.runs.annotate_labeler import postprocess_for_ontology
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.calibrate import match_detections
from glip_label.runs.ontology import Ontology, apply_thresholds, load_ontology, ontology_yaml, read_thresholds
from glip_label.runs.thresholds import (
    ClassMatches,
    binomial_cdf,
    calibrate_thresholds,
    choose_threshold,
    cross_validate,
    micro_f1_blend,
    micro_f1_thresholds,
    micro_prf,
    pooled_fit_thresholds,
    pooled_threshold,
    pr_curve,
    precision_above,
    prf_at,
)


def test_pr_curve_known_values():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    is_tp = np.array([True, False, True, True, False])
    curve = pr_curve(scores, is_tp, n_gold=4)
    np.testing.assert_allclose(curve.thresholds, scores)
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(curve.recall, [1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4])
    # F1 at 0.6: P = R = 0.75 -> 0.75, the maximum
    assert choose_threshold(scores, is_tp, 4) == (0.6, True)
    # precision >= 0.7 first reached (lowest threshold) at 0.6 (0.75); >= 0.9 only at 0.9
    assert choose_threshold(scores, is_tp, 4, target_precision=0.7) == (0.6, True)
    assert choose_threshold(scores, is_tp, 4, target_precision=0.9) == (0.9, True)


def test_ties_and_unreachable_targets():
    # Two boxes share 0.8: they are kept or dropped together.
    scores = np.array([0.8, 0.8, 0.4])
    is_tp = np.array([True, False, True])
    curve = pr_curve(scores, is_tp, n_gold=2)
    np.testing.assert_allclose(curve.thresholds, [0.8, 0.4])
    np.testing.assert_allclose(curve.precision, [0.5, 2 / 3])
    threshold, met = choose_threshold(scores, is_tp, 2, target_precision=0.9)
    assert (threshold, met) == (0.4, False)  # never reached: the highest-precision point, flagged
    assert choose_threshold(scores, np.zeros(3, dtype=bool), 2) == (None, False)
    # equal F1 at two thresholds: the higher one (fewer boxes)
    scores, is_tp = np.array([0.9, 0.5, 0.4]), np.array([True, True, False])
    f1 = pr_curve(scores, is_tp, 4).f1
    assert f1[0] < f1[1]
    assert choose_threshold(np.array([0.9, 0.3]), np.array([True, False]), 1) == (0.9, True)


def test_match_detections_greedy_by_score():
    gold = np.array([[0, 0, 9, 9], [20, 20, 29, 29]], dtype=float)
    boxes = np.array([[0, 0, 9, 9], [1, 1, 9, 9], [20, 20, 29, 29], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.5, 0.9, 0.3, 0.8])
    # 0.9 takes the first gold box; 0.5 (same object) is a duplicate; 0.3 matches the second.
    assert match_detections(boxes, scores, gold).tolist() == [False, True, True, False]
    assert match_detections(boxes, scores, np.zeros((0, 4))).tolist() == [False] * 4


def test_calibrated_beats_global_on_two_kinds_of_class():
    # "cat" scores high (true boxes 0.9-0.7, false 0.3); "dog" scores low (true 0.35-0.3, false 0.1).
    cat = ClassMatches(np.array([0.9, 0.8, 0.7, 0.3, 0.3]), np.array([1, 1, 1, 0, 0], dtype=bool), 3)
    dog = ClassMatches(np.array([0.35, 0.3, 0.1, 0.1]), np.array([1, 1, 0, 0], dtype=bool), 2)
    per_class = {"cat": cat, "dog": dog}
    result = calibrate_thresholds(per_class, ["cat", "dog", "bird"])
    # One threshold (0.35) keeps cat's three right boxes and drops dog's second. The evidence rule moves dog down
    # to 0.3 and leaves cat at the global threshold: no cat box scores between 0.35 and 0.7, so the gold set says
    # nothing about moving it up to 0.7 (the same boxes here, fewer on new images).
    assert result["default"] == 0.35
    assert micro_f1_thresholds(per_class, 0.35) == {"cat": 0.35, "dog": 0.3}
    # The pooled fit, whose two classes' boxes are right above 0.3 in both, keeps dog's 0.3 box too (mapped
    # back from the calibrated scale it must not be lost to rounding); the default is the mean of the two, the
    # pooled fit weighing 10 / (10 + 3) for cat's three gold boxes.
    by_fit = pooled_fit_thresholds(per_class)
    assert by_fit["dog"] == 0.3 and 0.3 < by_fit["cat"] < 0.35
    assert result["thresholds"] == {"cat": pytest.approx((3 * 0.35 + 10 * by_fit["cat"]) / 13), "dog": 0.3,
                                    "bird": result["default"]}
    assert micro_f1_blend(per_class, 0.35).thresholds == {"cat": result["thresholds"]["cat"], "dog": 0.3}
    assert result["classes"]["cat"]["evidence_rule"] == 0.35 and result["classes"]["cat"]["pooled_fit"] == by_fit["cat"]
    assert "pooled_fit" not in result["classes"]["bird"]
    assert result["classes"]["cat"]["source"] == result["classes"]["dog"]["source"] == "gold"
    assert result["classes"]["bird"]["source"] == "fallback"
    assert result["thresholds"]["bird"] == result["default"] == result["global"]["threshold"]
    assert result["per_class_micro"]["f1"] == 1.0
    assert result["global"]["f1"] < 1.0
    assert micro_prf(per_class, {"cat": 0.7, "dog": 0.3}) == result["per_class_micro"]
    assert result["classes"]["dog"]["at_threshold"] == prf_at(dog.scores, dog.is_tp, 2, 0.3)
    with pytest.raises(ValueError, match="boxes none"):
        calibrate_thresholds({}, ["cat"])


def _brute_force_micro_f1(per_class: dict[str, ClassMatches]) -> float:
    """The best micro F1 over every combination of per-class thresholds: each class's own scores, or the global
    threshold (which may keep none of a class's boxes)."""
    names = list(per_class)
    global_threshold, _ = pooled_threshold(per_class)
    options = [sorted(set(per_class[n].scores.tolist()) | {global_threshold}) for n in names]
    combos = itertools.product(*options)
    return max(micro_prf(per_class, dict(zip(names, combo, strict=True)))["f1"] for combo in combos)


def _random_classes(seed: int) -> dict[str, ClassMatches]:
    """Three classes of 6-10 boxes, right 90%, 50% and 20% of the time: on 3 of seeds 0-7 the per-class
    F1 optima miss the best micro F1, so these instances tell the two criteria apart."""
    rng = np.random.default_rng(seed)
    per_class = {}
    for name, quality in (("good", 0.9), ("fair", 0.5), ("weak", 0.2)):
        n = int(rng.integers(6, 11))
        scores = np.round(rng.uniform(0.05, 0.95, n), 2)
        is_tp = rng.uniform(size=n) < quality
        is_tp[np.argmax(scores)] = True  # a true positive somewhere, so the class is calibrated
        per_class[name] = ClassMatches(scores, is_tp, int(is_tp.sum()) + int(rng.integers(0, 4)))
    return per_class


@pytest.mark.parametrize("seed", range(8))
def test_micro_f1_thresholds_reach_the_brute_force_optimum(seed):
    per_class = _random_classes(seed)
    global_threshold, _ = pooled_threshold(per_class)
    chosen = micro_f1_thresholds(per_class, global_threshold, evidence=0.0)
    assert set(chosen) == set(per_class)
    best = _brute_force_micro_f1(per_class)
    assert micro_prf(per_class, chosen)["f1"] == pytest.approx(best)
    # asking for evidence never beats the optimum and never falls below the global threshold
    cautious = micro_prf(per_class, micro_f1_thresholds(per_class, global_threshold))["f1"]
    assert micro_prf(per_class, dict.fromkeys(per_class, global_threshold))["f1"] <= cautious <= best + 1e-12


def test_the_random_instances_separate_the_criteria():
    """Guards the test above: per-class F1 optima are not the micro optimum on some of its instances."""
    missed = 0
    for seed in range(8):
        per_class = _random_classes(seed)
        by_class = calibrate_thresholds(per_class, list(per_class), criterion="class-f1")["thresholds"]
        missed += micro_prf(per_class, by_class)["f1"] < _brute_force_micro_f1(per_class) - 1e-9
    assert missed >= 2


def test_micro_f1_keeps_fewer_wrong_boxes_of_a_weak_class_than_class_f1():
    # "cat" is easy: 5 of 5 gold boxes at 0.7 and above. "dog" is weak (6 gold boxes): its own best F1 is at 0.3
    # (P = R = 1/3, F1 0.333 against 0.286 at 0.6), which keeps 4 wrong boxes for one more right one; in the
    # pooled labels (micro F1 0.636 with dog at 0.3) they cost more than that box gains (0.706 at 0.6).
    cat = ClassMatches(np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.3]), np.array([1, 1, 1, 1, 1, 0], dtype=bool), 5)
    dog = ClassMatches(np.array([0.6, 0.5, 0.45, 0.4, 0.35, 0.3]), np.array([1, 0, 0, 0, 0, 1], dtype=bool), 6)
    per_class = {"cat": cat, "dog": dog}
    by_class = calibrate_thresholds(per_class, ["cat", "dog"], criterion="class-f1")
    joint = calibrate_thresholds(per_class, ["cat", "dog"], evidence=0.0)
    assert joint["criterion"] == "micro-f1" and by_class["criterion"] == "class-f1" and joint["evidence"] == 0.0
    assert by_class["thresholds"] == {"cat": 0.7, "dog": 0.3}
    assert by_class["per_class_micro"]["f1"] == pytest.approx(14 / 22)  # 7 right of 11 kept, 11 gold
    # the global threshold, 0.6, already keeps cat's five right boxes only: cat has no reason to move
    exact = micro_f1_thresholds(per_class, joint["default"], evidence=0.0)
    assert joint["default"] == 0.6 and exact == {"cat": 0.6, "dog": 0.6}
    assert micro_prf(per_class, exact)["f1"] == pytest.approx(12 / 17)  # 6 right of 6 kept, 11 gold
    assert micro_prf(per_class, exact)["f1"] == pytest.approx(_brute_force_micro_f1(per_class))
    # the default (averaged with the pooled fit) keeps dog's wrong boxes out too
    assert joint["thresholds"]["dog"] > 0.5
    assert joint["per_class_micro"]["f1"] == pytest.approx(12 / 17) == joint["global"]["f1"]
    with pytest.raises(ValueError, match="criterion"):
        calibrate_thresholds(per_class, ["cat"], criterion="macro")
    with pytest.raises(ValueError, match="evidence"):
        calibrate_thresholds(per_class, ["cat"], evidence=1.0)
    one = calibrate_thresholds(per_class, ["cat", "dog"], criterion="global")
    assert set(one["thresholds"].values()) == {one["default"]} and one["validation"] is None
    assert {c["source"] for c in one["classes"].values()} == {"global"}


def test_thresholds_file_round_trip_through_annotate(tmp_path):
    ontology = load_ontology(prompt="cat. dog. bird")
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"thresholds": {"cat": 0.7, "dog": 0.3, "horse": 0.5}}))
    merged = apply_thresholds(ontology, read_thresholds(path))
    assert merged.thresholds == {"cat": 0.7, "dog": 0.3}
    from glip_label.records import Detections

    det = Detections(np.array([[0, 0, 9, 9]] * 4, dtype=float) + np.arange(4)[:, None] * 20,
                     [0.69, 0.71, 0.31, 0.29], [0, 0, 1, 1], ontology.phrases)
    kept = postprocess_for_ontology(det, merged, AnnotateOptions(source="", out=tmp_path, threshold=0.5))
    assert sorted(kept.scores.tolist()) == [0.31, 0.71]
    # and through an ontology file
    (tmp_path / "o.yaml").write_text(ontology_yaml(merged))
    again = load_ontology(ontology=tmp_path / "o.yaml")
    assert again == Ontology(ontology.categories, ontology.phrases, ontology.phrase_category, merged.thresholds)
    path.write_text(json.dumps({"thresholds": {"horse": 0.5}}))
    with pytest.raises(ValueError, match="none of its classes"):
        apply_thresholds(ontology, read_thresholds(path))
    path.write_text(json.dumps({"thresholds": {"cat": 1.5}}))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_thresholds(path)


def _classes_per_image(seed: int, tp_rates: dict[str, tuple[float, float]], n_images: int = 32):
    """Per class, per image: 3 boxes; a box of score s is right with probability lo + (hi - lo) * s."""
    rng = np.random.default_rng(seed)
    per_class = {name: ClassMatches() for name in tp_rates}
    for image in range(n_images):
        for name, (lo, hi) in tp_rates.items():
            scores = np.round(rng.uniform(0.05, 0.95, 3), 3)
            is_tp = rng.uniform(size=3) < lo + (hi - lo) * scores
            per_class[name].add(scores, is_tp, int(is_tp.sum()) + int(rng.integers(0, 2)), image)
    return per_class


def _fresh_f1(tp_rates, thresholds, seed: int) -> float:
    """Micro F1 of these thresholds on 400 new images drawn like the gold ones."""
    return micro_prf(_classes_per_image(1000 + seed, tp_rates, n_images=400), thresholds)["f1"]


def test_per_class_thresholds_of_classes_that_differ_hold_on_new_images():
    # "cat" is right only at high scores, "dog" nearly everywhere: their best thresholds differ by far.
    rates = {"cat": (-0.8, 1.6), "dog": (0.7, 1.0)}
    for seed in range(3):
        result = calibrate_thresholds(_classes_per_image(seed, rates), ["cat", "dog"])
        assert result["thresholds"]["cat"] > result["thresholds"]["dog"]
        assert "gold" in {c["source"] for c in result["classes"].values()}
        assert _fresh_f1(rates, result["thresholds"], seed) > _fresh_f1(rates, dict.fromkeys(rates, result["default"]),
                                                                         seed)
        validation = result["validation"]
        assert validation["images"] == 32 and validation["folds"] == 8
        assert validation["per_class_f1"] > validation["global_f1"], validation


def test_evidence_keeps_classes_that_differ_only_by_chance_near_the_global_threshold():
    # Three classes drawn alike from 32 images: the exact optimum moves thresholds on noise and loses to the
    # global threshold on new images; asking for evidence moves fewer of them and loses less, and so does the
    # default, which averages the evidence rule with the pooled fit.
    rates = {name: (0.0, 0.8) for name in ("a", "b", "c")}
    moved = {0.0: 0, 0.75: 0}
    loss = {0.0: 0.0, 0.75: 0.0, "default": 0.0, "exact, averaged": 0.0}
    for seed in range(10):
        per_class = _classes_per_image(seed, rates)
        global_threshold, _ = pooled_threshold(per_class)
        at_global = _fresh_f1(rates, dict.fromkeys(rates, global_threshold), seed)
        for evidence in moved:
            chosen = micro_f1_thresholds(per_class, global_threshold, evidence)
            moved[evidence] += sum(t != global_threshold for t in chosen.values())
            loss[evidence] += at_global - _fresh_f1(rates, chosen, seed)
        for name, evidence in (("default", 0.75), ("exact, averaged", 0.0)):
            chosen = calibrate_thresholds(per_class, list(rates), evidence=evidence)["thresholds"]
            loss[name] += at_global - _fresh_f1(rates, chosen, seed)
    assert moved[0.75] < moved[0.0] / 2, moved
    assert loss[0.75] < loss[0.0] / 2, loss
    assert loss["default"] < loss[0.0] / 2 and loss["exact, averaged"] < loss[0.0], loss


def test_pooled_fit_moves_classes_by_how_their_scores_differ():
    # "cat" is right only at high scores, "dog" nearly everywhere: the fit gives dog the lower threshold; with
    # the class offsets shrunk to nothing it is one threshold for all, the best global one.
    rates = {"cat": (-0.8, 1.6), "dog": (0.7, 1.0)}
    per_class = _classes_per_image(0, rates)
    by_fit = pooled_fit_thresholds(per_class)
    assert by_fit["dog"] < by_fit["cat"]
    global_threshold, _ = pooled_threshold(per_class)
    shrunk = pooled_fit_thresholds(per_class, prior_sd=1e-4)
    assert shrunk["cat"] == pytest.approx(shrunk["dog"], abs=1e-3)
    assert micro_prf(per_class, shrunk) == micro_prf(per_class, dict.fromkeys(rates, global_threshold))
    # classes without a right box are left out; scores that fall as boxes get right give no fit at all
    per_class["bird"] = ClassMatches(np.array([0.5, 0.4]), np.array([False, False]), 1)
    assert set(pooled_fit_thresholds(per_class)) == {"cat", "dog"}
    # the more gold boxes a class has, the less the pooled fit weighs against its own evidence
    few, many = _classes_per_image(1, rates, n_images=8), _classes_per_image(1, rates, n_images=200)
    for matches, most in ((few, 1.0), (many, 0.1)):
        global_threshold, _ = pooled_threshold(matches)
        own, fit = micro_f1_thresholds(matches, global_threshold), pooled_fit_thresholds(matches)
        blend = micro_f1_blend(matches, global_threshold).thresholds
        for name, m in matches.items():
            share = 10 / (10 + m.n_gold)  # of the way from the class's own threshold to the pooled fit's
            assert share <= most and blend[name] == pytest.approx(own[name] + share * (fit[name] - own[name]))
    upside_down = ClassMatches(np.linspace(0.1, 0.9, 20), np.arange(20) < 10, 10)
    assert pooled_fit_thresholds({"cat": upside_down}) == {}
    assert micro_f1_blend({"cat": upside_down}, 0.1).thresholds == micro_f1_thresholds({"cat": upside_down}, 0.1)


def test_posterior_precision_against_the_beta_density():
    assert binomial_cdf(0, 5, 0.2) == pytest.approx(0.8**5)
    assert binomial_cdf(5, 5, 0.3) == 1.0 and binomial_cdf(2, 4, 0.0) == 1.0 and binomial_cdf(2, 4, 1.0) == 0.0
    grid = np.linspace(0.0, 1.0, 200_001)
    for k, n, x in ((0, 0, 0.3), (1, 1, 0.45), (3, 10, 0.2), (30, 100, 0.25), (7, 7, 0.9)):
        density = grid**k * (1 - grid) ** (n - k)
        expected = np.trapezoid(np.where(grid > x, density, 0.0), grid) / np.trapezoid(density, grid)
        assert precision_above(k, n, x) == pytest.approx(expected, abs=1e-4), (k, n, x)


def test_validation_needs_image_indices_and_enough_images():
    per_class = _classes_per_image(0, {"cat": (0.0, 1.0)}, n_images=15)
    assert cross_validate(per_class) is None  # fewer than 2 x 8 images
    assert cross_validate({"cat": ClassMatches(np.array([0.5]), np.array([True]), 1)}) is None  # no indices
    assert calibrate_thresholds(per_class, ["cat"])["validation"] is None
