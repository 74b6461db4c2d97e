"""The one preset table (glip_label/presets.py): config, weights and README all read it."""

from __future__ import annotations

import re
from pathlib import Path

from glip_label.config import PRESETS
from glip_label.presets import ARCHITECTURE_NAMES, HUB_PRESET_NAMES, HUB_REPO, PRESET_TABLE
from glip_label.weights import HUB_FILES
from glip_label.weights import HUB_REPO as WEIGHTS_HUB_REPO

README = Path(__file__).resolve().parents[1] / "README.md"


def test_config_and_weights_are_built_from_the_table():
    assert tuple(PRESETS) == ARCHITECTURE_NAMES
    assert tuple(HUB_FILES) == HUB_PRESET_NAMES
    assert WEIGHTS_HUB_REPO == HUB_REPO
    for preset in PRESET_TABLE:
        assert preset.architecture in PRESETS
        if preset.hub_file is not None:
            assert HUB_FILES[preset.name] == (preset.hub_file, preset.architecture)


def test_readme_names_every_hub_preset_with_its_file_and_network():
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"\| `([\w-]+)`[^|]*\| `([\w.]+)` \| ([^|]+) \| ([^|]+) \|$", line):
            rows[match.group(1)] = (match.group(2), match.group(3).strip(), match.group(4).strip())
    assert set(rows) == set(HUB_PRESET_NAMES)
    for preset in PRESET_TABLE:
        if preset.hub_file is not None:
            assert rows[preset.name] == (preset.hub_file, preset.network, preset.data)


def test_readme_names_every_architecture():
    text = README.read_text(encoding="utf-8")
    assert all(f"`{name}`" in text for name in ARCHITECTURE_NAMES)
