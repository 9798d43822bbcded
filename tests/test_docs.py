"""The documentation holds together: every relative link and anchor in README.md, datasets/README.md and docs/
resolves, every page is in the site's navigation, every code block marked runnable runs as written, and the site
builds with ``mkdocs build --strict`` (skipped where mkdocs is not installed).

Anchors are computed with GitHub's rule (lower case; characters other than letters, digits, ``_``, ``-`` and spaces
dropped; each space a ``-``), which is also the rule mkdocs.yml gives the site (``pymdownx.slugs.slugify``), so a link
works on GitHub and on the site alike; the strict build checks that the two agree. The renderers number repeated
headings differently (``-1`` on GitHub, ``_1`` in Python-Markdown), so a link to a repeated heading is refused.

A runnable block is a ```` ```python ```` block right after an HTML comment ``<!-- run -->`` or ``<!-- run: SETUP
... -->`` (invisible in both renderers). The runnable blocks of one page run in order, in one namespace, in a
temporary folder prepared with the SETUPs they name (docs/development.md, "Writing docs").
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", REPO / "datasets" / "README.md",
                *(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)])

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
RUN_MARKER = re.compile(r"^<!--\s*run(?::\s*([\w,\s-]*?))?(?:\s*\(.*\))?\s*-->\s*$")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def prose_lines(text: str, *, blank_code: bool = True) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, inline code spans blanked (for finding links)."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, re.sub(r"(`+)(?:(?!\1).)+\1", lambda m: " " * len(m.group(0)), line)
                        if blank_code else line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text (and the site's: pymdownx.slugs.slugify(case="lower"))."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_ markers, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> tuple[set[str], set[str]]:
    """The anchors of a page, and those its repeated headings make ambiguous."""
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    for _, line in prose_lines(text, blank_code=False):
        if (m := HEADING.match(line)) and not line.startswith("#!"):
            s = slug(m.group(2))
            seen[s] = seen.get(s, 0) + 1
    found = set(seen)
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    found |= set(re.findall(r"\{#([\w.-]+)[^}]*\}", text))
    found |= {m.group(1) for m in re.finditer(r"^:::\s+([\w.]+)", text, flags=re.M)}  # mkdocstrings: the dotted path
    return found, {s for s, n in seen.items() if n > 1}


def links(path: Path) -> list[tuple[int, str]]:
    return [(number, m.group(1)) for number, line in prose_lines(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]


def test_every_relative_link_and_anchor_resolves():
    problems, checked = [], 0
    for page in PAGES:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            where = f"{_rel(page)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                problems.append(f"{where}: no such file")
                continue
            if page.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
                problems.append(f"{where}: a docs page links outside docs/ (the site has no such page); name the file "
                                "in a code span instead")
                continue
            if dest.is_dir() and page.is_relative_to(DOCS):
                problems.append(f"{where}: a folder; link a page")
            if anchor:
                if dest.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not a page")
                    continue
                found, repeated = anchors(dest)
                if anchor in repeated:
                    problems.append(f"{where}: '{anchor}' is a repeated heading of {_rel(dest)} (GitHub and the site "
                                    "number repeats differently); rename one")
                elif anchor not in found:
                    close = sorted(a for a in found if a.split("-")[0] == anchor.split("-")[0])[:3]
                    problems.append(f"{where}: no heading '{anchor}' in {_rel(dest)}" +
                                    (f" (near: {', '.join(close)})" if close else ""))
    assert checked > 150, f"only {checked} relative links found: is the link pattern still right?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("heading", "expected"), [
    ("What `make demo` runs", "what-make-demo-runs"),
    ("Graph stores: `tools/build_graphs.py`", "graph-stores-toolsbuild_graphspy"),
    ("Why this scene?", "why-this-scene"),
    ("`node_input: class`, presence + adjacency", "node_input-class-presence--adjacency"),
    ("A trained segmenter's architecture comes from its checkpoint",
     "a-trained-segmenters-architecture-comes-from-its-checkpoint"),
    ("Pre-emption: SIGTERM and SIGUSR1", "pre-emption-sigterm-and-sigusr1"),
    ("Readers: `data.format`", "readers-dataformat"),
])
def test_slugs_are_githubs(heading, expected):
    assert slug(heading) == expected
    if importlib.util.find_spec("pymdownx"):  # the site's slugify, as mkdocs.yml configures it
        from pymdownx.slugs import slugify

        assert slugify(case="lower")(heading.replace("`", ""), "-") == expected


class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("", lambda loader, suffix, node: None)  # !!python/... (the slugify function)


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_IgnoreTags)
    nav = _nav_pages(config["nav"])
    pages = sorted(_rel(p)[len("docs/"):] for p in PAGES if p.is_relative_to(DOCS))
    assert sorted(nav) == pages, \
        f"not in the nav: {sorted(set(pages) - set(nav))}; in the nav, no file: {sorted(set(nav) - set(pages))}"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_readme_names_the_test_command_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert "make test" in (REPO / ".ci" / "run").read_text() and "make test" in readme and "make demo" in readme


# ---------------------------------------------------------------------------------------------------------------------
# Runnable blocks
# ---------------------------------------------------------------------------------------------------------------------

def runnable_blocks(path: Path) -> list[tuple[int, list[str], str]]:
    """``(line, setups, code)`` of each block marked runnable in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not (m := RUN_MARKER.match(line.strip())):
            continue
        assert i + 1 < len(lines) and lines[i + 1].startswith("```python"), \
            f"{_rel(path)}:{i + 1}: a run marker must stand right before a ```python block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        setups = [s for s in re.split(r"[\s,]+", m.group(1) or "") if s]
        blocks.append((i + 2, setups, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


RUNNABLE = {page: blocks for page in PAGES if (blocks := runnable_blocks(page))}


def _setup(name: str, folder: Path, tmp_path_factory, synthetic_root: Path) -> None:
    """What a runnable block may name: ``quickstart`` (``runs/quickstart``, the tiny test model, and ``photo.jpg``, a
    real photograph) and ``synthetic`` (``datasets/synthetic``, a small synthetic ADE20K-format set)."""
    if name == "quickstart":
        pytest.importorskip("skimage")
        from infer_fixtures import photos, shared_run
        from PIL import Image

        shutil.copytree(shared_run(tmp_path_factory), folder / "runs" / "quickstart")
        Image.fromarray(photos()["coffee"]).save(folder / "photo.jpg", quality=90)
    elif name == "synthetic":
        shutil.copytree(synthetic_root, folder / "datasets" / "synthetic")
    else:
        raise AssertionError(f"unknown run setup '{name}' (known: quickstart, synthetic)")


def run_page_blocks(page: Path, folder: Path, tmp_path_factory, synthetic_root: Path) -> list[str]:
    """Run the page's runnable blocks in ``folder``; returns what each printed."""
    blocks = RUNNABLE[page]
    for name in sorted({s for _, setups, _ in blocks for s in setups}):
        _setup(name, folder, tmp_path_factory, synthetic_root)
    namespace = {"__name__": "__docs__"}
    printed = []
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for line, _, code in blocks:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{_rel(page)}:{line}", "exec"), namespace)
            printed.append(out.getvalue())
    finally:
        os.chdir(cwd)
    return printed


def test_there_are_runnable_blocks():
    assert REPO / "README.md" in RUNNABLE and sum(map(len, RUNNABLE.values())) >= 6


@pytest.mark.parametrize("page", [p for p in RUNNABLE if p.name != "README.md"], ids=_rel)
def test_runnable_blocks_run(page, tmp_path, tmp_path_factory, synthetic_root):
    run_page_blocks(page, tmp_path, tmp_path_factory, synthetic_root)


def test_readme_api_example_runs_as_written(tmp_path, tmp_path_factory, synthetic_root):
    """The README's API example (its first runnable block), in a folder holding ``runs/quickstart`` and
    ``photo.jpg``: it prints the top-3 scenes and the graph, and saves a folder with a model card."""
    [(_, setups, code)] = RUNNABLE[REPO / "README.md"][:1]
    assert setups == ["quickstart"] and "from twostream import SceneClassifier" in code and "from_pretrained" in code
    [printed, *_] = run_page_blocks(REPO / "README.md", tmp_path, tmp_path_factory, synthetic_root)
    lines = printed.splitlines()
    assert lines[0].startswith("[(") and len(eval(lines[0])) == 3  # the top-3 (scene, probability) pairs
    assert lines[1].endswith("objects (400, 600)")
    saved = tmp_path / "exports" / "quickstart"
    assert (saved / "README.md").read_text().startswith("---\n") and (saved / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# The site
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers")),
                    reason="mkdocs, mkdocs-material or mkdocstrings not installed (the docs extra)")
def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict`` (what ``make docs`` runs): a broken link or anchor, a page outside the nav or a
    docstring the API pages cannot parse fails it. The label-alignment rule appears once, rendered from its
    module docstring."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = (site / "reference" / "models" / "index.html").read_text()
    assert 'id="twostream.models.label_alignment"' in models and "ALIGN_MIN_FRACTION" in models
    assert ":func:" not in models and ":data:" not in models  # the Sphinx roles hook ran
    assert (site / "index.html").is_file() and (site / "images" / "scene_graph_panel.png").is_file()
    rule = "If at least 90% of the checkpoint's classes match"
    assert not any(rule in p.read_text() for p in PAGES), "the label-alignment rule is written in a page again"
