"""Start a labeling script in a child process and SIGKILL it once it has written some journal parts.

The crash-safety tests of annotate, pseudo-caption and annotate --engine ray all need the kill to land in
the middle of a run: after `min_parts` part files exist, before the run is done.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_parts(script: Path, args: list[str], out: Path, min_parts: int = 2, timeout_s: float = 120) -> int:
    """Run `python script *args`, SIGKILL it when `out/parts` holds `min_parts` parts; returns how many it held."""
    proc = subprocess.Popen([sys.executable, str(script), *args])
    deadline = time.time() + timeout_s
    while time.time() < deadline and len(list((out / "parts").glob("part-*.jsonl"))) < min_parts:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list((out / "parts").glob("part-*.jsonl")))
