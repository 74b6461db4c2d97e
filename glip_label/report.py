"""report.html for a labeling run: what was labeled, how confidently, and what failed, in one file.

Self-contained (styles inline, image crops as base64 PNG data URIs, histograms as inline SVG), so it
opens in any browser with no server and no network. For every class: its box count, a histogram of its
box scores (10 bins over [0, 1]) and a gallery of its highest- and lowest-scoring boxes cut out of the
images; then the errors. The numbers are also in data-* attributes, which the tests read back.

Built in one streaming pass over the run's records (score lists per class, bounded heaps for the
gallery), so memory does not grow with the number of images beyond one float per box.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glip_label.io import atomic_write_text
from glip_label.runs.journal import read_results_in_order

HIST_BINS = 10
GALLERY = 6
CROP_SIZE = 96


@dataclass(frozen=True)
class BoxItem:
    """One box of the run: which image (relative to the image root), where, how sure, which class."""

    file_name: str
    box: tuple[float, float, float, float]
    score: float
    label: str


@dataclass
class _ClassStats:
    scores: list[float] = field(default_factory=list)
    best: list = field(default_factory=list)  # min-heap of (score, -order, item): the GALLERY highest
    worst: list = field(default_factory=list)  # min-heap of (-score, -order, item): the GALLERY lowest


def histogram(scores: Sequence[float]) -> list[int]:
    """Counts of scores in HIST_BINS equal bins over [0, 1] (1.0 in the last bin)."""
    counts, _ = np.histogram(np.asarray(scores, dtype=np.float64), bins=HIST_BINS, range=(0.0, 1.0))
    return [int(c) for c in counts]


def build_report(path: Path, title: str, classes: Sequence[str], boxes: Iterable[BoxItem], image_root: Path | None,
                 errors: Sequence[dict], note: str = "") -> Path:
    """Write the report to `path` (see the module docstring); classes fixes the order of the sections."""
    stats = {name: _ClassStats() for name in classes}
    for order, item in enumerate(boxes):
        s = stats.setdefault(item.label, _ClassStats())
        s.scores.append(item.score)
        _push(s.best, (item.score, -order, item))
        _push(s.worst, (-item.score, -order, item))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style>"
             f"</head><body><h1>{_e(title)}</h1>"]
    if note:
        parts.append(f"<p class='note'>{_e(note)}</p>")
    total = sum(len(s.scores) for s in stats.values())
    parts.append(f"<h2>Boxes per class</h2><table id='counts' data-total='{total}'><tr><th>class</th><th>boxes</th>"
                 "<th>mean score</th></tr>")
    for name, s in stats.items():
        mean = f"{np.mean(s.scores):.3f}" if s.scores else "-"
        parts.append(f"<tr class='count' data-class='{_e(name)}' data-count='{len(s.scores)}'><td>{_e(name)}</td>"
                     f"<td>{len(s.scores)}</td><td>{mean}</td></tr>")
    parts.append("</table>")
    for name, s in stats.items():
        parts.append(f"<section class='class' data-class='{_e(name)}'><h2>{_e(name)}: {len(s.scores)} boxes</h2>")
        parts.append(_histogram_svg(name, histogram(s.scores)))
        for kind, heap, sign in (("highest", s.best, -1), ("lowest", s.worst, 1)):
            items = [entry[2] for entry in sorted(heap, key=lambda e: (sign * e[2].score, e[1]))]
            parts.append(f"<h3>{kind} scores</h3><div class='gallery' data-kind='{kind}'>")
            parts.extend(_crop_html(item, image_root) for item in items)
            parts.append("</div>")
        parts.append("</section>")
    parts.append(f"<h2>Errors ({len(errors)})</h2><table id='errors' data-total='{len(errors)}'>"
                 "<tr><th>item</th><th>reason</th></tr>")
    for error in errors:
        item = error.get("path") or error.get("id") or ""
        parts.append(f"<tr class='error' data-item='{_e(str(item))}'><td>{_e(str(item))}</td>"
                     f"<td>{_e(str(error.get('reason', error)))}</td></tr>")
    parts.append("</table></body></html>\n")
    atomic_write_text(path, "".join(parts))
    return path


def _push(heap: list, entry: tuple) -> None:
    if len(heap) < GALLERY:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _histogram_svg(name: str, counts: list[int]) -> str:
    width, height, bar = 260, 80, 26
    top = max(counts) or 1
    rects = []
    for i, count in enumerate(counts):
        h = round(60 * count / top)
        rects.append(f"<rect class='bin' data-bin='{i}' data-count='{count}' x='{i * bar}' y='{64 - h}' "
                     f"width='{bar - 2}' height='{h}'><title>{i / HIST_BINS:.1f}-{(i + 1) / HIST_BINS:.1f}: "
                     f"{count}</title></rect>")
    return (f"<svg class='hist' data-class='{_e(name)}' data-counts='{json.dumps(counts)}' width='{width}' "
            f"height='{height}' viewBox='0 0 {width} {height}'>{''.join(rects)}"
            f"<text x='0' y='78' font-size='10'>0</text><text x='{width - 14}' y='78' font-size='10'>1</text></svg>")


def _crop_html(item: BoxItem, image_root: Path | None) -> str:
    attrs = (f"data-file='{_e(item.file_name)}' data-box='{','.join(f'{v:.2f}' for v in item.box)}' "
             f"data-score='{item.score:.6f}'")
    caption = f"{item.score:.3f} · {_e(item.file_name)}"
    uri = _crop_uri(image_root / item.file_name, item.box) if image_root is not None else None
    if uri is None:
        return (f"<figure class='crop missing' {attrs}><div>image not available</div>"
                f"<figcaption>{caption}</figcaption></figure>")
    return f"<figure class='crop' {attrs}><img src='{uri}' alt=''><figcaption>{caption}</figcaption></figure>"


def _crop_uri(path: Path, box: tuple[float, float, float, float]) -> str | None:
    """The box (plus a little context) as a PNG data URI at most CROP_SIZE px, or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    x1, y1, x2, y2 = box
    pad = 0.1 * max(x2 - x1, y2 - y1)
    crop = image.crop((max(0, int(x1 - pad)), max(0, int(y1 - pad)), min(image.width, int(x2 + pad) + 1),
                       min(image.height, int(y2 + pad) + 1)))
    crop.thumbnail((CROP_SIZE, CROP_SIZE))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 8px}.gallery{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;font-size:11px;width:110px}"
        ".bin{fill:#1f77b4}.missing div{width:96px;height:96px;background:#eee}")


# ------------------------------------------------------------------------------------------- per command


def _read_errors(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_annotate_report(out: Path, names: Sequence[str], ontology, root: Path) -> Path:
    """OUT/report.html of an annotate run, from its journal (the records its output files were written from)."""
    categories = ontology.categories

    def boxes() -> Iterable[BoxItem]:
        for result in read_results_in_order(out, names):
            if result["ok"]:
                rec = result["record"]
                for box, score, label in zip(rec["boxes"], rec["scores"], rec["labels"], strict=True):
                    yield BoxItem(rec["file_name"], tuple(box), float(score), categories[label])

    thresholds = ", ".join(f"{c} >= {t:g}" for c, t in ontology.thresholds.items())
    return build_report(out / "report.html", f"glip-label annotate: {out.name}", categories, boxes(), Path(root),
                        _read_errors(out / "errors.jsonl"),
                        note=f"{len(names)} images; per-class thresholds: {thresholds}" if thresholds
                        else f"{len(names)} images")


def write_pseudo_caption_report(out: Path, image_root: str | None, max_phrases: int = 30) -> Path:
    """OUT/report.html of a pseudo-caption run from grounding.odvg.jsonl: the most frequent phrases
    (lower-cased), each with its boxes; crops only when the images are files under the run's image root."""
    from collections import Counter

    odvg = out / "grounding.odvg.jsonl"

    def records() -> Iterable[dict]:
        with open(odvg, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    counts: Counter[str] = Counter()
    for rec in records():
        counts.update(r["phrase"].strip().lower() for r in rec["grounding"]["regions"])
    shown = [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_phrases]]
    keep = set(shown)

    def boxes() -> Iterable[BoxItem]:
        for rec in records():
            for region in rec["grounding"]["regions"]:
                phrase = region["phrase"].strip().lower()
                if phrase in keep:
                    yield BoxItem(rec["filename"], tuple(region["bbox"]), float(region["score"]), phrase)

    note = (f"{len(counts)} distinct phrases; the {len(shown)} most frequent are shown"
            + ("" if image_root else "; the images are not files on disk, so no crops"))
    return build_report(out / "report.html", f"glip-label pseudo-caption: {out.name}", shown, boxes(),
                        Path(image_root) if image_root else None, _read_errors(out / "errors.jsonl"), note=note)


__all__ = ["BoxItem", "build_report", "histogram", "write_annotate_report", "write_pseudo_caption_report"]
