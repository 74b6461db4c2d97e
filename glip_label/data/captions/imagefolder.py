"""Reader of a Hugging Face ImageFolder: images beside a ``metadata.jsonl`` / ``metadata.csv`` whose ``file_name``
column names each image, relative to the metadata file's folder, and whose other columns hold the caption.

This is the layout the `datasets` docs teach for image-caption data ("Create an image dataset", ImageFolder with
metadata) and that diffusers' training scripts read, so users bring it as it is. The rules are `datasets`':
- a metadata file at the top applies to the whole folder; otherwise the top-level folders are splits, named by
  `datasets`' split keywords (``datasets/data_files.py``: train, training; validation, valid, dev, val; test,
  testing, eval, evaluation), and ``--split`` (train by default) picks one, with every metadata file under it;
- ``file_name`` is the image column (another name only if the user gives one), and the caption is the column
  the user names, else ``caption``, else ``text`` (diffusers' default).
Each metadata file is read as a jsonl or csv caption file (:mod:`.jsonl`, :mod:`.delimited`), with image paths
made relative to the ImageFolder itself, so the outputs name ``train/0001.png`` and train-student finds it there.
tests/test_captions.py checks the pairs against ``datasets.load_dataset("imagefolder", data_dir=...)``.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

from glip_label.data.captions.delimited import iter_csv
from glip_label.data.captions.items import CaptionError, CaptionItem
from glip_label.data.captions.jsonl import iter_jsonl
from glip_label.data.captions.records import Columns, SourceOptions
from glip_label.data.captions.refs import ImageFile

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
DEFAULT_IMAGE_COLUMN, IMAGEFOLDER_IMAGE_COLUMN = "image", "file_name"
CAPTION_FALLBACKS = ("caption", "text")


def has_metadata(root: Path) -> bool:
    """Whether a folder is an ImageFolder with metadata: a metadata file at its top or in a top-level folder."""
    if any((root / name).is_file() for name in METADATA_NAMES):
        return True
    return any(entry.is_dir() and any((Path(entry.path) / name).is_file() for name in METADATA_NAMES)
               for entry in os.scandir(root) if not entry.name.startswith("."))


def metadata_files(root: Path, split: str) -> list[Path]:
    """The metadata files of one split (see the module docstring), in sorted path order."""
    top = [root / name for name in METADATA_NAMES if (root / name).is_file()]
    if top:
        return top
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    keywords = next((words for name, words in SPLIT_KEYWORDS.items() if split in (name, *words)), (split,))
    chosen = [folder for folder in folders if folder.name.lower() in keywords]
    if not chosen:
        splits = [f.name for f in folders if any(f.rglob(name) for name in METADATA_NAMES)]
        raise ValueError(f"ImageFolder {str(root)!r} has no {split!r} split folder (it has {', '.join(splits)}); "
                         "choose one with --split")
    return sorted(path for folder in chosen for name in METADATA_NAMES for path in folder.rglob(name))


def iter_imagefolder(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """The items of every metadata file of the split, file by file."""
    root = Path(source).resolve()
    given = options.columns
    image_column = IMAGEFOLDER_IMAGE_COLUMN if given.image == DEFAULT_IMAGE_COLUMN else given.image
    for metadata in metadata_files(root, options.split):
        folder = metadata.parent.relative_to(root).as_posix()
        columns = Columns(image_column, _caption_column(metadata, given.caption), given.phrases)
        file_options = SourceOptions(columns, str(metadata.parent), options.split, options.streaming)
        read = iter_jsonl if metadata.suffix == ".jsonl" else iter_csv
        for item in read(str(metadata), file_options):
            yield _relative_to_root(item, root, folder)


def _relative_to_root(item: CaptionItem | CaptionError, root: Path, folder: str) -> CaptionItem | CaptionError:
    """Paths and ids of a metadata file's rows, relative to their file's folder, made relative to the ImageFolder
    (``train/0001.png``), so that outputs name the image where train-student will look and ids stay unique."""
    if folder == ".":
        return item
    if isinstance(item, CaptionError):
        return CaptionError(f"{folder}/{item.id}", item.reason)
    ref = item.image_ref
    if not isinstance(ref, ImageFile) or os.path.isabs(ref.file_name):
        return item
    file_name = posixpath.normpath(f"{folder}/{ref.file_name}")
    item_id = file_name if item.id == ref.file_name else item.id
    return dataclasses.replace(item, id=item_id, image_ref=ImageFile(str(root), file_name))


def _caption_column(metadata: Path, asked: str) -> str:
    """The caption column: the one asked for when the file has it, else the first of CAPTION_FALLBACKS it has."""
    fields = _first_fields(metadata)
    if asked in fields or asked not in CAPTION_FALLBACKS:
        return asked
    return next((name for name in CAPTION_FALLBACKS if name in fields), asked)


def _first_fields(metadata: Path) -> list[str]:
    import csv
    import json

    with open(metadata, encoding="utf-8-sig", errors="replace", newline="") as fh:
        if metadata.suffix == ".csv":
            return next(csv.reader(fh), [])
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return list(record) if isinstance(record, dict) else []
    return []
