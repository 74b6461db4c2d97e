"""Caption corpora, streamed: image-caption pairs from every layout people keep them in.

`glip-label pseudo-caption` labels corpora of millions of web image-caption pairs (CC3M/CC12M/SBU
as img2dataset downloads them, GRIT, COCO captions, Hugging Face datasets). Such corpora are never
held in memory here: every reader yields one :class:`CaptionItem` at a time, and images are decoded
only when :func:`load_caption_image` is called (typically in prefetch threads).

As with image folders (:mod:`glip_label.data.images`), one bad record must never end a run: a missing
or empty caption, caption bytes that are not UTF-8, a row without an image, a repeated id, a bad
phrase list all become a :class:`CaptionError` with a short reason, and iteration goes on. Only a
source that cannot be read at all (does not exist, unknown layout, a CSV header without the caption
column, a JSON file that is not COCO captions) raises, because nothing useful could follow.

Supported layouts (:func:`detect_source_kind`), one reader module each, behind
:data:`~glip_label.data.captions.iterate.READERS`:

* ``folder`` (:mod:`.folder`): img2dataset "files" output, ``00000/000000012.jpg`` + ``000000012.txt``
  (+ ``.json``);
* ``imagefolder`` (:mod:`.imagefolder`): a Hugging Face ImageFolder, images + ``metadata.jsonl``/``.csv`` with
  ``file_name`` and caption columns (at the top, or per split folder);
* ``webdataset`` (:mod:`.webdataset`): ``.tar`` shards (a folder of them, a glob, or one file) holding
  ``key.jpg`` + ``key.txt`` (+ ``key.json``), members of one sample next to each other;
* ``jsonl`` / ``csv`` / ``tsv`` (:mod:`.jsonl`, :mod:`.delimited`): one record per line/row with
  ``image`` and ``caption`` columns;
* ``coco`` (:mod:`.coco`): a COCO captions json (``images`` + ``annotations[].caption``), one item per
  caption;
* ``hf`` (:mod:`.hf`): a Hugging Face ``datasets`` source (``save_to_disk`` folder, a folder or file of
  parquet/arrow data, or a hub name such as ``user/name``), imported lazily.

Ids are stable across runs, because the run journal resumes by id: the image path relative to the
source folder (folder, imagefolder, and jsonl/csv without an id column), the member key (webdataset),
``"imageid:annid"`` (COCO), the ``id``/``key`` column or else the row number (HF, jsonl, csv).

Records are in :mod:`.items`, image references in :mod:`.refs`; the checks every reader applies to a
record's fields in :mod:`.records` and :mod:`.phrases`; detection in :mod:`.detect`; image decoding in
:mod:`.load`. This package exports the public names of all of them.
"""

from glip_label.data.captions.detect import SOURCE_KINDS, detect_source_kind, expand_braces, is_shard_pattern
from glip_label.data.captions.hf import DATASETS_EXTRA_HINT
from glip_label.data.captions.items import CaptionError, CaptionItem
from glip_label.data.captions.iterate import iter_captions
from glip_label.data.captions.load import load_caption_image
from glip_label.data.captions.phrases import parse_phrases
from glip_label.data.captions.refs import DatasetRow, ImageBytes, ImageFile, ImageRef, TarMember

__all__ = [
    "DATASETS_EXTRA_HINT",
    "SOURCE_KINDS",
    "CaptionError",
    "CaptionItem",
    "DatasetRow",
    "ImageBytes",
    "ImageFile",
    "ImageRef",
    "TarMember",
    "detect_source_kind",
    "expand_braces",
    "is_shard_pattern",
    "iter_captions",
    "load_caption_image",
    "parse_phrases",
]
