"""tools/ablate.py: variants x seeds through the engine, resumable, and a table whose numbers are the runs' own."""

from __future__ import annotations

import json
import math
import runpy
import statistics
from pathlib import Path

import pytest
import torch

from twostream.config import ConfigError, save_config
from twostream.engine.ablation import VARIANTS, format_table, run_ablation, run_scores, summarize

REPO = Path(__file__).resolve().parents[1]


def pct(values, signed=False):
    mean = statistics.fmean(values)
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return f"{text} ± {100 * statistics.stdev(values):.1f}"


def test_tiny_ablation_table_is_the_runs_numbers(synthetic_root, tiny_config, tmp_path, monkeypatch):
    config = save_config(tiny_config(synthetic_root, tmp_path / "unused", "train.epochs=1", "data.max_items=16",
                                     "eval.every_epochs=1"), tmp_path / "tiny.yaml")
    out = tmp_path / "abl"
    groups = {"rooms": ["bedroom", "kitchen"]}
    result = run_ablation(config, ["graph_only", "two_stream"], seeds=2, out=out, jobs=2, scene_groups=groups,
                          threads=1)
    assert not result["failed"]
    # independent: every run's metrics.json, its scene group from the per-class accuracies and supports
    top1, rooms = {}, {}
    for variant in ("graph_only", "two_stream"):
        for k in range(2):
            m = json.loads((out / variant / f"seed{k}" / "metrics.json").read_text())
            assert m["checkpoint"].endswith("last.pth") and m["num_images"] == 16
            top1[variant, k] = m["top1"]
            pc = [m["per_class"][s] for s in groups["rooms"]]
            rooms[variant, k] = sum(c["accuracy"] * c["support"] for c in pc) / sum(c["support"] for c in pc)
    lines = (out / "ablation.md").read_text().splitlines()
    assert lines[0] == ("| variant | seeds | top-1 % whole split (16 img) | top-1 % rooms (8 img) | "
                        "Δ vs two_stream whole split | Δ vs two_stream rooms |")
    row = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in lines[2:]}
    for variant in ("graph_only", "two_stream"):
        assert row[variant][1] == "2"
        assert row[variant][2] == pct([top1[variant, k] for k in range(2)])
        assert row[variant][3] == pct([rooms[variant, k] for k in range(2)])
    assert row["graph_only"][4] == pct([top1["graph_only", k] - top1["two_stream", k] for k in range(2)], signed=True)
    assert row["graph_only"][5] == pct([rooms["graph_only", k] - rooms["two_stream", k] for k in range(2)],
                                       signed=True)
    assert row["two_stream"][4:] == ["—", "—"]
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["runs"]["two_stream"]["1"]["scores"]["all"]["top1"] == top1["two_stream", 1]
    assert saved["variants"]["graph_only"] == list(VARIANTS["graph_only"])
    # resumable: finished runs are read back, never retrained
    import twostream.engine.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    threads = torch.get_num_threads()
    again = run_ablation(config, ["graph_only", "two_stream"], seeds=2, out=out, jobs=1, scene_groups=groups)
    assert again["table"] == result["table"]
    assert torch.get_num_threads() == threads  # in-process runs leave the caller's thread count as it was
    # the same folder with another config is refused, not mixed in
    other = run_ablation(config, ["graph_only"], seeds=1, out=out, opts=["model.gnn.hidden_dim=8"])
    assert other["failed"] and "holds a finished run of another config" in other["failed"][0]


def test_subsets_from_metrics_and_the_table_without_a_reference():
    def metrics(top1, sub):
        return {"top1": top1, "num_images": 10, "subsets": {"relation_only": {"top1": sub, "num_images": 4}}}

    scores = {"bag_of_objects": {0: run_scores(metrics(0.5, 0.25)), 1: run_scores(metrics(0.7, 0.75))}}
    summary = summarize(scores)
    assert summary["reference"] is None and summary["metrics"] == ["all", "relation_only"]
    assert math.isclose(summary["variants"]["bag_of_objects"]["top1"]["relation_only"]["mean"], 0.5)
    assert format_table(summary).splitlines()[2] == "| bag_of_objects | 2 | 60.0 ± 14.1 | 50.0 ± 35.4 |"
    with pytest.raises(ValueError, match="scene group pair: moon_base not in the run's scene vocabulary"):
        run_scores({"top1": 1.0, "num_images": 1, "per_class": {"street": {}}, "confusion_matrix": [[1]]},
                   {"pair": ["moon_base"]})


def test_bad_variants_and_the_tool(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) wings; known: image_only, graph_only"):
        run_ablation(None, ["wings"], out=tmp_path)
    with pytest.raises(ConfigError, match=r"variant two_stream: .*model\.fusion\.type is 'none' but both streams"):
        run_ablation(None, ["two_stream"], out=tmp_path, opts=["model.fusion.type=none"])
    from twostream.commands.ablate import _scene_groups

    with pytest.raises(ValueError, match="is not NAME=SCENE,SCENE"):
        _scene_groups(["pair"])
    tool = runpy.run_path(str(REPO / "tools/ablate.py"), run_name="tool")  # the shim: the same parser
    args = tool["get_args_parser"]().parse_args(["--config", "c.yaml"])
    assert args.variants == list(VARIANTS) and args.seeds == 3 and args.jobs == 1
