"""The ``twostream`` console command and ``tools/*.py``: one command per tool, the same parser and ``main`` behind both,
help texts in the form the user typed, and the command line a run records. (The installed command, run from outside
the repository, is tested in tests/test_packaging.py.)"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from twostream import commands
from twostream.commands import COMMANDS, command_doc, command_name, load, run_command, tool_name

REPO = Path(__file__).resolve().parents[1]


def test_one_command_per_tool_and_one_shim_per_command():
    tools = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
    assert sorted(tool_name(c) for c in COMMANDS) == tools
    modules = sorted(p.stem for p in (REPO / "twostream" / "commands").glob("*.py") if p.stem != "__init__")
    assert modules == tools
    for tool in tools:
        shim = (REPO / "tools" / f"{tool}.py").read_text()
        code = [line for line in shim.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
        assert len(code) <= 8 and f"from twostream.commands.{tool} import get_args_parser, main" in shim, tool
        namespace = runpy.run_path(str(REPO / "tools" / f"{tool}.py"), run_name="shim")
        module = load(command_name(tool))
        assert namespace["get_args_parser"] is module.get_args_parser and namespace["main"] is module.main


def test_the_summaries_are_the_docstrings_first_lines():
    for name, summary in COMMANDS.items():
        doc = ast.get_docstring(ast.parse((REPO / "twostream" / "commands" / f"{tool_name(name)}.py").read_text()))
        first_paragraph = " ".join(doc.split("\n\n")[0].split())
        assert summary == first_paragraph, name


def _help(parser_factory) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        parser_factory().parse_args(["--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def test_the_same_parser_under_both_names(monkeypatch):
    """``python tools/train.py --help`` and ``twostream train --help`` come from one parser with the same arguments;
    the console form names itself, its examples and the other tools as typed (``twostream train``, ``torchrun ...
    --no-python twostream train``, ``twostream visualize``)."""
    for name in COMMANDS:
        module = load(name)
        monkeypatch.setattr(sys, "argv", [f"tools/{tool_name(name)}.py"])
        as_tool = module.get_args_parser()
        monkeypatch.setattr(sys, "argv", ["twostream", name])
        as_console = module.get_args_parser()
        assert [a.option_strings for a in as_tool._actions] == [a.option_strings for a in as_console._actions]
        assert [a.default for a in as_tool._actions] == [a.default for a in as_console._actions]
        text = _help(lambda: as_console)  # noqa: B023
        assert text.startswith(f"usage: twostream {name} ") and not re.search(r"(?<![\w/.])tools/\w+\.py", text), \
            name
        monkeypatch.setattr(sys, "argv", [f"tools/{tool_name(name)}.py"])
        assert _help(lambda: as_tool).startswith(f"usage: {tool_name(name)}.py ")  # noqa: B023
    monkeypatch.setattr(sys, "argv", ["twostream", "infer"])
    text = _help(load("infer").get_args_parser)
    assert "twostream infer photo.jpg" in text and "what twostream visualize --prediction reads" in text
    monkeypatch.setattr(sys, "argv", ["twostream", "train"])
    text = _help(load("train").get_args_parser)
    assert "torchrun --nproc_per_node=2 --no-python twostream train --config configs/swin_gat.yaml" in text


def test_command_doc_rewrites_only_under_the_console(monkeypatch):
    doc = ("python tools/build_graphs.py --config x.yaml\ntorchrun --nnodes=2 --nproc_per_node=8 tools/train.py --c\n"
           "(what tools/visualize.py --prediction reads; see docs/tools/x.md)")
    monkeypatch.setattr(sys, "argv", ["tools/x.py"])
    assert command_doc(doc) == doc
    monkeypatch.setattr(sys, "argv", ["twostream", "x"])
    assert command_doc(doc) == ("twostream build-graphs --config x.yaml\n"
                                "torchrun --nnodes=2 --nproc_per_node=8 --no-python twostream train --c\n"
                                "(what twostream visualize --prediction reads; see docs/tools/x.md)")


def test_the_console_entry_point_lists_dispatches_and_refuses(capsys):
    assert commands.main([]) == 2
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)
    assert commands.main(["--help"]) == 0
    capsys.readouterr()
    assert commands.main(["trian"]) == 2
    assert "error: 'trian' is not a twostream command (did you mean 'train'?)" in capsys.readouterr().err
    assert commands.main(["train", "--config", "no_such.yaml"]) == 2
    assert "error: no_such.yaml: config file not found" in capsys.readouterr().err
    assert commands.main(["make-synthetic", "--bogus"]) == 2  # argparse's own error, its exit status
    assert "usage: twostream make-synthetic" in capsys.readouterr().err
    assert sys.argv[:1] != ["twostream"]  # restored after each command


def test_run_command_records_the_command_line_as_typed(tmp_path, monkeypatch, synthetic_root):
    from twostream.engine.checkpoint import read_commands, record_command

    record_command(tmp_path / "a", ["twostream", "train", "--config", "quickstart.yaml"])
    record_command(tmp_path / "a", ["tools/train.py", "--config", "quickstart.yaml"])
    assert read_commands(tmp_path / "a") == ["twostream train --config quickstart.yaml",
                                             "python tools/train.py --config quickstart.yaml"]
    monkeypatch.chdir(tmp_path)
    opts = ["--opts", f"data.root={synthetic_root}", "data.image_size=[64,64]", "data.num_workers=0",
            "data.max_items=8", "graph.source=gt", "model.segmenter.kind=none", "model.image_encoder.name=test_vit",
            "model.gnn.hidden_dim=16", "model.gnn.heads=2", "model.gnn.class_embed_dim=8", "model.fusion.dim=16",
            "train.epochs=1", "train.batch_size=8", "eval.every_epochs=1", "output.tensorboard=false"]
    assert run_command("train", ["--config", "quickstart.yaml", *opts, "output.dir=runs/c"]) == 0
    assert run_command("train", ["--config", "quickstart.yaml", *opts, "output.dir=runs/t"], as_tool=True) == 0
    [console] = read_commands(tmp_path / "runs" / "c")
    [tool] = read_commands(tmp_path / "runs" / "t")
    assert console.startswith("twostream train --config quickstart.yaml --opts data.root=")
    assert tool.startswith("python tools/train.py --config quickstart.yaml --opts data.root=")


def test_python_dash_m_twostream():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "twostream", "infer", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: twostream infer ") and "twostream infer photo.jpg" in proc.stdout
