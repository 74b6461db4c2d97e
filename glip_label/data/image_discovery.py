"""Image discovery: which files of a folder, glob or list file are the user's images.

Discovery never opens a file: it is cheap, deterministic (sorted) and safe on folders of hundreds of
thousands of uncurated files, symlink loops and aliases included. Whether a file really is an image is
decided when it is decoded (:func:`glip_label.data.images.load_image`), which reports every bad file
instead of raising.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""Lower-case suffixes treated as images; matching is case-insensitive (``.JPG``, ``.Png``)."""

LIST_FILE_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".list"})

_GLOB_MAGIC = frozenset("*?[")

SkipCallback = Callable[[str, str], None]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _log_skip(path: str, reason: str) -> None:
    logger.warning("skipped %s: %s", path, reason)


def discover_images(
    source: str | Path, recursive: bool = True, *, on_skip: SkipCallback | None = None
) -> tuple[Path, list[str]]:
    """Resolve an image source to ``(root, sorted relative posix paths)``.

    ``source`` is one of
      * a folder: walked (recursively unless ``recursive=False``), following symlinked folders;
        every physical folder is walked once, so symlink loops and aliases are skipped and reported;
      * a glob pattern (``data/**/*.jpg``): root is the pattern's fixed prefix folder; ``**`` spans
        any number of folders; matching is case-sensitive like the shell, ``recursive`` is ignored;
      * a list file (``.txt``/``.lst``/``.list``): one path per line, relative to the list file's
        folder (absolute paths allowed; outside that folder they become ``../`` paths); blank lines
        and lines starting with ``#`` skipped. Listed paths are kept even when missing or not images,
        because the user asked for them explicitly: :func:`glip_label.data.images.load_image` reports
        why each one fails;
      * a single image file: root is its folder.

    Folder and glob discovery skip hidden names (leading ``.``) below the root and non-regular files
    (a FIFO named ``x.jpg`` would block a reader forever); files whose name has an image extension
    are kept even if their content is bad. Skipped folders (loops, permission denied) go to
    ``on_skip(relative_path, reason)``, by default a logged warning.

    Raises FileNotFoundError when the source does not exist (or a glob's fixed folder does not).
    An existing folder without images gives an empty list; the caller decides whether that is fatal.
    """
    report = on_skip or _log_skip
    text = os.path.expanduser(str(source))
    path = Path(text)
    if path.is_dir():
        root = Path(os.path.abspath(path))
        files = _walk_images(root, max_depth=None if recursive else 0, on_skip=report)
        return root, sorted(files)
    if path.is_file():
        if is_image_name(path.name):
            return Path(os.path.abspath(path.parent)), [path.name]
        if path.suffix.lower() in LIST_FILE_EXTENSIONS:
            return _read_list_file(path)
        raise ValueError(
            f"unsupported image source {text!r}: expected a folder, a glob pattern, an image file "
            f"or a list file ({', '.join(sorted(LIST_FILE_EXTENSIONS))}) with one image path per line"
        )
    if any(ch in _GLOB_MAGIC for ch in text):
        return _glob_images(text, on_skip=report)
    if path.is_symlink():
        raise FileNotFoundError(f"image source {text!r} is a broken symbolic link")
    raise FileNotFoundError(
        f"image source {text!r} does not exist (expected a folder, a glob pattern such as "
        f"'data/**/*.jpg', an image file or a .txt list of image paths)"
    )


def _walk_images(root: Path, max_depth: int | None, on_skip: SkipCallback) -> list[str]:
    """Image files under ``root`` as relative posix paths (unsorted), loop-safe.

    Folders are identified by (st_dev, st_ino) after following symlinks: a folder already walked is
    not walked again, which both breaks loops (a link to an ancestor) and avoids labelling the same
    photo twice through two aliases. The traversal is depth-first in sorted name order, so which
    alias wins is deterministic.
    """
    root_stat = root.stat()
    visited: dict[tuple[int, int], str] = {(root_stat.st_dev, root_stat.st_ino): "."}
    found: list[str] = []
    # stack items: (absolute folder, relative prefix ("" for root), depth, ancestor folder keys)
    stack: list[tuple[Path, str, int, frozenset[tuple[int, int]]]] = [
        (root, "", 0, frozenset({(root_stat.st_dev, root_stat.st_ino)}))
    ]
    while stack:
        folder, prefix, depth, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            if not prefix:
                raise PermissionError(f"cannot list image folder {folder}: permission denied") from None
            on_skip(prefix, "folder not readable (permission denied)")
            continue
        except OSError as exc:  # e.g. ELOOP, a folder removed while walking
            if not prefix:
                raise
            on_skip(prefix, f"folder not readable ({exc.strerror or exc})")
            continue
        subfolders: list[tuple[Path, str, int, frozenset[tuple[int, int]]]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{prefix}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if max_depth is not None and depth >= max_depth:
                    continue
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    on_skip(rel, f"folder not readable ({exc.strerror or exc})")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    on_skip(rel, "symlink loop: links back to one of its parent folders; not followed")
                    continue
                if key in visited:
                    on_skip(rel, f"same folder as {visited[key]!r} (symlinked alias); not walked twice")
                    continue
                visited[key] = rel
                subfolders.append((Path(entry.path), rel + "/", depth + 1, ancestors | {key}))
                continue
            if not is_image_name(entry.name):
                continue
            try:
                is_regular = entry.is_file(follow_symlinks=True)
            except OSError:
                is_regular = False
            # A broken symlink named like an image is kept: load_image reports it, so the user sees it.
            if is_regular or (entry.is_symlink() and not os.path.exists(entry.path)):
                found.append(rel)
            else:
                on_skip(rel, "not a regular file")
        stack.extend(reversed(subfolders))  # pop order == sorted order: deterministic alias choice
    return found


def _split_glob(pattern: str) -> tuple[Path, list[str]]:
    """Split ``data/**/*.jpg`` into the fixed folder ``data`` and the magic segments."""
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if any(ch in _GLOB_MAGIC for ch in part))
    fixed = Path(*parts[:first_magic]) if first_magic else Path(".")
    return fixed, list(parts[first_magic:])


def _match_segments(pattern: list[str], segments: list[str]) -> bool:
    """Shell-style match of path segments; ``**`` matches zero or more whole segments."""
    if not pattern:
        return not segments
    head = pattern[0]
    if head == "**":
        return any(_match_segments(pattern[1:], segments[i:]) for i in range(len(segments) + 1))
    if not segments or not fnmatch.fnmatchcase(segments[0], head):
        return False
    return _match_segments(pattern[1:], segments[1:])


def _glob_images(pattern: str, on_skip: SkipCallback) -> tuple[Path, list[str]]:
    fixed, magic = _split_glob(pattern)
    if not fixed.is_dir():
        raise FileNotFoundError(f"glob {pattern!r}: its folder {str(fixed)!r} does not exist")
    root = Path(os.path.abspath(fixed))
    # Our own walker (not glob.glob) so globs get the same loop safety and hidden-file rule as folders.
    max_depth = None if "**" in magic else len(magic) - 1
    candidates = _walk_images(root, max_depth=max_depth, on_skip=on_skip)
    return root, sorted(rel for rel in candidates if _match_segments(magic, rel.split("/")))


def _read_list_file(list_file: Path) -> tuple[Path, list[str]]:
    root = Path(os.path.abspath(list_file.parent))
    names: set[str] = set()
    with open(list_file, encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM from Windows editors
        for line in fh:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            entry = os.path.expanduser(entry)
            if os.path.isabs(entry):
                entry = os.path.relpath(entry, root)
            names.add(Path(os.path.normpath(entry)).as_posix())
    return root, sorted(names)

