"""`annotate`'s labeler for the run engine: a batch of images -> one record of category boxes per image.

The teacher's phrase boxes are mapped to the ontology's categories and kept by :func:`postprocess_for_ontology`
(per-class thresholds, minimum size, NMS, cap); `calibrate` runs the same mapping on its gold images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glip_label.data.images import ImageError, LoadedImage, load_image
from glip_label.records import Detections, clip_to_image
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.labeler import ItemResult, PredictorLabeler
from glip_label.runs.ontology import Ontology


def postprocess_for_ontology(det: Detections, ontology: Ontology, options: AnnotateOptions,
                             image_size: tuple[int, int] | None = None) -> Detections:
    """Phrase labels -> category labels, clip to the image, per-class thresholds, minimum size, NMS, cap.

    Boxes are clipped to the image and degenerate ones dropped (`clip_to_image`).
    """
    if image_size is not None:
        det = clip_to_image(det, *image_size)
    categories = np.asarray(ontology.phrase_category, dtype=np.int64)[det.labels] if len(det) else det.labels
    out = Detections(det.boxes, det.scores, categories, ontology.categories)
    limits = np.array([ontology.thresholds.get(name, options.threshold) for name in ontology.categories])
    keep = out.scores >= limits[out.labels] if len(out) else np.zeros(0, dtype=bool)
    if options.min_box_size > 0 and len(out):
        wh = out.boxes[:, 2:] - out.boxes[:, :2] + 1
        keep &= (wh >= options.min_box_size).all(axis=1)
    out = out.select(keep)
    many_prompts = len(ontology.phrases) > len(ontology.categories)
    nms_iou = options.nms_iou if options.nms_iou is not None else (0.6 if many_prompts or options.agnostic_nms
                                                                   else None)
    from glip_label.predictor import filter_detections

    return filter_detections(out, 0.0, nms_iou, options.agnostic_nms, options.max_dets)


def _record(item: LoadedImage, det: Detections) -> dict[str, Any]:
    return {
        "file_name": item.file_name,
        "width": item.width,
        "height": item.height,
        "boxes": det.boxes.tolist(),
        "scores": det.scores.tolist(),
        "labels": det.labels.tolist(),
    }


class AnnotateLabeler(PredictorLabeler):
    """The run engine's labeler for annotate: a batch of images (names or decoded) -> one result per image."""

    def __init__(self, options: AnnotateOptions, ontology: Ontology, root: Path, predictor=None) -> None:
        super().__init__(options, predictor)
        self.ontology = ontology
        self.root = Path(root)

    def label_batch(self, batch: Sequence[str | LoadedImage | ImageError]) -> list[ItemResult]:
        """Names are decoded here (Ray actors); the local engine passes images its threads decoded."""
        items = [load_image(self.root, x, self.options.max_pixels) if isinstance(x, str) else x for x in batch]
        good = [x for x in items if isinstance(x, LoadedImage)]
        predict = _predict_fn(self.predictor, self.options)
        dets = predict([x.image for x in good], self.ontology.phrases, threshold=_min_threshold(
            self.options, self.ontology), batch_size=self.options.batch_size) if good else []
        found = dict(zip((x.file_name for x in good), dets, strict=True))
        results = []
        for item in items:
            if isinstance(item, ImageError):
                results.append(ItemResult(item.file_name, error=item.to_dict()))
                continue
            det = postprocess_for_ontology(found[item.file_name], self.ontology, self.options,
                                           (item.width, item.height))
            results.append(ItemResult(item.file_name, record=_record(item, det)))
        return results


def _predict_fn(predictor, options: AnnotateOptions) -> Callable[..., list[Detections]]:
    """predictor.predict, or its test-time-augmented version with --tta (same call signature)."""
    tta = options.tta_options()
    if tta is None:
        return predictor.predict
    from glip_label.tta import predict_tta

    def predict(images, prompt, threshold: float, batch_size: int) -> list[Detections]:
        return predict_tta(predictor, images, prompt, tta, threshold=threshold, batch_size=batch_size)

    return predict


def _min_threshold(options: AnnotateOptions, ontology: Ontology) -> float:
    return min([options.threshold, *ontology.thresholds.values()])
