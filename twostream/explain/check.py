"""The "Why this scene?" check: train variants on a relation set, explain their validation images, tabulate.

    rows = run_check("configs/explain_relation.yaml", {"graph_only": [], "two_stream": [...]}, "runs/why")
    print(format_check_table(rows))

Each variant is the config plus ``key=value`` overrides, trained through the normal engine into ``<out>/<name>``
(a finished run is not trained again: the trainer returns at once) and evaluated by
:func:`~twostream.engine.evaluate.evaluate_checkpoint` with ``explain=True`` on the validation split, with the
graphs the config trains on. The table's columns come from ``metrics.json["explanation"]``; any config works (the
coordinator reruns it with ``model.gnn.node_input=class`` once that setting exists).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["format_check_table", "parse_variant", "run_check"]


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``"name=key=value key=value"`` (or ``"name="``) -> ``(name, [overrides])``."""
    if "=" not in spec:
        raise ValueError(f"--variant '{spec}': expected NAME=OVERRIDES, e.g. two_stream='model.fusion.type=concat'")
    name, rest = spec.split("=", 1)
    if not name.strip() or "/" in name:
        raise ValueError(f"--variant '{spec}': the name must be a plain folder name")
    return name.strip(), rest.split()


def run_check(config: str | Path, variants: Mapping[str, Sequence[str]], out_dir: str | Path, *,
              common: Sequence[str] = (), method: str = "integrated_gradients", device: str = "cpu") -> list[dict]:
    """Train (unless finished) and evaluate with explanations each variant; returns one row per variant."""
    from twostream.config import load_config
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.trainer import train

    rows = []
    for name, overrides in variants.items():
        run = Path(out_dir) / name
        cfg = load_config(config, [*common, *overrides, f"output.dir={run}"])
        log.info("variant %s: training into %s (skipped if finished)", name, run)
        train(cfg)
        graphs = "gt" if cfg.graph.source == "gt" else "auto"
        metrics = evaluate_checkpoint(run, graphs=graphs, out_dir=run / "eval-explain", device=device,
                                      explain=True, explain_method=method)
        rows.append({"variant": name, "overrides": list(overrides), "top1": metrics["top1"],
                     "num_images": metrics["num_images"], **metrics.get("explanation", {})})
        (run / "eval-explain" / "row.json").write_text(json.dumps(rows[-1], indent=1) + "\n")
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def format_check_table(rows: Sequence[dict]) -> str:
    """A markdown table: accuracy, hit rates (trained / random weights / chance), deletion and PyG fidelity."""
    head = ["variant", "val top-1", "relation-only correct", "hit rate (score)", "hit rate (occlusion)",
            "random weights (score)", "random weights (occlusion)", "chance", "deletion k=1: top vs random (Δp)",
            "PyG fid+ / fid- (k=1)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rel = r.get("relation_only") or {}
        d, f = r.get("deletion") or {}, r.get("fidelity") or {}
        deletion = (f"{d['top'][0]:+.3f} vs {d['random'][0]:+.3f}" if d and d["top"][0] is not None
                    and d["random"][0] is not None else "—")
        fid = f"{f['fid_plus'][0]:.2f} / {f['fid_minus'][0]:.2f}" if f else "—"
        correct = f"{rel['num_correct']}/{rel['num_images']}" if rel else "—"
        lines.append("| " + " | ".join([
            r["variant"], _pct(r.get("top1")), correct, _pct(rel.get("hit_rate")), _pct(rel.get("hit_rate_occlusion")),
            _pct(rel.get("random_weights_hit_rate")), _pct(rel.get("random_weights_hit_rate_occlusion")),
            _pct(rel.get("chance")), deletion, fid]) + " |")
    return "\n".join(lines)
