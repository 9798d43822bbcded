"""The ``twostream`` console command: one subcommand per tool, with the parsers of ``tools/*.py``.

Installing the package (``pip install .``) puts ``twostream`` on the PATH (``[project.scripts]`` in pyproject.toml);
in a checkout ``python tools/<tool>.py`` runs the same code, with the same arguments:

    twostream train --config swin_gat.yaml              python tools/train.py --config swin_gat.yaml
    twostream infer photo.jpg --checkpoint runs/x       python tools/infer.py photo.jpg --checkpoint runs/x
    twostream build-graphs --config swin_gat.yaml       python tools/build_graphs.py --config swin_gat.yaml
    torchrun --nproc_per_node=8 --no-python twostream train --config swin_gat.yaml      (or: torchrun ... -m twostream)

Each tool is a module ``twostream.commands.<tool>`` with ``get_args_parser()`` and ``main(args) -> int``;
``tools/<tool>.py`` is a shim that imports them. A bare config name finds the shipped config from any directory
(:func:`twostream.config.resolve_config_path`), so the commands work without a checkout. :func:`run_command` runs one
in this process (the quick start runs its six steps so); :func:`main` is the console entry point.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["COMMANDS", "command_doc", "command_parser", "console", "main", "prog", "run_command"]

# command -> one line (the first line of its module's docstring; tests/test_commands.py keeps them equal). Listed here
# so that `twostream --help` imports no tool.
COMMANDS: dict[str, str] = {
    "train": "Train one stage of twostream: the segmenter (configs/seg/*.yaml) or the two-stream scene classifier "
             "(configs/*.yaml).",
    "eval": "Evaluate a trained checkpoint on a dataset split.",
    "infer": "Predict scenes and scene graphs for images: top-k scenes, the objects and which of them touch.",
    "visualize": "Draw scene graphs: a PNG panel (image | segmentation with the graph | graph) and an interactive "
                 "HTML page.",
    "demo": "Try a trained model in the browser: a Gradio page with the scenes, the segmentation and the scene graph.",
    "build-graphs": "Build the scene graphs of dataset splits into graph stores (stage 2 of the staged training).",
    "export": "Export a trained model for sharing: weights as safetensors plus the files needed to rebuild and run it.",
    "ablate": "What do the edges add? Train and evaluate ablation variants of one config over seeds; print a table.",
    "explain-check": "Check explanations against known causes: train variants on a relation set and score their "
                     "explanations.",
    "make-synthetic": "Write a synthetic ADE20K-format dataset (ADEChallengeData2016 layout) for tests, demos and "
                      "smoke runs.",
    "prepare-dataset": "Bring your own data: convert a folder per scene (plus masks and a class table) into the layout "
                       "twostream reads.",
    "prepare-ade20k": "Check an ADEChallengeData2016 folder: counts, missing pairs, size mismatches, bad labels, "
                      "unreadable files.",
    "benchmark": "Throughput of the classifier configs (end to end and per stage), the training step and the data "
                 "loader, as a markdown table with the performance targets' verdicts.",
    "quickstart": "The quick start in one process (what `make demo` runs): synthetic scenes -> segmenter -> graph "
                  "cache -> classifier -> eval -> infer on real photographs, each step the tool command it prints.",
}

CONSOLE = "twostream"  # sys.argv[0] while a `twostream <command>` runs (set by main / run_command)


def tool_name(command: str) -> str:
    """``build-graphs`` -> ``build_graphs``: the module and the ``tools/`` script of a command."""
    return command.replace("-", "_")


def command_name(tool: str) -> str:
    """``build_graphs`` (or ``tools/build_graphs.py``) -> ``build-graphs``."""
    return re.sub(r"^(?:.*/)?(\w+?)(?:\.py)?$", r"\1", tool).replace("_", "-")


def console() -> bool:
    """Whether this process runs a command as ``twostream <command>`` (else as ``python tools/<tool>.py``)."""
    return sys.argv[:1] == [CONSOLE]


def prog(command: str) -> str | None:
    """The program name a parser shows: ``twostream train`` under the console command, else argparse's default
    (the script's file name, ``train.py``)."""
    return f"{CONSOLE} {command}" if console() else None


_TORCHRUN = re.compile(r"\btorchrun((?: \S+)*?) tools/(\w+)\.py")
_PYTHON_TOOL = re.compile(r"\bpython tools/(\w+)\.py")
_TOOL = re.compile(r"(?<![\w/.])tools/(\w+)\.py")


def command_doc(doc: str | None) -> str:
    """A tool's docstring as its ``--help`` shows it: under the console command, ``python tools/train.py`` reads
    ``twostream train`` (and ``torchrun ... tools/train.py`` reads ``torchrun ... --no-python twostream train``)."""
    doc = doc or ""
    if not console():
        return doc
    doc = _TORCHRUN.sub(lambda m: f"torchrun{m[1]} --no-python {CONSOLE} {command_name(m[2])}", doc)
    doc = _PYTHON_TOOL.sub(lambda m: f"{CONSOLE} {command_name(m[1])}", doc)
    return _TOOL.sub(lambda m: f"{CONSOLE} {command_name(m[1])}", doc)


class _CommandParser(argparse.ArgumentParser):
    def format_help(self) -> str:  # the description and every argument's help, in the form the user typed
        return command_doc(super().format_help())


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser a tool's ``get_args_parser`` starts from: its docstring as the description, its program name
    (:func:`prog`), the description's line breaks kept; under the console command its help reads ``twostream
    <command>`` where the text says ``python tools/<tool>.py`` (:func:`command_doc`)."""
    return _CommandParser(prog=prog(command), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def load(command: str) -> ModuleType:
    """The module of ``command`` (``get_args_parser``, ``main``)."""
    if command not in COMMANDS:
        raise KeyError(command)
    return importlib.import_module(f"{__name__}.{tool_name(command)}")


def run_command(command: str, args: Sequence[str], *, as_tool: bool = False) -> int:
    """Run ``twostream <command> <args>`` in this process and return its exit status (a ``SystemExit`` is caught).

    ``as_tool=True`` runs it as ``python tools/<tool>.py <args>`` would: the same code, with the script's program name
    and, for ``train``, that command line recorded in the run's ``command.txt``.
    """
    from twostream.cli import run_cli

    module = load(command)
    saved = sys.argv
    sys.argv = [f"tools/{tool_name(command)}.py" if as_tool else CONSOLE, *([] if as_tool else [command]), *args]
    try:
        return run_cli(module.get_args_parser, module.main, argv=list(args))
    except SystemExit as e:  # argparse (--help, a bad flag) and tools that exit on their own
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved


def _usage() -> str:
    import textwrap

    width = max(map(len, COMMANDS))
    lines = [f"usage: {CONSOLE} <command> [arguments]    ({CONSOLE} <command> --help: its arguments)", "",
             "Two-stream scene understanding: scene graphs from semantic segmentation fused with an image encoder.",
             "", "commands:"]
    for name, summary in COMMANDS.items():
        lines += textwrap.wrap(summary, 110, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4))
    lines += ["", "In a checkout, python tools/<tool>.py takes the same arguments (build-graphs: "
              "tools/build_graphs.py). Docs: docs/commands.md."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: ``twostream <command> [arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{CONSOLE} {version('twostream')}")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            print(f"{CONSOLE} (not installed)")
        return 0
    command, *args = argv
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command.replace("_", "-"), COMMANDS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: '{command}' is not a {CONSOLE} command{hint}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return run_command(command, args)
