"""tools/quickstart.py (make demo): the six tool commands of docs/quickstart.md, run in one process with each tool's own
exit status; the page lists the same commands, and `twostream quickstart` prints them as console commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_prints_the_readme_commands():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "quickstart.py"), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = [line[len("$ python "):] for line in proc.stdout.splitlines() if line.startswith("$ python ")]
    assert [c.split()[0] for c in commands] == ["tools/make_synthetic.py", "tools/train.py", "tools/build_graphs.py",
                                                "tools/train.py", "tools/eval.py", "tools/infer.py"]
    page = (REPO / "docs" / "quickstart.md").read_text()
    block = page[page.index("## What `make demo` runs"):page.index("## Then on ADE20K")]
    for command in commands[:5]:
        script, *args = command.split()
        assert re.search(re.escape(script) + r"\s+" + r"\s+".join(map(re.escape, args[:2])), block), command


def test_a_failing_step_stops_the_run_with_its_status(tmp_path, monkeypatch, capsys):
    from twostream.quickstart import run_steps

    monkeypatch.chdir(tmp_path)
    rc = run_steps([("train", ["--config", "no_such_config.yaml"]), ("eval", ["--checkpoint", "never_run"])])
    assert rc == 2  # the config error of the first step (one line, exit 2); the second never ran
    out = capsys.readouterr()
    assert "$ python tools/train.py --config no_such_config.yaml" in out.out and "never_run" not in out.out
    assert "error: no_such_config.yaml: config file not found" in out.err


def test_the_console_form_prints_twostream_commands_with_shipped_config_names(capsys):
    from twostream.quickstart import run_steps, steps

    assert run_steps(steps(console=True), console=True, dry_run=True) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert printed[:5] == ["$ twostream make-synthetic --out datasets/synthetic",
                           "$ twostream train --config seg/quickstart.yaml",
                           "$ twostream build-graphs --config quickstart.yaml --no-progress",
                           "$ twostream train --config quickstart.yaml",
                           "$ twostream eval --checkpoint runs/quickstart"]
    assert printed[5].startswith("$ twostream infer ") and printed[5].endswith("--save all")


def test_every_step_runs_in_turn_when_each_succeeds(tmp_path, monkeypatch, capsys):
    """The quick start goes on after a step that succeeded: the first step's success (make-synthetic) is not
    mistaken for a failure, and the next step runs on what it wrote."""
    from twostream.quickstart import run_steps

    monkeypatch.chdir(tmp_path)
    rc = run_steps([("make-synthetic", ["--out", "data", "--train-per-scene", "1", "--val-per-scene", "1",
                                        "--size", "32", "--scenes", "bedroom", "kitchen"]),
                    ("prepare-ade20k", ["--root", "data", "--check"])])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "$ python tools/make_synthetic.py --out data" in out
    assert "$ python tools/prepare_ade20k.py --root data" in out
    assert out.count("s)\n") == 2 and "exit status" not in out  # both timed, neither failed
    assert (tmp_path / "data" / "sceneCategories.txt").is_file()
