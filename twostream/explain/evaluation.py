"""Explanations of a whole split, checked against causes we know: :class:`ExplanationEvaluator`.

It follows the evaluator protocol of the engine (detectron2's ``DatasetEvaluator``): ``reset()``,
``process(inputs, outputs)`` with the collated batch (``image``, ``scene``, ``name``, ``graph``...) and the model's
output dict (``logits``, ``graphs`` for online graphs), and ``evaluate()``, which gathers across ranks once and
returns ``metrics["explanation"]``:

- ``relation_only``: on the synthetic relation-only images (``synthetic.json`` lists them; dining_room: the chair
  touches the table, living_room: the sofa does; same objects, same areas), the **hit rate**: the share of correctly
  classified relation-only images whose top-ranked edge is a deciding one (by gradient score, and by occlusion).
  The deciding contacts are those the scene's images have and the other scene's have not (``synthetic.json``'s
  ``relation_contacts``: one, chair–table or sofa–table, in the ``boxes`` and ``irregular`` layouts; two in the
  degree-matched ones, which add sofa–shelf or chair–shelf). Also the same for the **same architecture with random
  weights** (the randomisation test of Adebayo et al. 2018, "Sanity Checks for Saliency Maps": every parameter
  re-drawn, the same images and graphs, the true scene explained; the mean over ``random_models`` copies, and each
  copy's in ``random_weights_per_copy``), which must be far lower; ``chance``, the mean
  of ``(deciding contacts) / (undirected edges)`` over those images; and ``top_edges``, which contact ranks first
  how often, per scene;
- ``relation_only`` also gives a **counterfactual hit rate**. A model can decide a dining room by the *absence* of
  the sofa–table contact; no present edge carries that, and both the scores and the occlusion then point at some
  other contact. So beside deleting each present contact, each deciding contact of the *other* scene is inserted
  (:func:`~twostream.explain.occlusion.insertion_probs`, with the boundary length of the contact it would replace),
  and the change that costs the explained probability most, deletion or insertion, is the model's deciding
  contact: a hit when it is a deciding contact, present or absent. ``chance_counterfactual`` is
  ``(deciding + inserted) / (edges + inserted)``;
- ``deletion``: for ``k`` = 1, 2, 3 the mean drop in the explained scene's probability when the ``k`` top-scored
  nodes are deleted (exactly, as in occlusion) against deleting ``k`` random nodes (mean over 8 draws);
- ``fidelity``: PyG's ``fidelity`` (GraphFramEx, Amara et al. 2022) of hard top-``k`` node masks: ``fid_plus``, the
  share of images whose explained-scene decision changes when the top-``k`` nodes' inputs are masked out, and
  ``fid_minus``, when only they are kept (PyG masks node inputs to zero, it does not delete nodes).

Every image's explanation is written to ``explanations.jsonl`` (one line per image, sorted by name:
``{"name", "scene_true", "scene_pred", "explanation"}``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from twostream.explain.explainer import SceneExplainer, _explaining
from twostream.explain.explanation import SceneExplanation

log = logging.getLogger(__name__)

__all__ = ["DELETION_KS", "ExplanationEvaluator", "build_explanation_evaluator", "format_explanation_metrics",
           "randomized_copy", "relation_contacts", "relation_only_names"]

DELETION_KS = (1, 2, 3)
RANDOM_DRAWS = 8
# Randomised copies of the model in the randomisation test. On a relation set whose graphs are all alike (class-only
# nodes: nearly every graph of a scene is the same graph), one random model ranks the same edge first in almost every
# image of a scene, so one copy gives about 0%, 50% or 100%; the mean over several copies estimates the rate.
RANDOM_MODELS = 5
EVALUATED_PARTS = ("graph", "occlusion", "streams")  # what the evaluator explains (explainer.PARTS but the CAM)
DECIDING_PARTNER = "table"  # the relation-only scenes differ in which object touches the table


def relation_only_names(root: str | Path) -> tuple[set[str], dict[str, str]]:
    """``(relation-only image stems, {scene: the object that touches the table})`` of a synthetic dataset's
    ``synthetic.json``; empty for any other dataset."""
    meta = Path(root) / "synthetic.json"
    if not meta.is_file():
        return set(), {}
    d = json.loads(meta.read_text(encoding="utf-8"))
    return set(d.get("relation_only", [])), dict(d.get("relation_scenes", {}))


def relation_contacts(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """``{scene: [(class, class), ...]}``: the contacts a synthetic dataset's relation-only images of each scene have
    and the other scene's have not (``synthetic.json``'s ``relation_contacts``; sets written before it was recorded
    have one, the toucher and the table); empty for any other dataset."""
    meta = Path(root) / "synthetic.json"
    if not meta.is_file():
        return {}
    d = json.loads(meta.read_text(encoding="utf-8"))
    if "relation_contacts" in d:
        return {scene: [tuple(pair) for pair in pairs] for scene, pairs in d["relation_contacts"].items()}
    return {scene: [(toucher, DECIDING_PARTNER)] for scene, toucher in d.get("relation_scenes", {}).items()}


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every parameter of the classifier re-drawn (``reset_parameters`` of each module,
    seeded); the segmenter is shared, not copied: the randomised model explains the same graphs."""
    memo = {id(model.segmenter): model.segmenter} if model.segmenter is not None else {}
    clone = copy.deepcopy(model, memo)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in ("graph_encoder", "image_encoder", "fusion"):
            part = getattr(clone, name)
            if part is not None:
                for module in part.modules():
                    if module is not part and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                if hasattr(part, "reset_parameters"):
                    part.reset_parameters()
        for module in (clone.head_norm, clone.head):
            module.reset_parameters()
    return clone.eval()


def build_explanation_evaluator(model: nn.Module, scenes: Sequence[str], *, data_root: str | Path, class_table,
                                stream_means: dict | None, out_dir: str | Path | None,
                                method: str = "integrated_gradients", seed: int = 0) -> ExplanationEvaluator:
    """The evaluator ``tools/eval.py --explain`` uses: relation-only images from ``<data_root>/synthetic.json`` (when
    the dataset is synthetic), ``explanations.jsonl`` in ``out_dir``."""
    relation, relation_scenes = relation_only_names(data_root)
    return ExplanationEvaluator(model, scenes, class_table=class_table, stream_means=stream_means, method=method,
                                relation_only=relation, relation_scenes=relation_scenes,
                                relation_contacts=relation_contacts(data_root), seed=seed,
                                out_path=Path(out_dir) / "explanations.jsonl" if out_dir is not None else None)


def _gather(items: list) -> list:
    """All ranks' ``items``, concatenated (this rank's alone outside ``torch.distributed``)."""
    from twostream.engine.distributed import all_gather_object

    return [x for part in all_gather_object(items) for x in part]


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


class ExplanationEvaluator:
    """Explain every image the evaluation loop sees and score the explanations (module docstring).

    Args:
        model: the trained classifier (in eval mode).
        scenes: scene names in class order.
        class_table: the label set of the graphs' nodes.
        stream_means: the checkpoint's ``"stream_means"`` (``None``: zero baseline).
        method, steps: attribution method and integration steps (:class:`SceneExplainer`).
        relation_only: stems of the relation-only images (:func:`relation_only_names`).
        relation_scenes: ``{scene: object touching the table}`` for those images.
        relation_contacts: ``{scene: [(class, class), ...]}`` the deciding contacts of each scene's images
            (:func:`relation_contacts`; default: each toucher with the table, from ``relation_scenes``).
        random_model: the randomised copy for the randomisation test (default: ``random_models`` copies by
            :func:`randomized_copy`, seeds ``seed, seed + 1, ...``, built when a relation-only image is first met);
            ``False`` skips the test.
        random_models: how many randomised copies (their mean hit rate is reported, and each copy's).
        out_path: where ``explanations.jsonl`` goes (``None``: not written).
        ks, draws, seed: deletion sizes, random draws per size, seed of the draws and the randomised weights.
    """

    def __init__(self, model: nn.Module, scenes: Sequence[str], *, class_table, stream_means: dict | None = None,
                 method: str = "integrated_gradients", steps: int = 32, relation_only: Iterable[str] = (),
                 relation_scenes: dict[str, str] | None = None,
                 relation_contacts: dict[str, Sequence[Sequence[str]]] | None = None,
                 random_model: nn.Module | bool | None = None, random_models: int = RANDOM_MODELS,
                 out_path: str | Path | None = None, ks: Sequence[int] = DELETION_KS, draws: int = RANDOM_DRAWS,
                 seed: int = 0) -> None:
        self.model, self.scenes, self.class_table = model, list(scenes), class_table
        # no Grad-CAM: nothing here scores it and explanations.jsonl leaves it out, and it costs a backward pass
        # through the image encoder per image (two thirds of an explanation's time)
        self.explainer = SceneExplainer(model, scenes, class_table=class_table, method=method, steps=steps,
                                        stream_means=stream_means, parts=EVALUATED_PARTS)
        self.relation_only = set(relation_only)
        self.relation_scenes = dict(relation_scenes or {})
        contacts = relation_contacts or {s: [(o, DECIDING_PARTNER)] for s, o in self.relation_scenes.items()}
        self.relation_contacts = {s: [tuple(p) for p in pairs] for s, pairs in contacts.items()}
        if random_models < 1:
            raise ValueError(f"explain: random_models must be at least 1, got {random_models}")
        self._random_model, self.random_models = random_model, random_models
        self._random_explainers: list[SceneExplainer] | None = None
        self.out_path = Path(out_path) if out_path is not None else None
        self.ks, self.draws, self.seed = tuple(ks), draws, seed
        self.reset()

    def reset(self) -> None:
        self._records: list[dict] = []  # what explanations.jsonl gets
        self._scores: list[dict] = []  # per-image numbers the metrics are computed from
        self._fidelity: list[dict] = []  # per-batch sums of PyG's fidelity
        self._generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------------------------------------- helpers

    def _randoms(self) -> list[SceneExplainer]:
        """The explainers of the randomised copies (none when the test is off)."""
        if self._random_model is False:
            return []
        if self._random_explainers is None:
            models = [self._random_model] if isinstance(self._random_model, nn.Module) else \
                [randomized_copy(self.model, self.seed + k) for k in range(self.random_models)]
            self._random_explainers = [SceneExplainer(m, self.scenes, class_table=self.class_table,
                                                      method=self.explainer.method, steps=self.explainer.steps,
                                                      parts=("graph", "occlusion")) for m in models]
        return self._random_explainers

    def _deciding(self, scene: str) -> list[frozenset[str]] | None:
        """The contacts (class-name pairs) that a relation-only image of ``scene`` has and the other scene's not."""
        pairs = self.relation_contacts.get(scene)
        return [frozenset(p) for p in pairs] if pairs else None

    def _contrast(self, scene: str) -> list[frozenset[str]]:
        """The deciding contacts of the other relation scenes: absent from a relation-only image of ``scene``."""
        mine = set(self._deciding(scene) or ())
        return list(dict.fromkeys(frozenset(p) for s, pairs in self.relation_contacts.items() if s != scene
                                  for p in pairs if frozenset(p) not in mine))

    @staticmethod
    def _top_edge(e: SceneExplanation, by: str) -> frozenset[str] | None:
        values = e.edge_scores if by == "score" else e.edge_occlusion
        if values is None or len(e.edges) == 0:
            return None
        a, b = e.edges[int(np.argmax(values))]
        return frozenset((e.node_names[a], e.node_names[b]))

    @classmethod
    def _hit(cls, e: SceneExplanation, deciding: list[frozenset[str]], by: str) -> bool:
        return cls._top_edge(e, by) in deciding  # no edge ranked: not a hit

    def _counterfactual(self, explainer: SceneExplainer, i: int, e: SceneExplanation,
                        deciding: list[frozenset[str]], contrast: list[frozenset[str]]) -> tuple[bool, int] | None:
        """Is the change that costs ``e``'s scene most, over deleting each present contact (its occlusion) and
        inserting each absent contrasting contact, a deciding one? ``(hit, contacts inserted)``; ``None`` without
        occlusion scores."""
        from twostream.explain.occlusion import insertion_probs

        if e.edge_occlusion is None or not len(e.edges):
            return None
        index = {name: k for k, name in enumerate(e.node_names)}  # class-level graphs: one node per class
        present = {frozenset((e.node_names[a], e.node_names[b])) for a, b in e.edges}
        data = explainer.last["batch"].get_example(i)
        src, dst = data.edge_index
        pairs, like = [], []
        for contact in contrast:
            if contact in present or len(contact) != 2 or not all(name in index for name in contact):
                continue
            a, b = sorted(index[name] for name in contact)
            pairs.append((a, b))
            # the boundary of a present deciding contact that shares a node with it (the contact it would replace)
            twin = [k for k, (c, d) in enumerate(e.edges) if frozenset((e.node_names[c], e.node_names[d])) in
                    deciding and {c, d} & {a, b}]
            if twin:
                c, d = e.edges[twin[0]]
                like.append(int(torch.nonzero((src == int(c)) & (dst == int(d)))[0, 0]))
            else:
                like.append(-1)
        drops = [float(v) for v in e.edge_occlusion]
        names = [frozenset((e.node_names[a], e.node_names[b])) for a, b in e.edges]
        if pairs:
            emb = explainer.last["embeddings"]
            image = emb.select(i)
            with torch.no_grad():
                p = insertion_probs(explainer.model, data, image, e.scene_index, torch.tensor(pairs),
                                    torch.tensor(like))
            drops += [e.prob - float(v) for v in p]
            names += [frozenset((e.node_names[a], e.node_names[b])) for a, b in pairs]
        top = names[int(np.argmax(drops))]
        return top in deciding or top in contrast, len(pairs)

    def _pyg_fidelity(self) -> dict | None:
        """PyG's fidelity of hard top-k node masks for the last explained batch: ``{k: (fid+, fid-, graphs)}``."""
        from torch_geometric.explain.metric import fidelity

        last = self.explainer.last
        att = last.get("attribution")
        if att is None or att.explanation is None or att.node_scores is None:
            return None
        batch, scores = last["batch"], att.node_scores
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(batch.batch[order], stable=True)]  # by graph, then score, highest first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - batch.ptr[batch.batch[order]]
        out = {}
        for k in self.ks:
            expl = copy.copy(att.explanation)
            expl.node_mask = (rank < k).float()[:, None].expand_as(expl.x).contiguous()
            if "edge_mask" in expl:
                del expl.edge_mask
            plus, minus = fidelity(att.explainer, expl)
            out[k] = (plus, minus, int(batch.num_graphs))
        return out

    # ------------------------------------------------------------------------------------------------ protocol

    def process(self, inputs: dict, outputs: dict) -> None:
        """Explain the batch's images for their predicted scenes (graphs: ``inputs["graph"]``, else the model's own
        ``outputs["graphs"]``) and keep what :meth:`evaluate` needs."""
        from twostream.explain.occlusion import deletion_curve

        device = next(self.model.parameters()).device
        images = inputs["image"].to(device)
        graphs = inputs.get("graph")
        if graphs is None and self.model.graph_encoder is not None:
            graphs = outputs.get("graphs")
        explanations = self.explainer.explain(images, graphs)
        last = self.explainer.last
        with _explaining(self.model):  # PyG's fidelity runs the model again: in eval mode, and put back as it was
            fid = self._pyg_fidelity()
        if fid is not None:
            self._fidelity.append(fid)
        names = list(inputs["name"])
        truth = inputs["scene"].tolist()
        relation_rows = []
        for i, (name, e) in enumerate(zip(names, explanations)):
            true_scene = self.scenes[int(truth[i])]
            self._records.append({"name": name, "scene_true": true_scene, "scene_pred": e.scene,
                                  "explanation": e.to_json()})
            score: dict = {"name": name, "correct": e.scene == true_scene, "scene": true_scene}
            if e.node_scores is not None and e.num_nodes:
                data = last["batch"].get_example(i)
                emb = last["embeddings"]
                image = emb.select(i)
                with torch.no_grad():
                    top, rand = deletion_curve(self.model, data, image, e.scene_index, e.prob,
                                               torch.from_numpy(e.node_scores), self.ks, draws=self.draws,
                                               generator=self._generator)
                score["deletion_top"], score["deletion_random"] = top, rand
            deciding = self._deciding(true_scene)
            if name in self.relation_only and deciding is not None:
                present = {frozenset((e.node_names[a], e.node_names[b])) for a, b in e.edges}
                score["relation"] = {"edges": len(e.edges), "deciding": sum(d in present for d in deciding)}
                if score["correct"]:
                    top = self._top_edge(e, "score")
                    score["relation"].update(hit=self._hit(e, deciding, "score"),
                                             hit_occlusion=self._hit(e, deciding, "occlusion"),
                                             top_edge="-".join(sorted(top)) if top else None)
                    cf = self._counterfactual(self.explainer, i, e, deciding, self._contrast(true_scene))
                    if cf is not None:
                        score["relation"].update(hit_counterfactual=cf[0], inserted=cf[1])
                    relation_rows.append(i)
            self._scores.append(score)
        if not relation_rows:
            return
        graph_list = graphs.index_select(relation_rows) if not isinstance(graphs, list) else \
            [graphs[i] for i in relation_rows]
        scenes = [int(truth[i]) for i in relation_rows]
        for random in self._randoms():  # each copy adds one entry to the lists random_hit...
            rand_expl = random.explain(images[relation_rows], graph_list, scene=scenes)
            for j, (i, e) in enumerate(zip(relation_rows, rand_expl)):
                scene = self.scenes[int(truth[i])]
                deciding = self._deciding(scene)
                rel = self._scores[len(self._scores) - len(names) + i]["relation"]
                rel.setdefault("random_hit", []).append(self._hit(e, deciding, "score"))
                rel.setdefault("random_hit_occlusion", []).append(self._hit(e, deciding, "occlusion"))
                cf = self._counterfactual(random, j, e, deciding, self._contrast(scene))
                if cf is not None:
                    rel.setdefault("random_hit_counterfactual", []).append(cf[0])

    def evaluate(self) -> dict:
        """Gather across ranks, write ``explanations.jsonl`` (main process) and return the metrics."""
        import torch.distributed as dist

        records, scores, fidelity = _gather(self._records), _gather(self._scores), _gather(self._fidelity)
        main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if self.out_path is not None and main:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            with self.out_path.open("w", encoding="utf-8") as f:
                for record in sorted(records, key=lambda r: r["name"]):
                    f.write(json.dumps(record) + "\n")
        metrics: dict = {"method": self.explainer._method_text(None),
                         "num_images": len(scores)}
        rel = [{**s["relation"], "scene": s["scene"]} for s in scores if "relation" in s]
        if rel:
            correct = [r for r in rel if "hit" in r]

            def rate(key: str) -> float | None:
                return _mean(float(r[key]) for r in correct if key in r) if correct else None

            def per_copy(key: str) -> list[float]:  # the hit rate of each randomised copy
                rows = [r[key] for r in correct if key in r]
                return [float(np.mean([row[k] for row in rows])) for k in range(min(map(len, rows)))] if rows else []

            def mean_of(values: list[float]) -> float | None:
                return float(np.mean(values)) if values else None

            metrics["relation_only"] = {
                "num_images": len(rel), "num_correct": len(correct),
                "hit_rate": rate("hit"), "hit_rate_occlusion": rate("hit_occlusion"),
                "random_weights_hit_rate": mean_of(per_copy("random_hit")),
                "random_weights_hit_rate_occlusion": mean_of(per_copy("random_hit_occlusion")),
                "hit_rate_by_scene": {scene: _mean(float(r["hit"]) for r in correct if r["scene"] == scene)
                                      for scene in sorted({r["scene"] for r in correct})},
                "chance": _mean(r["deciding"] / r["edges"] if r["edges"] else 0.0 for r in correct)
                if correct else None,
                "deciding_edges": {s: ", ".join("-".join(p) for p in pairs)
                                   for s, pairs in self.relation_contacts.items()},
                "hit_rate_counterfactual": rate("hit_counterfactual"),
                "random_weights_hit_rate_counterfactual": mean_of(per_copy("random_hit_counterfactual")),
                # each randomised copy's hit rate (seeds seed, seed + 1, ...; the first is the single copy of before)
                "random_weights_per_copy": {"score": per_copy("random_hit"),
                                            "occlusion": per_copy("random_hit_occlusion"),
                                            "counterfactual": per_copy("random_hit_counterfactual")},
                "chance_counterfactual": _mean((r["deciding"] + r["inserted"]) / (r["edges"] + r["inserted"])
                                               for r in correct if r.get("edges") and "inserted" in r),
                "top_edges": {scene: dict(Counter(r["top_edge"] for r in correct if r["scene"] == scene
                                                  and r.get("top_edge")).most_common(3))
                              for scene in sorted({r["scene"] for r in correct})},
            }
        curves = [s for s in scores if "deletion_top" in s]
        if curves:
            metrics["deletion"] = {
                "k": list(self.ks),
                "top": [_mean(s["deletion_top"][j] for s in curves) for j in range(len(self.ks))],
                "random": [_mean(s["deletion_random"][j] for s in curves) for j in range(len(self.ks))],
                "num_images": len(curves),
            }
        if fidelity:
            graphs = {k: sum(f[k][2] for f in fidelity) for k in self.ks}
            metrics["fidelity"] = {
                "k": list(self.ks),
                "fid_plus": [sum(f[k][0] * f[k][2] for f in fidelity) / max(graphs[k], 1) for k in self.ks],
                "fid_minus": [sum(f[k][1] * f[k][2] for f in fidelity) / max(graphs[k], 1) for k in self.ks],
                "masking": "PyG node-input masks (zeroed), hard top-k per graph",
            }
        return metrics


def format_explanation_metrics(m: dict) -> str:
    """One or two log lines for ``metrics["explanation"]``."""
    lines = [f"explanations of {m['num_images']} images"]
    r = m.get("relation_only")
    if r:
        def pct(x: float | None) -> str:
            return "—" if x is None else f"{100 * x:.1f}%"
        lines.append(f"relation-only: {r['num_correct']}/{r['num_images']} correct; top edge = deciding edge "
                     f"{pct(r['hit_rate'])} (occlusion {pct(r['hit_rate_occlusion'])}, counterfactual "
                     f"{pct(r.get('hit_rate_counterfactual'))}), random weights "
                     f"{pct(r['random_weights_hit_rate'])}, chance {pct(r['chance'])}")
    d = m.get("deletion")
    if d:
        pairs = ", ".join(f"k={k}: {t:+.3f} vs {r:+.3f}" for k, t, r in zip(d["k"], d["top"], d["random"])
                          if t is not None and r is not None)
        lines.append(f"deletion (drop in p, top-k vs random nodes): {pairs}")
    return "; ".join(lines)
