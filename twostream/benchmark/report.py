"""The benchmark's markdown report: the inference table, training step and loader tables, and the targets' verdicts.

Targets (issue 9):

- (a) with the shared backbone, two-stream inference costs at most 1.3x the image-only model with the same backbone
  (``shared_swin_gat`` vs ``image_only_swin``, end to end, same run and image size);
- (b) the graph builder and the GNN together take under 10% of end-to-end inference time (``swin_gat``);
- (c) the loader delivers at least 2x the training step rate on 2 workers (batches/s vs optimizer steps/s, same
  batch size).

A target holds when it holds at every batch size measured; a missed one gets a note saying which stage costs what.
"""

from __future__ import annotations

from dataclasses import dataclass

from twostream.benchmark.inference import STAGES, InferenceRow
from twostream.benchmark.training import LoaderRow, TrainStepResult

__all__ = ["Target", "evaluate_targets", "format_report", "inference_table", "loader_table", "targets_table",
           "train_table"]

STAGE_TITLES = {"segmenter": "segmenter", "builder": "graph builder", "gnn": "GNN", "image_encoder": "image encoder",
                "fusion_head": "fusion+head"}
SHARED_MAX_RATIO = 1.3
GRAPH_MAX_SHARE = 0.10
LOADER_MIN_RATIO = 2.0
LOADER_WORKERS = 2


@dataclass
class Target:
    """One target: what it asks, what was measured, ``met`` (``None`` when it could not be measured) and a note."""

    key: str
    goal: str
    measured: str
    met: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**not met**", None: "not measured"}[self.met]


# --------------------------------------------------------------------------------------------------------------------
# Number formatting
# --------------------------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """About three significant digits, no exponent."""
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _ms(seconds: float) -> str:
    return _num(1e3 * seconds)


# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------


def _find(rows: list[InferenceRow], name: str, batch: int) -> InferenceRow | None:
    return next((r for r in rows if r.name == name and r.batch == batch), None)


def inference_table(rows: list[InferenceRow], memory_title: str = "peak mem (MiB)") -> str:
    """One line per (model, batch): images/s end to end and per stage (with ms per batch), the stage sum, the
    overhead of the model forward over it, graph sizes, peak memory and the ratio to the image-only model."""
    head = (["model", "B", "params", "end to end img/s (ms)"] + [f"{STAGE_TITLES[s]} img/s (ms)" for s in STAGES]
            + ["stage sum ms", "overhead ms", "nodes / edges per graph", memory_title, "vs image-only"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, str(r.batch), f"{r.params / 1e6:.1f} M",
                 f"**{_num(r.e2e.rate(r.batch))}** ({_ms(r.e2e.median)})"]
        for stage in STAGES:
            t = r.stages.get(stage)
            if t is None:
                cells.append("—")
                continue
            mark = "†" if stage in r.reused else ""
            extra = f", backbone {_ms(r.backbone.median)}" if stage == "segmenter" and r.backbone is not None else ""
            cells.append(f"{_num(t.rate(r.batch))} ({_ms(t.median)}{extra}){mark}")
        overhead = r.e2e.median - r.stage_sum
        cells.append(_ms(r.stage_sum))
        cells.append(f"{'+' if overhead >= 0 else '−'}{_ms(abs(overhead))} ({100 * overhead / r.e2e.median:+.0f}%)")
        cells.append(f"{r.nodes:.1f} / {r.edges:.1f}" if r.nodes is not None else "—")
        cells.append(_num(r.peak_mib) if r.peak_mib is not None else "n/a")
        base = _find(rows, r.baseline, r.batch) if r.baseline else None
        cells.append(f"{r.e2e.median / base.e2e.median:.2f}x" if base is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_table(train: TrainStepResult) -> str:
    h, w = train.image_size
    return "\n".join([
        "| config | B | image size | params (trainable) | ms / step | steps/s | images/s |",
        "|---|---|---|---|---|---|---|",
        f"| {train.config} | {train.batch} | {h}x{w} | {train.params / 1e6:.1f} M ({train.trainable / 1e6:.1f} M) | "
        f"{_ms(train.step.median)} | {_num(train.steps_per_s)} | **{_num(train.images_per_s)}** |",
    ])


def loader_table(loader: list[LoaderRow], train: TrainStepResult | None) -> str:
    lines = ["| workers | B | start-up s | batches/s | images/s | ms per item per worker | x training step rate |",
             "|---|---|---|---|---|---|---|"]
    for row in loader:
        ratio = f"{row.batches_per_s / train.steps_per_s:.1f}x" if train is not None else "—"
        lines.append(f"| {row.workers} | {row.batch} | {row.startup_s:.2f} | **{_num(row.batches_per_s)}** | "
                     f"{_num(row.images_per_s)} | {_num(row.ms_per_item)} | {ratio} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------------------


def _batches(rows: list[InferenceRow]) -> list[int]:
    return sorted({r.batch for r in rows})


def _target_shared(rows: list[InferenceRow]) -> Target:
    goal = f"shared backbone: shared_swin_gat ≤ {SHARED_MAX_RATIO}x image_only_swin (end to end)"
    pairs = [(b, _find(rows, "shared_swin_gat", b), _find(rows, "image_only_swin", b)) for b in _batches(rows)]
    pairs = [(b, two, one) for b, two, one in pairs if two is not None and one is not None]
    if not pairs:
        return Target("a", goal, "shared_swin_gat or image_only_swin not run", None)
    ratios = [(b, two.e2e.median / one.e2e.median) for b, two, one in pairs]
    met = all(ratio <= SHARED_MAX_RATIO for _, ratio in ratios)
    measured = ", ".join(f"B={b}: {ratio:.2f}x" for b, ratio in ratios)
    b, two, one = pairs[-1]
    seg, back = two.stages.get("segmenter"), two.backbone
    note = ""
    if seg is not None and back is not None:
        after = seg.median - back.median
        graph = sum(two.stages[s].median for s in ("builder", "gnn") if s in two.stages)
        note = (f"B={b}: image_only_swin {_ms(one.e2e.median)} ms; shared_swin_gat {_ms(two.e2e.median)} ms, of which "
                f"the shared backbone {_ms(back.median)} ms ({back.median / one.e2e.median:.2f}x the image-only "
                f"model), the segmentation layers after it {_ms(after)} ms ({after / one.e2e.median:.2f}x), "
                f"builder + GNN {_ms(graph)} ms, image adapter + fusion + head "
                f"{_ms(two.stages['image_encoder'].median + two.stages['fusion_head'].median)} ms.")
        if not met:
            note += (f" The backbone runs once; the excess is the segmenter after it ({two.segmenter}), which the "
                     "image-only model does not have.")
    return Target("a", goal, measured, met, note)


def _target_graph_share(rows: list[InferenceRow]) -> Target:
    goal = f"graph builder + GNN < {100 * GRAPH_MAX_SHARE:.0f}% of swin_gat end to end"
    found = [r for b in _batches(rows) if (r := _find(rows, "swin_gat", b)) is not None]
    if not found or any("builder" not in r.stages or "gnn" not in r.stages for r in found):
        return Target("b", goal, "swin_gat not run", None)
    shares = [(r, (r.stages["builder"].median + r.stages["gnn"].median) / r.e2e.median) for r in found]
    met = all(share < GRAPH_MAX_SHARE for _, share in shares)
    measured = ", ".join(f"B={r.batch}: {100 * share:.1f}%" for r, share in shares)
    r = shares[-1][0]
    note = (f"B={r.batch}: builder {_ms(r.stages['builder'].median)} ms + GNN {_ms(r.stages['gnn'].median)} ms of "
            f"{_ms(r.e2e.median)} ms; graphs of {r.nodes:.0f} nodes / {r.edges:.0f} directed edges on average "
            "(random-weight segmenter maps are noisier than ADE20K's, so these graphs are larger than real ones).")
    return Target("b", goal, measured, met, note)


def _target_loader(loader: list[LoaderRow], train: TrainStepResult | None) -> Target:
    goal = f"loader on {LOADER_WORKERS} workers ≥ {LOADER_MIN_RATIO:.0f}x the training step rate (quickstart)"
    row = next((r for r in loader if r.workers == LOADER_WORKERS), None)
    if row is None or train is None:
        return Target("c", goal, "loader or training step not run", None)
    ratio = row.batches_per_s / train.steps_per_s
    met = ratio >= LOADER_MIN_RATIO
    measured = (f"{_num(row.batches_per_s)} batches/s vs {_num(train.steps_per_s)} steps/s = {ratio:.1f}x "
                f"(B={row.batch})")
    note = (f"one item costs a worker {_num(row.ms_per_item)} ms (JPEG/PNG decode, augmentation, graph from the "
            f"cache, collation); a step costs {_ms(train.step.median)} ms.")
    return Target("c", goal, measured, met, note)


def evaluate_targets(rows: list[InferenceRow], loader: list[LoaderRow], train: TrainStepResult | None) -> list[Target]:
    """The three targets' verdicts from the measurements."""
    return [_target_shared(rows), _target_graph_share(rows), _target_loader(loader, train)]


def targets_table(targets: list[Target]) -> str:
    lines = ["| target | goal | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| ({t.key}) | {t.goal} | {t.measured} | {t.verdict} |" for t in targets]
    notes = [f"- ({t.key}) {t.note}" for t in targets if t.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def format_report(result) -> str:
    """The whole report (a :class:`~twostream.benchmark.runner.BenchmarkResult`) as markdown."""
    parts = ["## twostream benchmark", "", *[f"- {line}" for line in result.header_lines()], ""]
    if result.inference:
        parts += ["### Inference", "", inference_table(result.inference, result.memory_title), "",
                  *result.inference_notes(), ""]
    if result.train is not None:
        parts += ["### Training step", "", train_table(result.train), ""]
    if result.loader:
        parts += ["### Data pipeline", "", loader_table(result.loader, result.train), "", *result.loader_notes(), ""]
    if result.builder_table:
        parts += ["### Graph builder alone (benchmarks/graph_builder.py)", "", result.builder_table, ""]
    if getattr(result, "explain", None) is not None:
        from twostream.benchmark.explain import explain_table

        parts += ["### Explanation of one image (twostream.explain)", "", explain_table(result.explain), ""]
    parts += ["### Targets", "", targets_table(result.targets), ""]
    return "\n".join(parts)
