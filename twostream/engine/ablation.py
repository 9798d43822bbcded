"""What do the edges add? Train and evaluate ablation variants of one config over seeds, and tabulate them.

Each variant is a plain set of config overrides (:data:`VARIANTS`) on top of the config and the user's ``--opts``;
each (variant, seed) pair is one ordinary run of the engine (:func:`twostream.engine.trainer.train`, then
:func:`twostream.engine.evaluate.evaluate_checkpoint` on its ``last.pth``) in its own folder::

    <out>/<variant>/seed<k>/      config.yaml, last.pth, ..., metrics.json (the evaluation)
    <out>/ablation.md             the table
    <out>/ablation.json           every run's numbers and the summaries

Seed ``k`` (``0 .. seeds-1``) trains with ``train.seed = <config's train.seed> + k``. A run whose folder already holds
``metrics.json`` made with the same config is reused, not retrained; an interrupted run resumes from its
``last.pth`` (the trainer's own resumption). The last checkpoint is scored, not ``best.pth``: picking the best epoch
on the split the table reports would flatter every row.

The table gives, per variant, the mean ± sample standard deviation over seeds of top-1 on the whole split and on
each subset, and the paired difference to the reference row (``two_stream``): per seed, variant minus reference, then
mean ± std of those differences. Subsets are read from ``metrics.json`` (``"subsets": {"relation_only": {"top1":
...}}``, written by the evaluation when the dataset names subsets), and scene groups (``scene_groups``: the images
whose true scene is one of a list) are read off the confusion matrix.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from twostream.atomic import atomic_write_text
from twostream.config import Config, ConfigError, config_differences, load_config

log = logging.getLogger(__name__)

__all__ = ["REFERENCE", "VARIANTS", "AblationRun", "format_table", "run_ablation", "summarize"]

_GRAPH_ONLY = ("model.image_encoder.enabled=false", "model.fusion.type=none", "model.gnn.enabled=true")

# name -> config overrides. A new variant is one entry. Graph-stream variants turn the image stream off, so each
# row measures the graph alone; two_stream turns both streams on with the config's own fusion.
VARIANTS: dict[str, tuple[str, ...]] = {
    "image_only": ("model.image_encoder.enabled=true", "model.gnn.enabled=false", "model.fusion.type=none"),
    "graph_only": _GRAPH_ONLY,  # the full scene graph: class + geometry nodes, "touches" edges
    "bag_of_objects": (*_GRAPH_ONLY, "model.gnn.edges=none"),  # class + geometry, no message between nodes
    "shuffled_edges": (*_GRAPH_ONLY, "model.gnn.edges=shuffled"),  # degree-preserving random edges
    "presence_only": (*_GRAPH_ONLY, "model.gnn.edges=none", "model.gnn.node_input=class"),  # which classes, no more
    "adjacency_only": (*_GRAPH_ONLY, "model.gnn.node_input=class"),  # classes + who touches whom, no geometry
    # classes + random contacts with each object's true number of contacts: what adjacency_only has beyond degrees
    "shuffled_adjacency": (*_GRAPH_ONLY, "model.gnn.edges=shuffled", "model.gnn.node_input=class"),
    "two_stream": ("model.image_encoder.enabled=true", "model.gnn.enabled=true"),
}
REFERENCE = "two_stream"  # the row every paired difference is taken against
WHOLE = "all"  # the metric key of the whole split
# How a run logs, checkpoints or loads its data does not change its numbers (train.epochs does, unlike on a resume)
_FREE_KEYS = ("data.num_workers", "train.log_every", "train.checkpoint_every", "train.keep_last",
              "output.tensorboard")


@dataclass
class AblationRun:
    """One (variant, seed) run: where it lives and the overrides that make it."""

    variant: str
    seed: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)


def _run_config(config: str | Path | None, opts: Sequence[str], run: AblationRun) -> Config:
    return load_config(config, [*opts, *run.overrides])


def plan_runs(config: str | Path | None, variants: Sequence[str], seeds: int, out: str | Path,
              opts: Sequence[str] = ()) -> list[AblationRun]:
    """Every (variant, seed) run, each config validated before anything trains (a bad one is one ``ConfigError``)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"--variants: listed twice in {' '.join(variants)}")
    if seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds}")
    runs = []
    for variant in variants:
        try:
            base_seed = load_config(config, [*opts, *VARIANTS[variant]]).train.seed
            for k in range(seeds):
                run_dir = Path(out) / variant / f"seed{k}"
                run = AblationRun(variant, k, run_dir, [*VARIANTS[variant], f"train.seed={base_seed + k}",
                                                        f"output.dir={run_dir}"])
                _run_config(config, opts, run)
                runs.append(run)
        except ConfigError as e:
            raise ConfigError(f"variant {variant}: {e}") from None
    return runs


def _finished(run_dir: Path, cfg: Config) -> dict | None:
    """The run's metrics when it finished with this very config; ``None`` when it has to (continue to) train."""
    metrics_path, saved = run_dir / "metrics.json", run_dir / "config.yaml"
    if not metrics_path.is_file():
        return None

    if not saved.is_file() or config_differences(load_config(saved), cfg, _FREE_KEYS):
        raise ConfigError(f"{run_dir}: holds a finished run of another config; choose another --out or delete the "
                          "folder to run it again")
    return json.loads(metrics_path.read_text())


def train_and_evaluate(config: str | Path | None, opts: Sequence[str], run: AblationRun,
                       threads: int | None = None) -> dict:
    """Train one run (or resume it), score its ``last.pth`` and return the metrics (reused when already there)."""
    import torch

    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.trainer import train

    cfg = _run_config(config, opts, run)
    done = _finished(run.run_dir, cfg)
    if done is not None:
        log.info("%s seed %d: reusing %s", run.variant, run.seed, run.run_dir / "metrics.json")
        return done
    # The thread count is process-wide state: set it for this run and give the caller's back (a run in the calling
    # process must not change how the caller computes afterwards, e.g. in a test process).
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        train(cfg)
        return evaluate_checkpoint(run.run_dir / "last.pth", out_dir=run.run_dir, device=cfg.train.device)
    finally:
        torch.set_num_threads(before)


def _worker(config, opts, run: AblationRun, threads: int) -> tuple[AblationRun, dict]:
    """One run in a worker process; its log goes to ``<run>/ablate.log``."""
    import warnings

    from twostream.logger import DATEFMT, FORMAT

    # as twostream.cli does: torch_geometric's import calls the deprecated torch.jit.script, noise in every worker
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.run_dir / "ablate.log")
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return run, train_and_evaluate(config, opts, run, threads)


# --------------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------------


def run_scores(metrics: dict, scene_groups: dict[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """``{metric: {"top1": float, "num_images": int}}`` of one run: the whole split (:data:`WHOLE`), every subset
    of ``metrics["subsets"]`` and every scene group (read off the confusion matrix)."""
    scores = {WHOLE: {"top1": float(metrics["top1"]), "num_images": int(metrics["num_images"])}}
    for name, sub in (metrics.get("subsets") or {}).items():
        scores[name] = {"top1": float(sub["top1"]), "num_images": int(sub.get("num_images", 0))}
    names = list(metrics.get("per_class", {}))
    matrix = metrics.get("confusion_matrix")
    for name, scenes in (scene_groups or {}).items():
        missing = [s for s in scenes if s not in names]
        if missing or matrix is None:
            raise ValueError(f"scene group {name}: {', '.join(missing) or 'scenes'} not in the run's scene vocabulary "
                             f"({', '.join(names)})")
        rows = [names.index(s) for s in scenes]
        total = sum(sum(matrix[i]) for i in rows)
        correct = sum(matrix[i][i] for i in rows)
        scores[name] = {"top1": correct / total if total else math.nan, "num_images": int(total)}
    return scores


def _mean_std(values: Sequence[float]) -> dict:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else math.nan,
            "n": len(values)}


def summarize(scores: dict[str, dict[int, dict[str, dict]]], reference: str = REFERENCE) -> dict:
    """Per variant and metric: mean ± sample std of top-1 over seeds and, when ``reference`` is among the variants,
    the paired difference (same seed: variant - reference) mean ± std.

    Args:
        scores: ``{variant: {seed: run_scores(...)}}``.
    Returns:
        ``{"metrics": [...], "reference": str | None, "variants": {variant: {"top1": {metric: {mean, std, n}},
        "delta": {metric: {mean, std, n}}, "num_images": {metric: int}}}}``.
    """
    metrics: list[str] = []
    for runs in scores.values():
        for run in runs.values():
            metrics += [m for m in run if m not in metrics]
    ref = scores.get(reference)
    out = {"metrics": metrics, "reference": reference if ref else None, "variants": {}}
    for variant, runs in scores.items():
        row = {"top1": {}, "delta": {}, "num_images": {}}
        for m in metrics:
            row["top1"][m] = _mean_std([r[m]["top1"] for r in runs.values() if m in r])
            row["num_images"][m] = max((r[m]["num_images"] for r in runs.values() if m in r), default=0)
            if ref:
                row["delta"][m] = _mean_std([runs[s][m]["top1"] - ref[s][m]["top1"] for s in sorted(runs)
                                             if s in ref and m in runs[s] and m in ref[s]])
        out["variants"][variant] = row
    return out


def _pct(stat: dict, signed: bool = False) -> str:
    if stat["n"] == 0:
        return "n/a"
    mean = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return mean if stat["n"] < 2 else f"{mean} ± {100 * stat['std']:.1f}"


def format_table(summary: dict) -> str:
    """The markdown table of :func:`summarize`: top-1 (%) per metric, then Δ to the reference per metric."""
    metrics, ref = summary["metrics"], summary["reference"]
    first = next(iter(summary["variants"].values()), None)
    sizes = first["num_images"] if first else {}

    def label(m: str) -> str:
        return f"{'whole split' if m == WHOLE else m} ({sizes.get(m, 0)} img)"

    head = ["variant", "seeds"] + [f"top-1 % {label(m)}" for m in metrics]
    if ref:
        head += [f"Δ vs {ref} {'whole split' if m == WHOLE else m}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for variant, row in summary["variants"].items():
        seeds = max((s["n"] for s in row["top1"].values()), default=0)
        cells = [variant, str(seeds)] + [_pct(row["top1"][m]) for m in metrics]
        if ref:
            cells += ["—" if variant == ref else _pct(row["delta"][m], signed=True) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------------------


def run_ablation(config: str | Path | None, variants: Sequence[str], *, seeds: int = 3, out: str | Path,
                 jobs: int = 1, opts: Sequence[str] = (), scene_groups: dict[str, Sequence[str]] | None = None,
                 threads: int | None = None) -> dict:
    """Train and evaluate every (variant, seed) run, then write ``<out>/ablation.md`` and ``<out>/ablation.json``.

    Args:
        config: the YAML every variant starts from (its data, model sizes, schedule).
        variants: keys of :data:`VARIANTS`, in table order.
        seeds: runs per variant.
        out: the parent folder of the run folders.
        jobs: runs trained at once, each in its own process (1: one after another, in this process).
        opts: ``key=value`` overrides applied before each variant's own.
        scene_groups: ``{name: [scene, ...]}`` subsets of images by their true scene (read off each run's confusion
            matrix), e.g. ``{"relation_pair": ["dining_room", "living_room"]}``.
        threads: torch threads per run (default: the CPU count divided by ``jobs``).

    Returns:
        ``{"table": str, "summary": ..., "runs": {variant: {seed: {"dir", "scores"}}}, "failed": [...]}``; a run that
        fails is logged, listed in ``failed`` and left out of the table, and the others go on.
    """
    runs = plan_runs(config, variants, seeds, out, opts)
    jobs = max(1, int(jobs))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    results: dict[str, dict[int, dict]] = {v: {} for v in variants}
    failed: list[str] = []

    def record(run: AblationRun, metrics: dict) -> None:
        results[run.variant][run.seed] = run_scores(metrics, scene_groups)
        log.info("%s seed %d: top-1 %.1f%% (%s)", run.variant, run.seed, 100 * metrics["top1"], run.run_dir)

    if jobs == 1:
        for run in runs:
            try:
                record(run, train_and_evaluate(config, opts, run, threads))
            except Exception as e:  # one bad run must not lose the others
                log.error("%s seed %d failed: %s", run.variant, run.seed, e)
                failed.append(f"{run.variant}/seed{run.seed}: {e}")
    else:  # spawn: the parent may hold torch threads, which do not survive fork reliably
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as ex:
            futures = {ex.submit(_worker, config, list(opts), run, threads): run for run in runs}
            for future in as_completed(futures):
                run = futures[future]
                try:
                    record(*future.result())
                except Exception as e:
                    log.error("%s seed %d failed (its log: %s): %s", run.variant, run.seed,
                              run.run_dir / "ablate.log", e)
                    failed.append(f"{run.variant}/seed{run.seed}: {e}")

    ordered = {v: dict(sorted(results[v].items())) for v in variants if results[v]}
    summary = summarize(ordered)
    table = format_table(summary)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.md", table + "\n")
    record_json = {"config": str(config) if config else None, "opts": list(opts), "seeds": seeds,
                   "variants": {v: list(VARIANTS[v]) for v in variants}, "scene_groups": scene_groups or {},
                   "runs": {v: {str(s): {"dir": str(Path(out) / v / f"seed{s}"), "scores": sc}
                                for s, sc in r.items()} for v, r in ordered.items()},
                   "summary": summary, "failed": failed}
    atomic_write_text(out / "ablation.json", json.dumps(record_json, indent=1, allow_nan=True))
    return {"table": table, "summary": summary, "runs": record_json["runs"], "failed": failed}
