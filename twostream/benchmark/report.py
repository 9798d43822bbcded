"""The benchmark's markdown report: the inference table, training step and loader tables, and the targets' verdicts.

Targets (issue 9):

- (a) with the shared backbone, two-stream inference costs at most 1.3x the image-only model with the same backbone
  (``shared_swin_gat`` vs ``image_only_swin``, end to end, same run and image size);
- (b) the graph builder and the GNN together take under 10% of end-to-end inference time (``swin_gat``);
- (c) the loader delivers at least 2x the training step rate on 2 workers (batches/s vs optimizer steps/s, same
  batch size).

Targets (issues 16 and 20), from the graph-store section:

- (d) a shuffled epoch reads a graph from a store of 1 M graphs in at most 0.1 ms;
- (e) the private memory of an opened store does not grow with its size (after the same shuffled reads, the full
  store costs at most 8 MiB more than one a hundredth of its size, at least 100 graphs);
- (f) a graphs-only epoch is at least 10x faster than the same epoch reading images.

A target holds when it holds at every batch size measured; a missed one gets a note saying which stage costs what.
"""

from __future__ import annotations

from dataclasses import dataclass

from twostream.benchmark.inference import STAGES, InferenceRow
from twostream.benchmark.store import StoreResult
from twostream.benchmark.training import LoaderRow, TrainStepResult

__all__ = ["Target", "evaluate_targets", "format_report", "inference_table", "loader_table", "store_table",
           "targets_table", "train_table"]

STAGE_TITLES = {"segmenter": "segmenter", "builder": "graph builder", "gnn": "GNN", "image_encoder": "image encoder",
                "fusion_head": "fusion+head"}
SHARED_MAX_RATIO = 1.3
GRAPH_MAX_SHARE = 0.10
LOADER_MIN_RATIO = 2.0
LOADER_WORKERS = 2
STORE_MAX_MS = 0.1
STORE_MAX_GROWTH_MIB = 8.0
GRAPHS_ONLY_MIN_SPEEDUP = 10.0


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


def _mib(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else "n/a"


def _ratio(store: float | None, baseline: float | None, faster_is_lower: bool = True) -> str:
    if store is None or baseline is None or store <= 0 or baseline <= 0:
        return "—"
    ratio = baseline / store if faster_is_lower else store / baseline
    return f"**{ratio:.1f}x**" if ratio >= 1 else f"{ratio:.2f}x"


def store_table(r: StoreResult) -> str:
    """The graph store against the old shard cache at the same size, and the graphs-only epoch."""
    n, m = f"{r.size:,}", f"{r.small:,}"
    s, c, ss, cs = r.store, r.cache, r.store_small, r.cache_small
    rows = [
        (f"shuffled access, {n} graphs (ms / graph; {s.shuffled_reads:,} / {c.shuffled_reads:,} reads)",
         _ms(s.shuffled), _ms(c.shuffled), _ratio(s.shuffled, c.shuffled)),
        (f"shuffled access, {m} graphs (ms / graph)", _ms(ss.shuffled), _ms(cs.shuffled),
         _ratio(ss.shuffled, cs.shuffled)),
        (f"shuffled access, {n} graphs, page cache dropped (ms / graph)", _ms(s.cold) if s.cold else "n/a", "—", "—"),
        (f"in-order access, {n} graphs (ms / graph)", _ms(s.in_order), _ms(c.in_order), _ratio(s.in_order, c.in_order)),
        (f"open + first get, {n} graphs (ms)", _ms(s.open_s), _ms(c.open_s), _ratio(s.open_s, c.open_s)),
        (f"open + first get, {m} graphs (ms)", _ms(ss.open_s), _ms(cs.open_s), _ratio(ss.open_s, cs.open_s)),
        (f"private memory after open, {m} / {n} graphs (MiB)", f"{_mib(ss.private_open_mib)} / "
         f"{_mib(s.private_open_mib)}", f"{_mib(cs.private_open_mib)} / {_mib(c.private_open_mib)}", "—"),
        (f"private memory after the shuffled reads, {m} / {n} graphs (MiB)", f"{_mib(ss.private_read_mib)} / "
         f"{_mib(s.private_read_mib)}", f"{_mib(cs.private_read_mib)} / {_mib(c.private_read_mib)}", "—"),
        (f"shared file pages touched by the shuffled reads, {n} graphs (MiB)", _mib(s.shared_read_mib),
         _mib(c.shared_read_mib), "—"),
        (f"build from tensors, {r.build_graphs:,} graphs (graphs / s)", _num(r.store_build_gps or 0),
         _num(r.cache_build_gps or 0), _ratio(r.store_build_gps, r.cache_build_gps, faster_is_lower=False)),
        (f"on disk, {n} graphs (MiB)", _mib(r.store_bytes / 2**20), _mib(r.cache_bytes / 2**20),
         _ratio(r.store_bytes, r.cache_bytes)),
    ]
    lines = ["| measurement | graph store | old shard cache (baseline) | store vs baseline |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    if r.epoch_graphs_only_s is not None and r.epoch_images_s is not None:
        lines += ["", "| epoch of a graph-only model | seconds | items / s | vs reading images |", "|---|---|---|---|",
                  f"| graphs from the gt store, no image opened | {_num(r.epoch_graphs_only_s)} | "
                  f"{_num(r.epoch_items / r.epoch_graphs_only_s)} | "
                  f"{_ratio(r.epoch_graphs_only_s, r.epoch_images_s)} |",
                  f"| images + annotations read, transformed, graph built (baseline) | {_num(r.epoch_images_s)} | "
                  f"{_num(r.epoch_items / r.epoch_images_s)} | 1.0x |"]
    return "\n".join(lines)


STORE_NOTES = ("Synthetic graphs (3-24 nodes, 4 directed edges per node), written straight from flat arrays; both "
               "formats hold the same graphs. Times are per `get(name)` returning a SceneGraph, one process, page "
               "cache warm unless said; \"private memory\" is the growth of the process's anonymous memory "
               "(RssAnon: what every loader worker pays alone), \"shared file pages\" are the page cache's "
               "(RssFile), shared by every worker and the system. Baseline: the old shard cache (shards of 256 "
               "graphs, 16 kept per process). The store's build includes its final pass that concatenates the "
               "chunks into one file per field; a real build's time is the builder's or the segmenter's.")


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


def _targets_store(store: StoreResult | None) -> list[Target]:
    goals = (f"graph store: shuffled access ≤ {STORE_MAX_MS} ms per graph at 1 M graphs",
             f"graph store: private memory independent of size (N graphs ≤ N/100 graphs + {STORE_MAX_GROWTH_MIB:.0f} "
             "MiB)",
             f"graphs-only epoch ≥ {GRAPHS_ONLY_MIN_SPEEDUP:.0f}x faster than reading images")
    if store is None:
        return [Target(k, g, "store section not run", None) for k, g in zip("def", goals)]
    s = store.store
    note = "" if store.size >= 1_000_000 else f"measured at {store.size:,} graphs (--store-size), not 1 M"
    d = Target("d", goals[0], f"{_ms(s.shuffled)} ms at {store.size:,} graphs "
               f"(old shard cache {_ms(store.cache.shuffled)} ms)", s.shuffled * 1e3 <= STORE_MAX_MS, note)
    if s.private_read_mib is None or store.store_small.private_read_mib is None:
        e = Target("e", goals[1], "no /proc/self/status here", None)
    else:
        grow = s.private_read_mib - store.store_small.private_read_mib
        e = Target("e", goals[1], f"{_mib(store.store_small.private_read_mib)} MiB at {store.small:,}, "
                   f"{_mib(s.private_read_mib)} MiB at {store.size:,} graphs", grow <= STORE_MAX_GROWTH_MIB)
    if store.epoch_graphs_only_s is None or store.epoch_images_s is None:
        f = Target("f", goals[2], "not run", None)
    else:
        ratio = store.epoch_images_s / store.epoch_graphs_only_s
        f = Target("f", goals[2], f"{ratio:.1f}x ({_num(store.epoch_graphs_only_s)} s vs "
                   f"{_num(store.epoch_images_s)} s for {store.epoch_items} items)", ratio >= GRAPHS_ONLY_MIN_SPEEDUP)
    return [d, e, f]


def evaluate_targets(rows: list[InferenceRow], loader: list[LoaderRow], train: TrainStepResult | None,
                     store: StoreResult | None = None) -> list[Target]:
    """The targets' verdicts from the measurements."""
    return [_target_shared(rows), _target_graph_share(rows), _target_loader(loader, train), *_targets_store(store)]


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
    if result.store is not None:
        parts += ["### Graph store", "", store_table(result.store), "", STORE_NOTES, ""]
    if getattr(result, "explain", None) is not None:
        from twostream.benchmark.explain import explain_table

        parts += ["### Explanation of one image (twostream.explain)", "", explain_table(result.explain), ""]
    parts += ["### Targets", "", targets_table(result.targets), ""]
    return "\n".join(parts)
