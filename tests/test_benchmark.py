"""The benchmark (tools/benchmark.py, twostream.benchmark): a CI-size run produces the whole report; the per-stage
chain reproduces the model's own logits; the timer, memory probe and target verdicts behave. No timing assertions."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from twostream.benchmark import BenchmarkOptions, format_report, run_benchmark
from twostream.benchmark.inference import (
    DEFAULT_MODELS,
    STAGES,
    InferenceRow,
    ModelSpec,
    build_spec_model,
    spec_config,
    stage_calls,
)
from twostream.benchmark.measure import MemoryProbe, Timing, time_calls
from twostream.benchmark.report import evaluate_targets
from twostream.benchmark.training import LoaderRow, TrainStepResult

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def ci_result():
    """One CI-size run of every section (about 15 s on the shared 2-core machine)."""
    return run_benchmark(BenchmarkOptions(ci=True))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?(?![\w.])", text.replace("−", "-"))]


def test_ci_report_has_every_row_section_and_target(ci_result):
    report = format_report(ci_result)
    for section in ("### Inference", "### Training step", "### Data pipeline", "### Graph store", "### Targets"):
        assert section in report
    table = report.split("### Inference")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    expected = {(spec.name, b) for spec in DEFAULT_MODELS for b in (1, 8)}
    assert {(line.split(" | ")[0][2:], int(line.split(" | ")[1])) for line in rows} == expected
    for line in rows:
        assert "nan" not in line and "inf" not in line
        assert _numbers(line), line
    targets = report.split("### Targets")[1]
    for key in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)"):
        line = next(ln for ln in targets.splitlines() if ln.startswith(f"| {key}"))
        assert line.rstrip(" |").endswith(("met", "**not met**")), line  # measured, with a verdict
    assert "| 2 | 8 |" in report.split("### Data pipeline")[1]  # the 2-worker loader row at the CI batch size
    store = report.split("### Graph store")[1].split("###")[0]
    assert "| shuffled access, 4,000 graphs" in store and "graphs from the gt store, no image opened" in store


def test_ci_measurements_are_finite_and_complete(ci_result):
    assert ci_result.threads >= 1
    for row in ci_result.inference:
        assert row.e2e.iters >= 1 and math.isfinite(row.e2e.median) and row.e2e.median > 0
        assert row.params > 0
        two_stream = "image_only" not in row.name
        expected = set(STAGES) if two_stream else {"image_encoder", "fusion_head"}
        assert set(row.stages) == expected, row.name
        assert all(math.isfinite(t.median) and t.median > 0 for t in row.stages.values())
        if two_stream:
            assert row.nodes is not None and row.nodes >= 0 and row.baseline is not None
        if row.peak_mib is not None:
            assert row.peak_mib >= 0
    shared = [r for r in ci_result.inference if r.name == "shared_swin_gat"]
    assert all(r.backbone is not None for r in shared)
    assert ci_result.train is not None and ci_result.train.images_per_s > 0
    assert [r.workers for r in ci_result.loader] == [0, 1, 2]
    assert all(r.batches_per_s > 0 and r.startup_s >= 0 for r in ci_result.loader)
    assert all(t.met is not None for t in ci_result.targets)
    st = ci_result.store
    assert st.size == 4000 and st.small == 100 and st.store.shuffled > 0 and st.cache.shuffled > 0
    assert st.store_build_gps > 0 and st.cache_build_gps > 0 and st.store_bytes > 0
    assert st.epoch_items == 32 and st.epoch_graphs_only_s > 0 and st.epoch_images_s > 0


@pytest.mark.parametrize("name", ["swin_gat", "shared_swin_gat", "resnet_sage", "image_only_swin"])
def test_stage_chain_reproduces_model_logits(name):
    """The stages timed one by one compute exactly what the model's forward computes."""
    cfg = spec_config(ModelSpec(name, name), CONFIGS, size=64, ci=True)
    model = build_spec_model(cfg)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        calls, outputs = stage_calls(model, images)
        expected = model(images)["logits"]
    torch.testing.assert_close(outputs["logits"], expected)
    if cfg.model.gnn.enabled:
        assert {"segmenter", "builder", "gnn"} <= set(calls)
    else:
        assert not {"segmenter", "builder", "gnn"} & set(calls)
    assert ("backbone" in calls) == cfg.model.shared_backbone


def test_time_calls_counts_warmup_and_stops_at_budget():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    timing = time_calls(fn, torch.device("cpu"), warmup=2, iters=10, min_iters=3, budget_s=0.0)
    assert timing.iters == 3 and len(calls) == 5  # 2 warm-up + 3 timed: the budget was spent after each call
    assert all(t >= 0.009 for t in timing.times)
    assert time_calls(fn, torch.device("cpu"), warmup=0, iters=4, min_iters=1, budget_s=60).iters == 4


def test_memory_probe_sees_a_large_allocation():
    probe = MemoryProbe(torch.device("cpu"))
    probe.start()
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, written, so resident
    peak = probe.stop()
    del x
    if peak is None:
        pytest.skip(f"no CPU memory probe here: {probe.method}")
    assert 60 <= peak < 1024, probe.method


def _row(name: str, batch: int, e2e: float, stages: dict[str, float] | None = None, backbone: float | None = None,
         baseline: str | None = None) -> InferenceRow:
    return InferenceRow(name=name, config=name, batch=batch, image_size=(224, 224), params=1, e2e=Timing([e2e]),
                        stages={k: Timing([v]) for k, v in (stages or {}).items()},
                        backbone=Timing([backbone]) if backbone is not None else None, nodes=20.0, edges=80.0,
                        baseline=baseline)


def test_target_verdicts_from_hand_made_measurements():
    two = {"segmenter": 0.5, "builder": 0.02, "gnn": 0.01, "image_encoder": 0.01, "fusion_head": 0.001}
    rows = [_row("image_only_swin", 1, 0.40, {"image_encoder": 0.39, "fusion_head": 0.001}),
            _row("shared_swin_gat", 1, 0.50, two, backbone=0.38, baseline="image_only_swin"),  # 1.25x: met
            _row("swin_gat", 1, 1.00, {**two, "builder": 0.06, "gnn": 0.05}, baseline="image_only_swin")]  # 11%
    train = TrainStepResult("quickstart", 16, (128, 128), 1, 1, Timing([0.5]))  # 2 steps/s
    loader = [LoaderRow(workers=2, batch=16, startup_s=0.1, batches=3, seconds=1.0)]  # 3 batches/s: 1.5x
    a, b, c = evaluate_targets(rows, loader, train)[:3]
    assert a.met is True and "1.25x" in a.measured
    assert b.met is False and "11.0%" in b.measured and "builder" in b.note
    assert c.met is False and "1.5x" in c.measured
    rows.append(_row("shared_swin_gat", 8, 4.0, two, backbone=2.0, baseline="image_only_swin"))
    rows.append(_row("image_only_swin", 8, 2.0, {"image_encoder": 1.9, "fusion_head": 0.01}))
    a = evaluate_targets(rows, loader, train)[0]
    assert a.met is False and "B=8: 2.00x" in a.measured  # one batch size over the limit misses the target
    assert evaluate_targets([], [], None)[0].met is None


def test_store_target_verdicts_from_hand_made_measurements():
    from twostream.benchmark.store import Access, StoreResult

    def result(shuffled_ms: float, private: float, graphs_s: float) -> StoreResult:
        return StoreResult(size=1_000_000, small=10_000,
                           store=Access(shuffled=shuffled_ms / 1e3, private_read_mib=private),
                           cache=Access(shuffled=4e-3), store_small=Access(private_read_mib=0.1), cache_small=Access(),
                           epoch_items=128, epoch_graphs_only_s=graphs_s, epoch_images_s=1.0)

    d, e, f = evaluate_targets([], [], None, result(0.05, 0.2, 0.05))[3:]
    assert d.met is True and "0.050 ms at 1,000,000 graphs" in d.measured and e.met is True and f.met is True
    d, e, f = evaluate_targets([], [], None, result(0.2, 30.0, 0.2))[3:]
    assert d.met is False and e.met is False and f.met is False and "5.0x" in f.measured
    assert all(t.met is None for t in evaluate_targets([], [], None)[3:])


def test_synthetic_store_holds_what_the_cache_holds(tmp_path):
    """The benchmark's two formats are written from the same arrays: every graph reads back equal from both."""
    from twostream.benchmark.store import synthetic_graphs, write_synthetic_cache, write_synthetic_store
    from twostream.graph.cache import ShardCache
    from twostream.graph.store import GraphStore

    graphs = synthetic_graphs(600, seed=3)
    write_synthetic_store(tmp_path / "s", graphs)
    write_synthetic_cache(tmp_path / "c", graphs)
    store, cache = GraphStore(tmp_path / "s"), ShardCache(tmp_path / "c")
    assert len(store) == len(cache) == 600
    for name in ("img_00000000", "img_00000255", "img_00000256", "img_00000599"):
        g = store.get(name).validate()
        assert g.equal(cache.get(name)) and g.num_edges == 4 * g.num_nodes


def test_options_reject_a_size_the_segmenter_cannot_take():
    with pytest.raises(ValueError, match="multiple of 32"):
        BenchmarkOptions(size=100).resolved()


def test_tool_reports_user_errors_in_one_line():
    r = subprocess.run([sys.executable, "tools/benchmark.py", "--size", "100"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: benchmark: --size 100 must be a positive multiple")
