"""`glip-label annotate --engine ray`: the files of the local engine, and a resume after kill -9 (issue 17).

Ray runs a local 2-CPU instance here: two actors at 0.5 CPU each (environment.md: actors holding both CPUs
leave nothing for the driver's tasks), one torch thread everywhere so that floats sum in the same order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_mid_run import kill_after_parts  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()

def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


FILES = ("annotations.coco.json", "annotations.odvg.jsonl", "label_map.json", "labelstudio.json", "errors.jsonl")

KILL_SCRIPT = """
import sys, time
from pathlib import Path
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions
src, out, ckpt, slow = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
annotate(AnnotateOptions(source=src, out=out, prompt="thing. other.", model=ckpt, threshold=0.1, flush_every=2,
                         batch_size=2, formats=("coco", "odvg", "yolo", "labelstudio"), resume=True,
                         engine="ray", ray_actors=2, ray_cpus_per_actor=0.5, torch_threads=1),
         progress=False, on_batch=lambda n: time.sleep(slow))
"""


def test_ray_engine_killed_and_resumed_gives_the_local_engines_files(tiny_checkpoint, tmp_path):
    pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        scene(100 + i, size=(160 - 8 * (i % 3), 120)).save(root / f"im{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # an error record, from an actor
    local = tmp_path / "local"
    annotate(AnnotateOptions(source=str(root), out=local, prompt="thing. other.", model=str(tiny_checkpoint),
                             threshold=0.1, flush_every=2, batch_size=2,
                             formats=("coco", "odvg", "yolo", "labelstudio"), torch_threads=1), progress=False)

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    killed = tmp_path / "ray"
    parts = kill_after_parts(script, [str(root), str(killed), str(tiny_checkpoint), "2.0"], killed, timeout_s=240)
    assert 2 <= parts < 7, "the kill must land mid-run"
    assert not (killed / "annotations.coco.json").exists()

    # Resume through the CLI, as a user would.
    result = runner.invoke(app, ["annotate", str(root), "--prompt", "thing. other.", "--model", str(tiny_checkpoint),
                                 "--threshold", "0.1", "--batch-size", "2", "--format", "coco,odvg,yolo,labelstudio",
                                 "--out", str(killed), "--resume", "--engine", "ray", "--ray-actors", "2",
                                 "--ray-cpus-per-actor", "0.5", "--threads", "1"])
    assert result.exit_code == 0, result.output
    for name in FILES:
        assert (killed / name).read_bytes() == (local / name).read_bytes(), name
    labels = sorted((local / "yolo" / "labels").rglob("*.txt"))
    assert labels
    for label in labels:
        assert (killed / "yolo" / "labels" / label.relative_to(local / "yolo" / "labels")).read_bytes() == \
            label.read_bytes()


def test_unknown_engine_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["annotate", str(tmp_path), "--prompt", "a.", "--random-init", "--engine", "spark",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "--engine must be local or ray" in result.output
