"""The README's first Python example runs as written on the embedded model (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert (tmp_path / "sentiment.safetensors").exists()
    assert set(scope["acts"]) == {4, 8} and scope["acts"][4].shape[0] == 2
    assert scope["out"].shape[1] > scope["batch"].input_ids.shape[1]
