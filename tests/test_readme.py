"""The README's API example runs exactly as written (the first python block after the ``api-example`` marker), in a
folder that holds what it names: a run folder ``runs/quickstart`` (the tiny test model) and ``photo.jpg``."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
from infer_fixtures import photos, shared_run
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- api-example"


def readme_block(marker: str = MARKER) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert marker in text, f"README.md lost its {marker} marker"
    match = re.search(r"```python\n(.*?)```", text[text.index(marker):], flags=re.S)
    assert match, "no python block after the marker"
    return match.group(1)


def test_readme_api_example_runs_as_written(tmp_path_factory, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    code = readme_block()
    assert "from twostream import SceneClassifier" in code and "from_pretrained" in code
    shutil.copytree(shared_run(tmp_path_factory), tmp_path / "runs" / "quickstart")
    Image.fromarray(photos()["coffee"]).save(tmp_path / "photo.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (api example)", "exec"), {"__name__": "__readme__"})
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("[(") and len(eval(printed[0])) == 3  # the top-3 (scene, probability) pairs
    assert printed[1].endswith("objects (400, 600)")
    saved = tmp_path / "exports" / "quickstart"
    assert (saved / "README.md").read_text().startswith("---\n") and (saved / "model.safetensors").is_file()
