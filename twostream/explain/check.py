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

__all__ = ["explain_example", "format_check_table", "parse_variant", "run_check"]


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
            "hit rate (counterfactual)", "random weights (score)", "random weights (occlusion)",
            "random weights (counterfactual)", "chance", "deletion k=1: top vs random (Δp)", "PyG fid+ / fid- (k=1)"]
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
            _pct(rel.get("hit_rate_counterfactual")), _pct(rel.get("random_weights_hit_rate")),
            _pct(rel.get("random_weights_hit_rate_occlusion")), _pct(rel.get("random_weights_hit_rate_counterfactual")),
            _pct(rel.get("chance")), deletion, fid]) + " |")
    return "\n".join(lines)


def explain_example(run: str | Path, out_path: str | Path, *, scene: str | None = None, stem: str | None = None,
                    split: str | None = None, width: int = 1200, colors: int | None = 256,
                    method: str = "integrated_gradients") -> Path:
    """A panel (:func:`twostream.viz.save_panel`) explaining one validation image of a run's dataset with the
    graph of its annotation: the first relation-only image of ``scene`` (or the image ``stem``), by ``method`` (the
    attribution method the check scored). For the docs."""
    from torchvision import tv_tensors

    from twostream.config import config_from_dict
    from twostream.data.classes import ClassTable
    from twostream.data.io import load_image, load_label, read_scene_categories
    from twostream.data.transforms import apply_with_box, build_transforms
    from twostream.engine.checkpoint import inference_config, load_model_state, load_trained
    from twostream.explain.cam import resize_cam
    from twostream.explain.evaluation import relation_only_names
    from twostream.explain.explainer import SceneExplainer
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.models.two_stream import build_model
    from twostream.viz import GraphView, save_panel

    ckpt = load_trained(run)
    path = ckpt["path"]
    cfg = inference_config(config_from_dict(ckpt["config"], source=str(path)))
    table = ClassTable.from_dict(ckpt["class_table"])
    scenes = list(ckpt["vocabulary"])
    model = build_model(cfg, num_scenes=len(scenes), class_table=table)
    load_model_state(model, ckpt["model"], path)
    model.eval()
    root, split = Path(cfg.data.root), split or cfg.data.val_split
    if stem is None:
        relation, _ = relation_only_names(root)
        labels = read_scene_categories(root / "sceneCategories.txt")
        stems = sorted(s for s in relation if (root / "images" / split / f"{s}.jpg").is_file()
                       and (scene is None or labels.get(s) == scene))
        if not stems:
            raise ValueError(f"{root}: no relation-only {split} image{' of ' + scene if scene else ''} to explain")
        stem = stems[0]
    image = load_image(root / "images" / split / f"{stem}.jpg")
    label = load_label(root / "annotations" / split / f"{stem}.png")
    import torch

    transform, chw = build_transforms(cfg.data, train=False), torch.from_numpy(image).permute(2, 0, 1)
    x, mask = transform(tv_tensors.Image(chw), tv_tensors.Mask(torch.from_numpy(label)))
    _, box = apply_with_box(transform, chw)  # where the photo lies in the input (data.keep_ratio pads it)
    graph = SceneGraphBuilder.from_config(cfg.graph, table)(mask.as_subclass(torch.Tensor))
    explainer = SceneExplainer(model, scenes, class_table=table, stream_means=ckpt.get("stream_means"),
                               method=method)
    [e] = explainer.explain(x.as_subclass(torch.Tensor)[None], [graph] if model.graph_encoder is not None else None)
    if e.cam is not None:
        e.cam = resize_cam(e.cam, box, image.shape[:2])
    probs = explainer.last["scene_probs"][0]  # (S,): the forward the explanation ran, not another one
    top = [(scenes[i], float(probs[i])) for i in probs.argsort(descending=True).tolist()]
    view = GraphView("annotation graph", graph, label.astype("int64") if label.shape == image.shape[:2] else None,
                     scene_topk=top, explanation=e)
    return save_panel(out_path, image, view, title=f"{stem}: why {e.scene}?", width=width, colors=colors)
