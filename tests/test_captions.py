"""Caption corpora: every layout built here from a few small PIL images, plus the bad records each
reader must report instead of dying on (missing/empty/non-UTF-8 captions, duplicate ids, missing and
unreadable images, truncated shards)."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glip_label.data.captions import (
    CaptionError,
    CaptionItem,
    ImageBytes,
    ImageFile,
    TarMember,
    detect_source_kind,
    iter_captions,
    load_caption_image,
    parse_phrases,
)
from glip_label.data.images import ImageError, LoadedImage

# ------------------------------------------------------------------------------------ builders


def _pixels(seed: int, width: int = 24, height: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png(seed: int, width: int = 24, height: int = 16) -> bytes:
    """PNG is lossless, so a loaded image can be compared pixel for pixel with what was written."""
    buf = io.BytesIO()
    Image.fromarray(_pixels(seed, width, height), "RGB").save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes | str) -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _split(results: list) -> tuple[list[CaptionItem], list[CaptionError]]:
    items = [r for r in results if isinstance(r, CaptionItem)]
    errors = [r for r in results if isinstance(r, CaptionError)]
    assert len(items) + len(errors) == len(results)
    return items, errors


def _error_for(errors: list[CaptionError], item_id: str) -> str:
    matches = [e.reason for e in errors if e.id == item_id]
    assert len(matches) == 1, f"expected one error for {item_id!r}, got {errors}"
    return matches[0]


def _assert_pixels(result: LoadedImage | ImageError, seed: int) -> None:
    assert isinstance(result, LoadedImage), result
    np.testing.assert_array_equal(np.asarray(result.image), _pixels(seed))


CAPTION = "A man riding a red bicycle next to a parked car."
GRIT_CHUNKS = [[0, 5, 0.1, 0.1, 0.5, 0.9, 0.8], [13, 26, 0.2, 0.4, 0.7, 0.9, 0.7]]


# ------------------------------------------------------------------------------------ folder (img2dataset)


@pytest.fixture
def img2dataset_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cc3m"
    _write(root / "00000" / "000000000.jpg", _png(0))  # PNG bytes named .jpg: decoders sniff content
    _write(root / "00000" / "000000000.txt", CAPTION + "\n")
    _write(root / "00000" / "000000000.json", json.dumps({"key": "000000000", "noun_chunks": GRIT_CHUNKS}))
    _write(root / "00000" / "000000001.png", _png(1))
    _write(root / "00000" / "000000001.txt", "two dogs playing with a frisbee")
    _write(root / "00000" / "000000002.jpg", _png(2))  # no caption file
    _write(root / "00000" / "000000003.jpg", _png(3))
    _write(root / "00000" / "000000003.txt", "  \n")  # empty caption
    _write(root / "00001" / "000010000.jpg", _png(4))
    _write(root / "00001" / "000010000.txt", b"caf\xe9 on a street")  # latin-1, not UTF-8
    _write(root / "00001" / "000010001.jpg", b"<html>not an image</html>")
    _write(root / "00001" / "000010001.txt", "a broken download")
    _write(root / "README.txt", "not a caption of anything")
    return root


def test_folder_layout_items_errors_and_images(img2dataset_folder: Path) -> None:
    assert detect_source_kind(img2dataset_folder) == "folder"
    items, errors = _split(list(iter_captions(img2dataset_folder, phrases_column="noun_chunks")))
    assert [i.id for i in items] == ["00000/000000000.jpg", "00000/000000001.png", "00001/000010001.jpg"]
    first = items[0]
    assert first.caption == CAPTION  # trailing line break of the .txt removed, nothing else
    assert first.phrases == ["A man", "a red bicycle"]
    assert first.spans == [[(0, 5)], [(13, 26)]]
    assert first.meta["key"] == "000000000"
    assert items[1].phrases is None and items[1].meta == {}
    assert "000000002.txt is missing" in _error_for(errors, "00000/000000002.jpg")
    assert _error_for(errors, "00000/000000003.jpg") == "empty caption"
    assert "not valid UTF-8" in _error_for(errors, "00001/000010000.jpg")
    assert len(errors) == 3  # README.txt has no image beside it: not a sample, not an error

    _assert_pixels(load_caption_image(first), 0)
    _assert_pixels(load_caption_image(items[1]), 1)
    broken = load_caption_image(items[2])
    assert isinstance(broken, ImageError) and broken.kind == "not_image"


def test_folder_bad_sidecar_json_is_a_record_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.jpg", _png(0))
    _write(tmp_path / "a.txt", "a cat")
    _write(tmp_path / "a.json", "{not json")
    (result,) = list(iter_captions(tmp_path))
    assert isinstance(result, CaptionError) and "a.json is not valid JSON" in result.reason


def test_folder_without_captions_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "photos" / "a.jpg", _png(0))
    _write(tmp_path / "photos" / "b.jpg", _png(1))
    _write(tmp_path / "notes.md", "hello")
    with pytest.raises(ValueError, match=r"found 2 \.jpg, 1 \.md") as info:
        detect_source_kind(tmp_path)
    assert "glip-label annotate" in str(info.value)
    with pytest.raises(ValueError, match="found no files"):
        detect_source_kind(_write(tmp_path / "empty" / ".keep", "").parent)


# ------------------------------------------------------------------------------------ webdataset


def _shard(path: Path, samples: list[tuple[str, dict[str, bytes | str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                _add(tar, f"{key}.{ext}", data)
    return path


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    root = tmp_path / "wds"
    _shard(
        root / "00000.tar",
        [
            ("000000000", {"jpg": _png(0), "txt": CAPTION, "json": json.dumps({"noun_chunks": GRIT_CHUNKS})}),
            ("000000001", {"json": json.dumps({"caption": "a cat on a sofa", "url": "u"}), "png": _png(1)}),
            ("000000002", {"txt": "no image here", "json": "{}"}),
            ("000000003", {"jpg": _png(3), "txt": b"\xff\xfe bad bytes"}),
        ],
    )
    _shard(
        root / "00001.tar",
        [
            ("000010000", {"jpg": _png(4), "txt": "a bowl of fruit"}),
            ("000000000", {"jpg": _png(5), "txt": "same key as in shard 0"}),
            ("sub/000010002", {"webp": b"", "txt": "an empty image member"}),
        ],
    )
    _write(root / "00000.parquet", b"PAR1")  # img2dataset writes metadata beside the shards
    return root


def test_webdataset_groups_members_by_key(shards: Path) -> None:
    assert detect_source_kind(shards) == "webdataset"
    items, errors = _split(list(iter_captions(shards, phrases_column="noun_chunks")))
    assert [i.id for i in items] == ["000000000", "000000001", "000010000", "sub/000010002"]
    assert items[0].caption == CAPTION and items[0].phrases == ["A man", "a red bicycle"]
    assert items[1].caption == "a cat on a sofa"  # no .txt: the sidecar json's caption
    assert items[1].meta == {"url": "u"}
    assert isinstance(items[0].image_ref, TarMember) and items[0].image_ref.member == "000000000.jpg"
    assert "no image member" in _error_for(errors, "000000002")
    assert "not valid UTF-8" in _error_for(errors, "000000003")
    assert "duplicate id" in _error_for(errors, "000000000")  # the later one, from shard 00001
    assert len(errors) == 3

    _assert_pixels(load_caption_image(items[0]), 0)
    _assert_pixels(load_caption_image(items[1]), 1)
    _assert_pixels(load_caption_image(items[2]), 4)
    empty = load_caption_image(items[3])
    assert isinstance(empty, ImageError) and empty.kind == "empty"
    assert empty.file_name == "00001.tar/sub/000010002.webp"


def test_webdataset_single_tar_and_glob(shards: Path) -> None:
    single = list(iter_captions(shards / "00001.tar"))
    assert [r.id for r in single] == ["000010000", "000000000", "sub/000010002"]  # no duplicate within one shard
    assert detect_source_kind(str(shards / "*.tar")) == "webdataset"
    assert len(list(iter_captions(str(shards / "0000[01].tar")))) == 7
    with pytest.raises(FileNotFoundError, match="matches no .tar"):
        detect_source_kind(str(shards / "*.tgz"))


def test_webdataset_brace_patterns_name_shards_as_webdataset_does(shards: Path) -> None:
    """wds.WebDataset("shards/0000{0..1}.tar") is how webdataset users name shards (quoted, so the shell leaves
    the braces to us): the same items as the folder, in the pattern's order; a shard the pattern names that is not
    there fails before anything is read."""
    from glip_label.data.captions import expand_braces

    assert expand_braces("s-{000000..000002}.tar") == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert detect_source_kind(str(shards / "0000{0..1}.tar")) == "webdataset"
    in_folder = [i.id for i in iter_captions(shards)]
    assert [i.id for i in iter_captions(str(shards / "0000{0..1}.tar"))] == in_folder
    assert [i.id for i in iter_captions(str(shards / "0000{1,0}.tar"))][:3] == in_folder[-3:]  # the order given
    with pytest.raises(FileNotFoundError, match="1 of the shards .* do not exist, first .*00002.tar"):
        detect_source_kind(str(shards / "0000{0..2}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no .tar shard"):
        detect_source_kind(str(shards / "1000{0..2}.tar"))
    with pytest.raises(ValueError, match="Unbalanced braces"):
        detect_source_kind(str(shards / "0000{0..1.tar"))


def test_webdataset_loading_leaks_no_file_handles(shards: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to count open files")
    items, _ = _split(list(iter_captions(shards)))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for item in items:
            load_caption_image(item)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("where", ["inside image data", "inside a header"])
def test_truncated_shard_keeps_earlier_samples(tmp_path: Path, where: str) -> None:
    full = _shard(tmp_path / "full.tar", [(f"{k:03d}", {"png": _png(k), "txt": f"picture {k}"}) for k in range(4)])
    with tarfile.open(full) as tar:
        image_1 = tar.getmember("001.png")
    # cut in the middle of 001.png's bytes, or in the middle of the header that precedes them
    cut = image_1.offset_data + image_1.size // 2 if where == "inside image data" else image_1.offset + 100
    shard = _write(tmp_path / "cut" / "00000.tar", full.read_bytes()[:cut])
    results = list(iter_captions(shard))
    assert isinstance(results[0], CaptionItem) and results[0].id == "000"
    _assert_pixels(load_caption_image(results[0]), 0)
    assert isinstance(results[-1], CaptionError) and results[-1].id == "00000.tar"
    assert "truncated" in results[-1].reason and "after 1 samples" in results[-1].reason
    for result in results[1:-1]:  # the partial sample, if any, is an error: its caption never arrived
        assert isinstance(result, CaptionError) and result.id == "001"


def test_sparse_free_member_offsets_point_at_the_image(shards: Path) -> None:
    items, _ = _split(list(iter_captions(shards)))
    ref = items[0].image_ref
    with open(ref.tar_path, "rb") as fh:
        fh.seek(ref.offset)
        assert fh.read(ref.size) == _png(0)
    # the by-name path used for sparse members reads the same bytes
    by_name = TarMember(ref.tar_path, ref.member)
    _assert_pixels(load_caption_image(by_name), 0)


def test_compressed_tar_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "a.jpg", _png(0))
        _add(tar, "a.txt", "a picture")
    (result,) = list(iter_captions(path))
    assert isinstance(result, CaptionError) and "uncompressed" in result.reason


# ------------------------------------------------------------------------------------ jsonl / csv / tsv


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A Hugging Face ImageFolder as the datasets docs teach it: split folders, each with its metadata file
    (diffusers' "text" column), images in sub-folders of a split too."""
    root = tmp_path / "pets"
    _write(root / "train" / "a.png", _png(0))
    _write(root / "train" / "more" / "b.png", _png(1))
    _write(root / "train" / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"file_name": "a.png", "text": "a cat on a mat"}, {"file_name": "more/b.png", "text": "a dog"}]))
    _write(root / "test" / "c.png", _png(2))
    _write(root / "test" / "metadata.jsonl", json.dumps({"file_name": "c.png", "text": "a bird"}) + "\n")
    return root


def test_imagefolder_pairs_are_those_datasets_loads(imagefolder: Path, monkeypatch, tmp_path: Path) -> None:
    """Each split's (image, caption) pairs equal datasets.load_dataset("imagefolder", data_dir=...)'s; paths are
    relative to the ImageFolder, so outputs name the image where train-student looks."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    assert detect_source_kind(imagefolder) == "imagefolder"
    for split in ("train", "test"):
        items, errors = _split(list(iter_captions(imagefolder, split=split)))
        assert errors == []
        ours = [(str(imagefolder / i.image_ref.file_name), i.caption) for i in items]
        theirs = datasets.load_dataset("imagefolder", data_dir=str(imagefolder), split=split, streaming=True)
        assert sorted(ours) == sorted((row["image"].filename, row["text"]) for row in theirs)
        for item in items:
            assert isinstance(load_caption_image(item), LoadedImage)
    train, _ = _split(list(iter_captions(imagefolder)))
    assert [(i.id, i.image_ref.file_name) for i in train] == [("train/a.png", "train/a.png"),
                                                              ("train/more/b.png", "train/more/b.png")]
    with pytest.raises(ValueError, match="no 'validation' split folder .* test, train"):
        list(iter_captions(imagefolder, split="validation"))
    # one metadata file at the top covers the whole folder (csv too); an image column the user names wins
    _write(imagefolder / "metadata.csv", "path,caption\ntest/c.png,top\n")
    assert [i.caption for i in iter_captions(imagefolder, image_column="path")] == ["top"]


def test_a_missing_image_field_names_the_fields_there_are(tmp_path: Path) -> None:
    source = _write(tmp_path / "metadata.jsonl", json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n")
    (error,) = list(iter_captions(source))
    assert "no 'image' field (it has 'file_name', 'text'" in error.reason


def test_jsonl_records(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "a.png", _png(0))
    _write(tmp_path / "images" / "b.png", _png(1))
    lines = [
        json.dumps({"image": "images/a.png", "caption": CAPTION, "phrases": ["a red bicycle", "A man"]}).encode(),
        json.dumps({"image": "images/b.png", "caption": "a dog", "source": "web"}).encode(),
        json.dumps({"image": "images/missing.png", "caption": "a ghost"}).encode(),
        json.dumps({"caption": "no image field"}).encode(),
        json.dumps({"image": "images/a.png", "caption": ""}).encode(),
        json.dumps({"image": "images/a.png", "caption": "again"}).encode(),
        json.dumps({"id": 7, "image": "images/a.png", "caption": "own id"}).encode(),
        json.dumps({"image": "https://example.com/x.jpg", "caption": "remote"}).encode(),
        b'{"image": "images/b.png", "caption": "broken',
        b'{"image": "images/b.png", "caption": "caf\xe9"}',
        b"",
        json.dumps(["not", "an", "object"]).encode(),
    ]
    source = _write(tmp_path / "captions.jsonl", b"\n".join(lines) + b"\n")
    assert detect_source_kind(source) == "jsonl"
    items, errors = _split(list(iter_captions(source, phrases_column="phrases")))
    assert [i.id for i in items] == ["images/a.png", "images/b.png", "images/missing.png", "7"]
    first = items[0]
    # strings are located in order; "A man" comes before the previous match, so it is found from the start
    assert first.phrases == ["a red bicycle", "A man"] and first.spans == [[(13, 26)], [(0, 5)]]
    assert items[1].meta == {"source": "web"}
    assert isinstance(items[0].image_ref, ImageFile)
    _assert_pixels(load_caption_image(items[1]), 1)
    missing = load_caption_image(items[2])
    assert isinstance(missing, ImageError) and missing.kind == "missing"

    assert "no 'image' field" in _error_for(errors, "captions.jsonl:4")
    same_image = [e.reason for e in errors if e.id == "images/a.png"]
    assert same_image[0] == "empty caption" and same_image[1].startswith("duplicate id")
    assert "does not download" in _error_for(errors, "https://example.com/x.jpg")
    assert "invalid JSON" in _error_for(errors, "captions.jsonl:9")
    assert _error_for(errors, "captions.jsonl:10") == "line is not valid UTF-8"
    assert "expected an object" in _error_for(errors, "captions.jsonl:12")
    assert len(errors) == 7


def test_csv_quoted_fields_bad_bytes_and_phrase_cells(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _png(0))
    _write(tmp_path / "b.png", _png(1))
    rows = (
        b"image,caption,noun_chunks\n"
        b'a.png,"A man, riding\na red bicycle","[[0, 5], [14, 27]]"\n'
        b"b.png,caf\xe9 tables,\n"
        b'b.png,two dogs,"[[0, 99]]"\n'
        b"b.png,a dog on grass,\n"
        b'a.png,,"[]"\n'
    )
    source = _write(tmp_path / "captions.csv", rows)
    assert detect_source_kind(source) == "csv"
    items, errors = _split(list(iter_captions(source, phrases_column="noun_chunks")))
    assert [i.id for i in items] == ["a.png", "b.png"]
    assert items[0].caption == "A man, riding\na red bicycle"
    assert items[0].phrases == ["A man", "a red bicycle"]
    assert items[1].caption == "a dog on grass" and items[1].phrases is None  # empty cell: not given
    assert [e.reason for e in errors] == [
        "caption is not valid UTF-8",
        "phrase 0: span (0, 99) does not fit a caption of 8 characters",
        "empty caption",
    ]
    _assert_pixels(load_caption_image(items[1]), 1)


def test_tsv_and_custom_columns_and_image_root(tmp_path: Path) -> None:
    _write(tmp_path / "imgs" / "x.png", _png(2))
    source = _write(tmp_path / "meta" / "pairs.tsv", "key\tfile\ttext\nk1\tx.png\ta cat, a hat\n")
    assert detect_source_kind(source) == "tsv"
    (item,) = list(iter_captions(source, image_column="file", caption_column="text", image_root=tmp_path / "imgs"))
    assert item.id == "k1" and item.caption == "a cat, a hat" and item.meta == {"key": "k1"}
    _assert_pixels(load_caption_image(item), 2)
    with pytest.raises(ValueError, match=r"no column 'image'.*columns: 'key', 'file', 'text'"):
        next(iter(iter_captions(source)))


# ------------------------------------------------------------------------------------ COCO captions


def test_coco_captions_one_item_per_caption(tmp_path: Path) -> None:
    _write(tmp_path / "train2017" / "000000000001.png", _png(0))
    coco = {
        "images": [{"id": 1, "file_name": "000000000001.png", "width": 24, "height": 16}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A man riding a horse."},
            {"id": 11, "image_id": 1, "caption": "A horse and its rider."},
            {"id": 12, "image_id": 99, "caption": "an orphan caption"},
            {"id": 13, "image_id": 1, "caption": "   "},
            {"id": 10, "image_id": 1, "caption": "repeated annotation id"},
        ],
    }
    source = _write(tmp_path / "annotations" / "captions_train2017.json", json.dumps(coco))
    assert detect_source_kind(source) == "coco"
    items, errors = _split(list(iter_captions(source, image_root=tmp_path / "train2017")))
    assert [i.id for i in items] == ["1:10", "1:11"]
    assert items[0].meta == {"image_id": 1, "annotation_id": 10, "width": 24, "height": 16}
    _assert_pixels(load_caption_image(items[1]), 0)
    assert "not in 'images'" in _error_for(errors, "99:12")
    assert _error_for(errors, "1:13") == "empty caption"
    assert "duplicate id" in _error_for(errors, "1:10")
    # without image_root, paths resolve next to the json, where the images are not: reported at load time
    (first, *_) = list(iter_captions(source))
    assert isinstance(load_caption_image(first), ImageError)


def test_coco_detection_file_is_rejected(tmp_path: Path) -> None:
    detection = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "bbox": []}]}
    source = _write(tmp_path / "instances.json", json.dumps(detection))
    with pytest.raises(ValueError, match="without 'caption'"):
        list(iter_captions(source))
    with pytest.raises(ValueError, match="no 'images' list"):
        list(iter_captions(_write(tmp_path / "other.json", "[1, 2]")))


# ------------------------------------------------------------------------------------ detection errors


def test_detect_source_kind_errors_and_hub_names(tmp_path: Path) -> None:
    assert detect_source_kind("someuser/some-captions") == "hf"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_source_kind(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        detect_source_kind("data/captions.jsonl")  # a missing local file, not a hub dataset
    with pytest.raises(ValueError, match="unsupported caption file"):
        detect_source_kind(_write(tmp_path / "notes.md", "x"))
    assert detect_source_kind(_write(tmp_path / "part.parquet", b"PAR1")) == "hf"
    assert detect_source_kind(_write(tmp_path / "saved" / "state.json", "{}").parent) == "hf"


def test_missing_datasets_package_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    source = _write(tmp_path / "saved" / "dataset_info.json", "{}").parent
    with pytest.raises(ImportError, match=r"pip install datasets"):
        next(iter(iter_captions(source)))


# ------------------------------------------------------------------------------------ phrases column


def test_parse_phrases_forms_and_validation() -> None:
    caption = "Two dogs chase a dog."
    assert parse_phrases(None, caption) == (None, None)
    assert parse_phrases([[0.0, 8.0, 0.1, 0.2, 0.3, 0.4, 0.9]], caption) == (["Two dogs"], [[(0, 8)]])
    assert parse_phrases(np.array([[15, 20]]), caption) == (["a dog"], [[(15, 20)]])
    # repeated strings take successive occurrences; a case-insensitive match is the last resort
    assert parse_phrases(["dog", "dog", "two DOGS"], caption)[1] == [[(4, 7)], [(17, 20)], [(0, 8)]]
    assert parse_phrases([], caption) == ([], [])
    for bad, message in [
        ([[5, 3]], "does not fit"),
        ([[0, 50]], "does not fit"),
        ([[0.5, 3]], "not an integer"),
        ([[True, 3]], "not an integer"),
        ([[1]], "expected"),
        (["a cat"], "does not occur"),
        ("a dog", "must be a list"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_phrases(bad, caption)


# ------------------------------------------------------------------------------------ Hugging Face datasets


def _datasets():
    return pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")


def test_hf_saved_dataset_with_image_feature(tmp_path: Path) -> None:
    datasets = _datasets()
    paths = [str(_write(tmp_path / "src" / f"{k}.png", _png(k))) for k in range(3)]
    table = {
        "key": ["k0", "k1", "k2"],
        "image": paths,
        "caption": [CAPTION, "", "a cat"],
        "noun_chunks": [GRIT_CHUNKS, [], [[2, 5, 0.0, 0.0, 1.0, 1.0, 0.9]]],
    }
    ds = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in paths:  # the saved copy must not depend on the original files
        os.remove(path)

    assert detect_source_kind(tmp_path / "saved") == "hf"
    items, errors = _split(list(iter_captions(tmp_path / "saved", phrases_column="noun_chunks")))
    assert [i.id for i in items] == ["k0", "k2"]
    assert [(e.id, e.reason) for e in errors] == [("k1", "empty caption")]
    assert items[0].phrases == ["A man", "a red bicycle"] and items[1].phrases == ["cat"]
    assert isinstance(items[0].image_ref, ImageBytes)
    _assert_pixels(load_caption_image(items[0]), 0)
    _assert_pixels(load_caption_image(items[1]), 2)


def test_hf_parquet_folder_streams_with_path_column_and_splits(tmp_path: Path) -> None:
    datasets = _datasets()
    _write(tmp_path / "data" / "imgs" / "a.png", _png(0))
    _write(tmp_path / "data" / "imgs" / "b.png", b"")
    ds = datasets.Dataset.from_dict({"file": ["imgs/a.png", "imgs/b.png"], "text": ["a dog", "a cat"]})
    ds.to_parquet(str(tmp_path / "data" / "train.parquet"))
    assert detect_source_kind(tmp_path / "data") == "hf"
    items, errors = _split(list(iter_captions(tmp_path / "data", image_column="file", caption_column="text")))
    assert not errors and [i.id for i in items] == ["0", "1"]
    _assert_pixels(load_caption_image(items[0]), 0)
    empty = load_caption_image(items[1])
    assert isinstance(empty, ImageError) and empty.kind == "empty"
    # one parquet file on its own, not streamed
    single = list(iter_captions(tmp_path / "data" / "train.parquet", "file", "text", streaming=False))
    assert [r.caption for r in single] == ["a dog", "a cat"]
    with pytest.raises(ValueError, match="no column 'image'"):
        next(iter(iter_captions(tmp_path / "data")))

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": ["imgs/a.png"], "caption": ["t"]}),
            "validation": datasets.Dataset.from_dict({"image": ["imgs/a.png"], "caption": ["v"]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    (val,) = list(iter_captions(tmp_path / "dd", split="validation", image_root=tmp_path / "data"))
    assert val.caption == "v"
    _assert_pixels(load_caption_image(val), 0)
    with pytest.raises(ValueError, match="split 'test' not in"):
        next(iter(iter_captions(tmp_path / "dd", split="test")))
