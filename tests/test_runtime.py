"""glip_label.runtime: the allocator setting the CLI applies at start-up."""

import ctypes.util
import sys

import pytest

from glip_label import runtime


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(runtime.OPT_OUT_ENV, "1")
    assert runtime.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    monkeypatch.delenv(runtime.OPT_OUT_ENV, raising=False)
    assert runtime.keep_freed_memory() is True


def test_cli_applies_it_before_every_command(monkeypatch):
    from typer.testing import CliRunner

    from glip_label.cli import app

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(True) or True)
    result = CliRunner().invoke(app, ["merge", "--help"])
    assert result.exit_code == 0, result.output
    assert calls == [True]
