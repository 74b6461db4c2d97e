"""Where the images of a data file are: the one rule every reader of glip-label's outputs follows.

`train-student` (gold, pseudo and validation files) and `evaluate` find the image of a record's
``file_name`` with `image_resolver`, in this order:

1. an explicit root (``FILE@ROOT``): ``ROOT / file_name``;
2. the ``run.json`` that `annotate` / `pseudo-caption` write beside their outputs:
   - ``image_root`` (a folder: the labelled image folder, the img2dataset folder, the folder of a
     jsonl/csv/COCO caption file, or the folder of images exported with ``--export-images``);
   - else ``images`` (what the caption source was: webdataset shards or a Hugging Face dataset).
     ``file_name`` is then the name pseudo-caption gave the image (``shard-000003.tar/key.jpg`` for a
     tar member, the stored path or the row id for a dataset row), and it is looked up by reading the
     source again with the caption readers of `glip_label.data.captions`: tar members are then read
     by seek + read, dataset rows from the memory-mapped dataset. Nothing is extracted or copied;
3. the data file's own folder.

A record whose image cannot be found or read becomes an `ImageError` when it is loaded (never an
exception), so each reader can report how many images it could not read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from glip_label.data.captions import (
    DatasetRow,
    ImageBytes,
    ImageFile,
    ImageRef,
    TarMember,
    detect_source_kind,
    is_shard_pattern,
    iter_captions,
    load_caption_image,
)
from glip_label.data.captions.hf import hf_image_ref
from glip_label.data.captions.load import read_tar_member, rows_of
from glip_label.data.images import DEFAULT_MAX_PIXELS, ImageError, LoadedImage
from glip_label.io import atomic_write_bytes

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
STREAMED_KINDS = ("webdataset", "hf")  # sources whose images are not files on disk


def image_source_spec(
    source: str | Path,
    image_root: str | Path | None = None,
    split: str = "train",
    image_column: str = "image",
    caption_column: str = "caption",
) -> dict[str, Any]:
    """What run.json records about a caption source so that readers find its images again.

    ``source`` is made absolute when it is a local path (a hub name stays as given).
    """
    kind = detect_source_kind(source)
    text = os.path.expanduser(str(source))
    local = Path(text).exists() or is_shard_pattern(text)
    return {
        "kind": kind,
        "source": os.path.abspath(text) if local else text,
        "split": split,
        "image_column": image_column,
        "caption_column": caption_column,
        "image_root": None if image_root is None else str(Path(image_root).resolve()),
    }


class ImageResolver:
    """``file_name`` → where its image is (`ImageRef`), following the rule of the module docstring.

    root: the folder file names are relative to (rules 1, 2a, 3); spec: a run.json ``images`` entry
    for a streamed source (rule 2b). The index of a streamed source is built on first use, once.
    """

    def __init__(self, root: Path | None = None, spec: dict[str, Any] | None = None, origin: str = "") -> None:
        if (root is None) == (spec is None):
            raise ValueError("give an image folder or a streamed source spec, not both")
        self.root = None if root is None else Path(root)
        self.spec = spec
        self.origin = origin
        self._index: dict[str, ImageRef] | None = None
        self._ambiguous: set[str] = set()

    @property
    def description(self) -> str:
        if self.root is not None:
            return f"{self.root}{f' (from {self.origin})' if self.origin else ''}"
        return f"{self.spec['kind']} source {self.spec['source']} (from {self.origin})"

    def path(self, file_name: str) -> Path:
        """A path naming the image in messages and batch metadata (a real file for folder roots)."""
        if self.root is not None:
            return self.root / file_name
        return Path(self.spec["source"]) / file_name

    def ref(self, file_name: str) -> ImageRef | None:
        """Where the image is; None when a streamed source has no image of that name."""
        if self.root is not None:
            return ImageFile(str(self.root), file_name)
        return self._streamed_index().get(file_name)

    def load(self, file_name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage | ImageError:
        ref = self.ref(file_name)
        if ref is None:
            if file_name in self._ambiguous:
                return ImageError(file_name, f"several images of {self.description} have this name", "missing")
            return ImageError(file_name, f"no image of this name in {self.description}", "missing")
        return load_caption_image(ref, max_pixels)

    def _streamed_index(self) -> dict[str, ImageRef]:
        """Display name (the ``file_name`` pseudo-caption wrote) → reference, from one pass over the source."""
        if self._index is not None:
            return self._index
        spec = self.spec
        try:
            items = iter_captions(spec["source"], spec.get("image_column", "image"),
                                  spec.get("caption_column", "caption"), split=spec.get("split", "train"),
                                  image_root=spec.get("image_root"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.origin} says the images are in {spec['source']}, which cannot be read "
                                    f"({exc}); give FILE@ROOT") from None
        index: dict[str, ImageRef] = {}
        for position, item in enumerate(items):  # HF sources yield exactly one item per row
            ref = getattr(item, "image_ref", None)
            if ref is None:
                continue
            if isinstance(ref, ImageBytes):  # keep a pointer to the row, not the bytes
                ref = DatasetRow(spec["source"], spec.get("split", "train"), spec.get("image_column", "image"),
                                 position, ref.display_name)
            if ref.display_name in index or ref.display_name in self._ambiguous:
                # two rows stored under one path: a name cannot tell them apart, so neither is guessed
                index.pop(ref.display_name, None)
                self._ambiguous.add(ref.display_name)
                continue
            index[ref.display_name] = ref
        if self._ambiguous:
            log.warning("%s: %d image names occur more than once; their records cannot be matched to an image",
                        self.description, len(self._ambiguous))
        log.info("%s: %d images indexed", self.description, len(index))
        self._index = index
        return index


def encoded_image_bytes(ref: ImageRef) -> bytes:
    """The image's file bytes exactly as stored (no re-encoding), for `export_images`."""
    if isinstance(ref, ImageFile):
        return (Path(ref.root) / ref.file_name).read_bytes()
    if isinstance(ref, TarMember):
        return read_tar_member(ref)
    if isinstance(ref, DatasetRow):
        ds, root = rows_of(ref.source, ref.split, ref.column)
        ref = hf_image_ref(ds[ref.index][ref.column], root, ref.display_name)
        return encoded_image_bytes(ref)
    return ref.data


def export_images(resolver: ImageResolver, file_names: Iterable[str], dest: str | Path) -> dict[str, int]:
    """Write each named image to ``dest / file_name`` (its original bytes), for tools that need files on
    disk (mmdet's and Open-GroundingDino's ODVG loaders join an image root and ``filename``).

    A name that would leave ``dest`` (absolute, ``..``) or whose image cannot be read is counted, not
    written. Returns {"exported", "skipped"}.
    """
    dest = Path(dest)
    counts = {"exported": 0, "skipped": 0}
    for name in dict.fromkeys(file_names):
        rel = PurePosixPath(name.replace("\\", "/"))
        ref = resolver.ref(name)
        if rel.is_absolute() or ".." in rel.parts or ref is None:
            log.warning("not exported: %s (%s)", name, "outside the export folder" if ref else "image not found")
            counts["skipped"] += 1
            continue
        try:
            data = encoded_image_bytes(ref)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("not exported: %s (%s)", name, exc)
            counts["skipped"] += 1
            continue
        atomic_write_bytes(dest / rel, data)
        counts["exported"] += 1
    return counts


def _read_run_json(folder: Path) -> dict[str, Any] | None:
    path = folder / RUN_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is not readable JSON; images resolve against the data file's folder", path)
        return None
    return data if isinstance(data, dict) else None


def image_resolver(data_file: str | Path, root: str | Path | None = None) -> ImageResolver:
    """The resolver for the images named by `data_file` (see the module docstring for the rule)."""
    if root is not None:
        return ImageResolver(Path(root))
    folder = Path(data_file).resolve().parent
    run = _read_run_json(folder)
    origin = str(folder / RUN_JSON)
    if run is not None:
        recorded = run.get("image_root")
        if recorded and Path(recorded).is_dir():
            return ImageResolver(Path(recorded), origin=origin)
        spec = run.get("images")
        if isinstance(spec, dict) and spec.get("kind") in STREAMED_KINDS and spec.get("source"):
            return ImageResolver(spec=spec, origin=origin)
    return ImageResolver(folder)


__all__ = ["DatasetRow", "ImageResolver", "TarMember", "encoded_image_bytes", "export_images", "image_resolver",
           "image_source_spec"]
