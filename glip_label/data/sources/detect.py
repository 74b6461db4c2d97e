"""Which of the five training formats a file is, recognised from its content (never from its name)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glip_label.formats.yolo_dataset import load_dataset_yaml
from glip_label.io import read_json


def _first_json_line(path: Path) -> Any:
    """The first non-empty line parsed as JSON, or None if it is not a complete JSON value."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def _odvg_kind(record: Any) -> str | None:
    if not isinstance(record, dict) or "filename" not in record:
        return None
    if "grounding" in record:
        return "odvg-grounding"
    if "detection" in record:
        return "odvg-detection"
    return None


def _coco_kind(data: Any, path: Path) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO/MDETR json (no 'images' list) and not ODVG JSON Lines")
    if any(isinstance(img, dict) and "caption" in img for img in data["images"][:100]):
        return "mdetr"
    annotations = data.get("annotations") or []
    head = annotations[:100]
    if head and all("bbox" not in a for a in head) and any("caption" in a for a in head):
        raise ValueError(f"{path}: this is a COCO captions file (no boxes); it cannot train a detector")
    return "coco"


def sniff(path: Path) -> tuple[str, Any]:
    """(format, parsed COCO/MDETR dict, the parsed data.yaml of a YOLO dataset, or None for ODVG) from the file's
    content.

    The JSON of a COCO/MDETR file is returned so that it is parsed once, not once to sniff and once to read.
    """
    first = _first_json_line(path)
    kind = _odvg_kind(first)
    if kind is not None:
        return kind, None
    if isinstance(first, dict) and "filename" in first:
        raise ValueError(f"{path}: ODVG record without 'detection' or 'grounding'")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        dataset = load_dataset_yaml(path)
        if dataset is not None:
            return "yolo", dataset
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"{path}: neither a JSON file, ODVG JSON Lines nor an Ultralytics dataset yaml "
                         f"({reason})") from None
    return _coco_kind(data, path), data


def detect_format(path: str | Path) -> str:
    """"coco", "odvg-detection", "odvg-grounding", "mdetr" or "yolo", from what the file contains (not its name).

    JSON Lines whose first record has "grounding"/"detection" are ODVG; a JSON object with "images" is
    MDETR-style when its images carry a "caption", COCO detection otherwise; a YAML mapping with names/nc and
    train/val is an Ultralytics dataset (`glip_label.formats.yolo_dataset`).
    """
    return sniff(Path(path))[0]
