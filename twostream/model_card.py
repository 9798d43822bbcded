"""What a shared model says about itself: provenance gathered from the run folder, ``config.json`` and the model card.

A saved model folder (``SceneClassifier.save_pretrained``, ``tools/export.py``) is the export format of
:func:`~twostream.engine.checkpoint.export_safetensors` (``model.safetensors``, ``config.yaml``, ``vocabulary.json``,
``class_table.json``) plus two files for the Hugging Face Hub:

- ``config.json``: what the Hub and a reader without YAML look at (the format, the scenes, the label set, the input
  size, a summary of the architecture) and the ``training`` record: the commands that trained the model, how its
  encoders were initialised, where its segmenter came from and the evaluation figures of these weights. It is a
  description: ``config.yaml`` is what rebuilds the model.
- ``README.md``: the model card, with the Hub's YAML front matter (``library_name``, ``tags``, ``datasets``,
  ``metrics``, ``model-index`` with the evaluation results) written by huggingface_hub's ``ModelCardData``, and in
  prose and tables the model, the scene vocabulary with its training counts, the training data, the evaluation and
  the command that produced it.

The provenance comes from the run folder of ``tools/train.py``: ``command.txt`` (:func:`record_command`),
``config.yaml`` (how it was initialised), ``vocabulary.json`` (training counts) and ``eval-<split>/metrics.json`` of
``tools/eval.py`` when it scored exactly these weights (same checkpoint file, same step).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostream.engine.checkpoint import COMMAND_FILE, read_commands, record_command  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import ModelCard

    from twostream.data.vocabulary import SceneVocabulary
    from twostream.inference import Predictor

log = logging.getLogger(__name__)

__all__ = ["HUB_FORMAT", "ModelInfo", "collect_info", "evaluation_summary", "hub_config", "model_card",
           "read_commands", "record_command"]

HUB_FORMAT = "twostream-model-v1"
ADE20K_HUB_DATASET = "zhoubolei/scene_parse_150"  # the Hub's copy of ADEChallengeData2016
REPO_URL = "https://github.com/twostream/twostream"
TAGS = ["twostream", "scene-classification", "scene-graph", "image-classification", "semantic-segmentation",
        "pytorch"]


# --------------------------------------------------------------------------------------------------------------------
# The training command
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# Evaluation figures
# --------------------------------------------------------------------------------------------------------------------


def evaluation_summary(metrics: dict) -> dict:
    """The headline numbers of an ``eval-<split>/metrics.json``: ``split``, ``num_images``, ``step``, ``graphs``,
    ``top1``, ``top<k>``, ``mean_class_accuracy`` and, where scored, ``miou``, ``pixel_accuracy``, ``node_f1``,
    ``edge_f1`` (fractions in [0, 1])."""
    out: dict[str, Any] = {}
    for key in ("split", "num_images", "step", "graphs", "top1", "mean_class_accuracy"):
        if metrics.get(key) is not None:
            out[key] = metrics[key]
    for key, value in metrics.items():
        if key.startswith("top") and key != "top1" and key[3:].isdigit() and isinstance(value, int | float):
            out[key] = value
    seg = metrics.get("segmentation") or {}
    for key in ("miou", "pixel_accuracy"):
        if isinstance(seg.get(key), int | float):
            out[key] = seg[key]
    micro = (metrics.get("graph_quality") or {}).get("micro") or {}
    for key in ("node_f1", "edge_f1"):
        if isinstance(micro.get(key), int | float):
            out[key] = micro[key]
    return out


def _checkpoint_step(path: Path) -> int | None:
    """The ``step`` a checkpoint records, read without loading its tensors (memory-mapped)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("step")) if isinstance(ckpt, dict) and ckpt.get("step") is not None else None
    except Exception:  # any unreadable file: the evaluations simply cannot be matched to it
        return None


def _evaluations_of(checkpoint: Path, step: int | None = None) -> dict[str, dict]:
    """``{split: summary}`` of the ``eval-*/metrics.json`` beside ``checkpoint`` that scored this file at its step
    (``step`` when the caller read it already)."""
    step = _checkpoint_step(checkpoint) if step is None else step
    found: dict[str, dict] = {}
    for path in sorted(checkpoint.parent.glob("eval-*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("%s: unreadable, left out of the model card", path)
            continue
        scored = Path(str(metrics.get("checkpoint", "")))
        if scored.name != checkpoint.name or (step is not None and metrics.get("step") != step):
            log.info("%s: scored %s at step %s, not these weights (%s, step %s); left out of the model card", path,
                     metrics.get("checkpoint"), metrics.get("step"), checkpoint, step)
            continue
        summary = evaluation_summary(metrics)
        found[str(summary.get("split", path.parent.name.removeprefix("eval-")))] = summary
    return found


# --------------------------------------------------------------------------------------------------------------------
# What the card says
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """Provenance of a model: everything its card and ``config.json`` say beyond the weights and ``config.yaml``.

    Attributes:
        vocabulary: the scene classes, with training counts where the run recorded them.
        commands: the training commands of the classifier, oldest first.
        evaluation: ``{split: evaluation_summary(...)}`` of these weights.
        init: how the encoders started: ``{"model.image_encoder.pretrained": true, ...}`` (the saved
            ``config.yaml`` holds ``false`` there: the weights already contain them).
        segmenter: where the segmenter came from: ``{"checkpoint", "commands", "evaluation"}`` (may be empty).
        source: what the model was loaded from (a run folder, a checkpoint, a folder or a Hub id).
        step: the optimizer step of the weights, when known.
    """

    vocabulary: SceneVocabulary
    commands: list[str] = field(default_factory=list)
    evaluation: dict[str, dict] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    segmenter: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    step: int | None = None

    def training_record(self) -> dict:
        """The ``training`` block of ``config.json``."""
        return {"commands": self.commands, "evaluation": self.evaluation, "init": self.init,
                "segmenter": self.segmenter, "step": self.step,
                "train_counts": dict(self.vocabulary.train_counts)}


_INIT_KEYS = ("model.segmenter.pretrained", "model.segmenter.pretrained_path", "model.segmenter.checkpoint",
              "model.image_encoder.pretrained", "model.image_encoder.pretrained_path")


def _init_of(cfg) -> dict[str, Any]:
    out = {}
    for key in _INIT_KEYS:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        out[key] = obj
    return out


def collect_info(source: str | Path, predictor: Predictor, *, hub_id: str | None = None) -> ModelInfo:
    """Gather a model's provenance from where it was loaded: a run folder or checkpoint (its run folder's files),
    or a saved folder (its ``config.json`` and ``vocabulary.json``)."""
    from twostream.config import ConfigError, load_config
    from twostream.data.vocabulary import SceneVocabulary

    path = Path(source)
    if path.suffix == ".safetensors":
        path = path.parent
    folder = path if path.is_dir() else path.parent
    vocabulary = SceneVocabulary.from_names(predictor.scenes)
    try:
        saved = SceneVocabulary.load(folder / "vocabulary.json")
        if saved.names == list(predictor.scenes):
            vocabulary = saved
    except ValueError:
        pass
    info = ModelInfo(vocabulary=vocabulary, source=hub_id or str(source))
    if (folder / "model.safetensors").is_file():  # a saved folder: its own record
        try:
            record = json.loads((folder / "config.json").read_text()).get("training") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            record = {}
        info.commands = list(record.get("commands") or [])
        info.evaluation = dict(record.get("evaluation") or {})
        info.init = dict(record.get("init") or {})
        info.segmenter = dict(record.get("segmenter") or {})
        info.step = record.get("step")
        if not vocabulary.train_counts and record.get("train_counts"):
            info.vocabulary = SceneVocabulary(vocabulary.scenes, other=vocabulary.other,
                                              train_counts=record["train_counts"])
        return info

    from twostream.engine.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(path)
    info.step = _checkpoint_step(checkpoint)
    info.commands = read_commands(folder)
    info.evaluation = _evaluations_of(checkpoint, info.step)
    train_cfg = predictor.cfg
    if (folder / "config.yaml").is_file():
        try:
            train_cfg = load_config(folder / "config.yaml")
        except ConfigError as e:
            log.warning("%s: unreadable (%s); the card describes the inference config", folder / "config.yaml", e)
    info.init = _init_of(train_cfg)
    seg_ckpt = train_cfg.model.segmenter.checkpoint
    if seg_ckpt:
        seg_path = Path(seg_ckpt)
        info.segmenter = {"checkpoint": seg_ckpt, "commands": read_commands(seg_path.parent)}
        if seg_path.is_file():
            info.segmenter["evaluation"] = _evaluations_of(seg_path)
    return info


# --------------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------------


def _architecture(cfg) -> dict[str, Any]:
    m = cfg.model
    arch: dict[str, Any] = {}
    if m.gnn.enabled or m.shared_backbone:
        seg = m.segmenter
        what = {"upsnet": seg.backbone, "hf": seg.hf_model, "detectron2": seg.d2_config}.get(seg.kind, "")
        arch["segmenter"] = f"{seg.kind}:{what}" if what else seg.kind
    if m.image_encoder.enabled:
        arch["image_encoder"] = "shared backbone" if m.shared_backbone else m.image_encoder.name
    if m.gnn.enabled:
        arch["graph_encoder"] = (f"{m.gnn.type}, {m.gnn.num_layers} layers of {m.gnn.hidden_dim}, "
                                 f"{m.gnn.readout} readout")
    arch["fusion"] = m.fusion.type
    return arch


def hub_config(predictor: Predictor, info: ModelInfo) -> dict:
    """The content of ``config.json`` (module docstring)."""
    import twostream

    cfg = predictor.cfg
    table = predictor.class_table
    return {
        "format": HUB_FORMAT,
        "library_name": "twostream",
        "twostream_version": twostream.__version__,
        "stage": "classifier",
        "scenes": list(predictor.scenes),
        "num_scenes": len(predictor.scenes),
        "class_table": table.name if table is not None else None,
        "num_labels": len(table) if table is not None else None,
        "image_size": list(cfg.data.image_size),
        "keep_ratio": cfg.data.keep_ratio,
        "architecture": _architecture(cfg),
        "training": info.training_record(),
    }


# --------------------------------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, int | float) else "–"


def _f3(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "–"


def _dataset_ids(root: str) -> tuple[str, str]:
    """``(Hub dataset id, readable name)`` of a training data root."""
    name = Path(root).name or root
    if name == "ADEChallengeData2016":
        return ADE20K_HUB_DATASET, "ADE20K (ADEChallengeData2016)"
    return name, f"{name} ({root})"


def _title(cfg, num_scenes: int) -> str:
    arch = _architecture(cfg)
    streams = [s for s in (arch.get("image_encoder"), cfg.model.gnn.type.upper() if cfg.model.gnn.enabled else None)
               if s]
    over = f" over {arch['segmenter']} scene graphs" if cfg.model.gnn.enabled else ""
    return f"twostream scene classifier: {' + '.join(streams)}{over} ({num_scenes} scenes)"


def _eval_results(info: ModelInfo, dataset_id: str, dataset_name: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for split, ev in info.evaluation.items():
        common = {"dataset_type": dataset_id, "dataset_name": dataset_name, "dataset_split": split}
        for key, name in (("top1", "top-1 accuracy"), ("mean_class_accuracy", "mean class accuracy")):
            if isinstance(ev.get(key), int | float):
                results.append(EvalResult(task_type="image-classification", task_name="scene classification",
                                          metric_type="accuracy", metric_name=name, metric_value=round(ev[key], 4),
                                          **common))
        if isinstance(ev.get("miou"), int | float):
            results.append(EvalResult(task_type="image-segmentation", task_name="semantic segmentation",
                                      metric_type="mean_iou", metric_name="mIoU", metric_value=round(ev["miou"], 4),
                                      **common))
        for key, name in (("node_f1", "scene-graph node F1"), ("edge_f1", "scene-graph edge F1")):
            if isinstance(ev.get(key), int | float):
                results.append(EvalResult(task_type="image-segmentation", task_name="scene graph",
                                          metric_type="f1", metric_name=name, metric_value=round(ev[key], 4),
                                          **common))
    return results


def _config_table(predictor: Predictor, info: ModelInfo) -> list[str]:
    cfg = predictor.cfg
    m, g, d = cfg.model, cfg.graph, cfg.data
    counts = predictor.model.parameter_counts() if predictor.model is not None else {}
    params = {k: v[0] for k, v in counts.items()}
    rows = [("input", f"{d.image_size[0]}x{d.image_size[1]} RGB in [0, 1]" + (", fit and padded" if d.keep_ratio
                                                                                else ", resized") +
             (f", normalised with mean {list(d.mean)} / std {list(d.std)}" if d.normalize else ""))]
    table = predictor.class_table
    if m.gnn.enabled:
        seg = m.segmenter
        detail = _architecture(cfg)["segmenter"]
        if seg.kind == "upsnet":
            detail = (f"UPSNet, {seg.backbone} backbone, FPN {seg.fpn_channels}, semantic head {seg.head_channels}"
                      f"{', deformable' if seg.deformable else ''}")
        label_set = f"; labels: {table.name} ({len(table)} classes)" if table is not None else ""
        rows.append(("segmenter", f"{detail}{label_set}; {params.get('segmenter', 0):,} parameters"))
        rows.append(("scene graph", f"one node per {'present class' if g.granularity == 'class' else 'region'}, "
                                    f"edges between nodes that touch ({g.connectivity}-connectivity, tolerance "
                                    f"{g.tolerance} px); " + {
                                        "pred": "trained on the segmenter's cached predictions, built from its map "
                                                "at inference",
                                        "gt": "trained on graphs of the annotations",
                                        "online": "built inside the model from the segmenter's map"}[g.source]))
        rows.append(("graph encoder", f"{m.gnn.type.upper()}, {m.gnn.num_layers} layers of {m.gnn.hidden_dim}"
                                      f"{f', {m.gnn.heads} heads' if m.gnn.type.startswith('gat') else ''}, "
                                      f"{m.gnn.norm} norm, {m.gnn.readout} readout; "
                                      f"{params.get('graph_encoder', 0):,} parameters"))
    if m.image_encoder.enabled:
        pre = info.init.get("model.image_encoder.pretrained")
        init = " (ImageNet-initialised)" if pre else " (trained from scratch)" if pre is False else ""
        rows.append(("image encoder", f"{'the shared backbone' if m.shared_backbone else m.image_encoder.name}"
                                      f"{init}; {params.get('image_encoder', 0):,} parameters"))
    rows.append(("fusion", f"{m.fusion.type}" + (f", width {m.fusion.dim}" if m.fusion.type != "none" else "") +
                 f"; {params.get('fusion', 0) + params.get('head', 0):,} parameters with the head"))
    rows.append(("parameters", f"{sum(params.values()):,} in all"))
    return ["| part | setting |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def _vocabulary_table(info: ModelInfo) -> list[str]:
    vocab, counts = info.vocabulary, info.vocabulary.train_counts
    lines = ["| class | scene | training images |", "|---:|---|---:|"]
    for i, name in enumerate(vocab.names):
        n = counts.get(name)
        if name == "other" and vocab.other:
            n = sum(c for s, c in counts.items() if s not in vocab.scenes) or None
        lines.append(f"| {i} | {name} | {f'{n:,}' if n is not None else '–'} |")
    if counts:
        used = sum(counts.get(s, 0) for s in vocab.scenes)
        dropped = sum(counts.values()) - used
        lines.append(f"| | **total** | **{used + (dropped if vocab.other else 0):,}** |")
        if dropped and not vocab.other:
            lines.append(f"\n{dropped:,} training images of other scenes were left out (`unlisted: drop`).")
    return lines


def _evaluation_lines(info: ModelInfo) -> list[str]:
    if not info.evaluation:
        return ["No evaluation of these weights was recorded (run `tools/eval.py --checkpoint <run>` before "
                "exporting to have its figures here)."]
    ks = sorted({k for ev in info.evaluation.values() for k in ev if k.startswith("top") and k != "top1"})
    topk = ks[0] if ks else None
    head = ["split", "images", "top-1"] + ([f"top-{topk[3:]}"] if topk else []) + [
        "mean class acc.", "mIoU", "node F1", "edge F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, ev in info.evaluation.items():
        cells = [split, f"{ev.get('num_images', '–')}", _pct(ev.get("top1"))] + ([_pct(ev.get(topk))] if topk else [])
        cells += [_pct(ev.get("mean_class_accuracy")), _pct(ev.get("miou")), _f3(ev.get("node_f1")),
                  _f3(ev.get("edge_f1"))]
        lines.append("| " + " | ".join(cells) + " |")
    graphs = {ev.get("graphs") for ev in info.evaluation.values() if ev.get("graphs")}
    if graphs:
        lines.append(f"\nScene graphs during evaluation: {', '.join(sorted(graphs))} (`online`: from the model's own "
                     "segmenter, as at inference). mIoU and graph F1 compare the segmenter's maps and graphs with "
                     "those of the annotations.")
    return lines


def model_card(predictor: Predictor, info: ModelInfo, *, repo_id: str | Path | None = None) -> ModelCard:
    """The README.md of a saved model (module docstring); ``repo_id`` (a Hub id or the folder) is used in the usage
    example."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = predictor.cfg
    d = cfg.data
    dataset_id, dataset_name = _dataset_ids(d.root)
    title = _title(cfg, len(predictor.scenes))
    data = ModelCardData(library_name="twostream", license="apache-2.0", pipeline_tag="image-classification",
                         tags=TAGS, datasets=[dataset_id], metrics=["accuracy", "mean_iou", "f1"],
                         model_name=title, eval_results=_eval_results(info, dataset_id, dataset_name) or None)
    name = str(repo_id or info.source or "path/to/this/folder")
    synthetic = "synthetic" in dataset_id.lower()
    body = [f"# {title}", ""]
    body.append(
        f"Predicts *what kind of place* an image shows — one of {len(predictor.scenes)} scene classes — and *why*: "
        "its segmenter labels every pixel, the labelled regions become a scene graph (nodes: the objects present; "
        "edges: objects that touch), a graph network encodes the graph, and its evidence is fused with an image "
        "encoder's. Made with [twostream](" + REPO_URL + ").")
    if synthetic:
        body += ["", "> Trained on twostream's synthetic ADE20K-format scenes (the quick start): it shows the "
                     "pipeline working end to end; its guesses on real photographs are not meaningful."]
    body += ["", "## Use", "", "```python", "from twostream import SceneClassifier", "",
             f'model = SceneClassifier.from_pretrained("{name}")', 'result = model.predict("photo.jpg", topk=3)',
             "print(result.scenes)             # [(scene, probability), ...], most probable first",
             "print(result.graph.num_nodes)    # the scene graph the classifier saw", "```", "",
             "From the command line (installing twostream gives the `twostream` command; in a checkout, "
             "`python tools/infer.py` is the same): `twostream infer photo.jpg --checkpoint " + name + "`; in the "
             "browser: `twostream demo --checkpoint " + name + "`.", "", "## Model", ""]
    body += _config_table(predictor, info)
    body += ["", "## Scene vocabulary", "", f"Mode `{d.scenes.mode}`" + (
        f", images of unlisted scenes: `{d.scenes.unlisted}`" if d.scenes.mode != "all" else "") +
        ". Training images per class:", ""]
    body += _vocabulary_table(info)
    aug = d.augment
    body += ["", "## Training data", "",
             f"{dataset_name}, splits `{d.train_split}` (training) and `{d.val_split}` (validation)"
             + (f", the first {d.max_items} items of each" if d.max_items else "") + ". Training augmentation: random "
             f"resized crops (area {aug.scale[0]}–{aug.scale[1]}), horizontal flips (p = {aug.hflip}), colour "
             f"jitter {aug.color_jitter}.", "", "## Training", ""]
    t = cfg.train
    body.append(f"{t.epochs} epochs, batch {t.batch_size}"
                + (f" x {t.accumulate} accumulated" if t.accumulate > 1 else "") + f", AdamW lr {t.lr:g} (weight "
                f"decay {t.weight_decay:g}), {t.schedule} schedule with {t.warmup_steps} warmup steps, label "
                f"smoothing {t.label_smoothing:g}, seed {t.seed}" + (f"; weights of step {info.step}"
                                                                     if info.step is not None else "") + ".")
    if info.commands:
        body += ["", "The command that trained it:", "", "```bash", *info.commands, "```"]
    else:
        body += ["", "The training command was not recorded (runs of `tools/train.py` keep it in "
                     "`command.txt`)."]
    seg = info.segmenter
    if seg.get("checkpoint"):
        body += ["", f"The segmenter's weights came from `{seg['checkpoint']}`"
                 + (", trained with:" if seg.get("commands") else ".")]
        if seg.get("commands"):
            body += ["", "```bash", *seg["commands"], "```"]
        for split, ev in (seg.get("evaluation") or {}).items():
            body += ["", f"Segmenter on `{split}`: mIoU {_pct(ev.get('miou'))}, pixel accuracy "
                         f"{_pct(ev.get('pixel_accuracy'))}, graph node F1 {_f3(ev.get('node_f1'))}, edge F1 "
                         f"{_f3(ev.get('edge_f1'))}."]
    body += ["", "## Evaluation", ""]
    body += _evaluation_lines(info)
    body += ["", "## Files", "",
             "| file | what |", "|---|---|",
             "| `model.safetensors` | the weights (no pickle) |",
             "| `config.yaml` | the twostream config that rebuilds the model (encoders need no download: the "
             "weights hold them) |",
             "| `vocabulary.json` | scene class order and training counts |",
             "| `class_table.json` | the segmenter's label set: names and colours |",
             "| `stream_means.safetensors` | the training set's mean stream embeddings, the baseline of explanations "
             "(absent when training recorded none) |",
             "| `config.json` | a summary for the Hub and the training record (commands, evaluation) |", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
