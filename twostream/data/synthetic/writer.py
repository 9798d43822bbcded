"""Writing a synthetic dataset in the ADEChallengeData2016 layout (see :mod:`twostream.data.synthetic`)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from twostream.atomic import atomic_write_text
from twostream.data.synthetic.relation import (
    RELATION_CONTACTS,
    RELATION_LAYOUTS,
    RELATION_SCENES,
    check_relation_size,
)
from twostream.data.synthetic.render import render_scene, size_hw
from twostream.data.synthetic.scenes import SCENES

__all__ = ["SPLITS", "make_synthetic"]

log = logging.getLogger(__name__)

SPLITS = {"training": "ADE_train_", "validation": "ADE_val_"}
_SPLIT_CODE = {"training": 1, "validation": 2}
_META = "synthetic.json"


def _is_relation_only(k: int, fraction: float) -> bool:
    """Whether the k-th image (0-based) of a relation scene uses the relation-only layout: spread evenly, with
    floor(n * fraction) of the first n images."""
    return math.floor((k + 1) * fraction + 1e-9) > math.floor(k * fraction + 1e-9)


def _job(task: tuple) -> tuple[str, str, bool]:
    out, split, index, scene, relation, size, seed, instances, quality, layout = task
    stem = f"{SPLITS[split]}{index:08d}"
    try:
        image, label, inst = render_scene(scene, np.random.SeedSequence([seed, _SPLIT_CODE[split], index]), size,
                                          relation, layout)
    except Exception as e:  # a bug in a recipe, not a user mistake: say which image, keep the traceback
        raise RuntimeError(f"synthetic: drawing {scene} image {stem} (seed {seed}) failed: {e}") from e
    out = Path(out)
    Image.fromarray(image, "RGB").save(out / "images" / split / f"{stem}.jpg", quality=quality)
    Image.fromarray(label, "L").save(out / "annotations" / split / f"{stem}.png")
    if instances:
        Image.fromarray(inst, "RGB").save(out / "annotations_instance" / split / f"{stem}.png")
    return stem, scene, relation


def _prepare_out(out: Path, params: dict, overwrite: bool) -> dict | None:
    """Make ``out`` ready; return the existing metadata when it already holds exactly this set."""
    meta_path = out / _META
    if out.is_dir() and any(out.iterdir()):
        if not meta_path.is_file():
            raise ValueError(f"{out}: the folder exists and is not a synthetic set (no {_META}); choose a new or "
                             "empty --out (it is never cleared, in case it holds a real dataset)")
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("params") == params and (out / "sceneCategories.txt").is_file() and not overwrite:
            return old
        if not overwrite:
            changed = sorted(k for k in params if old.get("params", {}).get(k) != params[k])
            raise ValueError(f"{out}: holds a synthetic set made with other parameters ({', '.join(changed)}); "
                             "pass --overwrite to replace it or choose another --out")
        for sub in ("images", "annotations", "annotations_instance"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("sceneCategories.txt", _META):
            (out / name).unlink(missing_ok=True)
    return None


def make_synthetic(
    out: str | Path,
    *,
    train_per_scene: int = 40,
    val_per_scene: int = 10,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    workers: int = 0,
    instances: bool = False,
    scenes: Sequence[str] | None = None,
    relation_fraction: float = 0.25,
    relation_layout: str = "boxes",
    quality: int = 90,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic ADEChallengeData2016-layout dataset to ``out`` (see the module docstring for the layout).

    Args:
        train_per_scene, val_per_scene: images per scene type in each split.
        size: ``H = W`` or ``(H, W)``.
        seed: the same seed (and parameters) gives the same bytes, whatever ``workers``.
        workers: processes that draw and encode images (0 or 1: this process).
        instances: also write ``annotations_instance/<split>/*.png`` (read them with ``read_instances``).
        scenes: scene types to draw (default: all of ``SCENES``, in that order).
        relation_fraction: share of ``living_room``/``dining_room`` images drawn with the relation-only layout
            (``1.0``: all of them, the relation benchmark of docs/relations.md).
        relation_layout: a key of ``RELATION_LAYOUTS`` (see :mod:`twostream.data.synthetic.relation`): ``boxes``
            (default), ``irregular`` (concave furniture whose boxes overlap whether or not it touches),
            ``degree_matched`` / ``irregular_degree_matched`` (the same with a shelf that the object apart from the
            table touches, so that every object has as many contacts in both scenes).
        quality: JPEG quality.
        overwrite: replace a synthetic set made with other parameters (a folder without ``synthetic.json`` is
            never touched). An existing set with the same parameters is kept as it is.

    Returns:
        The metadata written to ``synthetic.json`` plus ``seconds`` (wall time) and ``images`` (count).
    """
    scenes = list(scenes) if scenes else list(SCENES)
    unknown = [s for s in scenes if s not in SCENES]
    if unknown:
        raise ValueError(f"synthetic: unknown scene(s) {', '.join(unknown)}; choose from: {', '.join(SCENES)}")
    if len(set(scenes)) != len(scenes):
        raise ValueError(f"synthetic: scenes listed twice in {scenes}")
    if train_per_scene < 0 or val_per_scene < 0 or train_per_scene + val_per_scene == 0:
        raise ValueError(f"synthetic: images per scene must be >= 0 and not both 0, got train={train_per_scene}, "
                         f"val={val_per_scene}")
    if not 0.0 <= relation_fraction <= 1.0:
        raise ValueError(f"synthetic: relation_fraction is a share in [0, 1], got {relation_fraction}")
    if relation_layout not in RELATION_LAYOUTS:
        raise ValueError(f"synthetic: unknown relation layout '{relation_layout}'; choose from: "
                         f"{', '.join(RELATION_LAYOUTS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"synthetic: JPEG quality must be 1..100, got {quality}")
    h, w = size_hw(size)
    if relation_fraction > 0 and any(s in RELATION_SCENES for s in scenes):
        check_relation_size(relation_layout, h, w)  # before a file is written, not at the first relation image
    out = Path(out)
    params = {"train_per_scene": train_per_scene, "val_per_scene": val_per_scene, "size": [h, w], "seed": seed,
              "instances": instances, "scenes": scenes, "relation_fraction": relation_fraction, "quality": quality}
    if relation_layout != "boxes":  # recorded only when not the default, so sets written before it stay the same
        params["relation_layout"] = relation_layout
    existing = _prepare_out(out, params, overwrite)
    if existing is not None:
        log.info("%s already holds this synthetic set; nothing to do", out)
        return {**existing, "seconds": 0.0, "images": sum(sum(c.values()) for c in existing["counts"].values())}

    tasks = []
    for split, per_scene in (("training", train_per_scene), ("validation", val_per_scene)):
        for sub in ("images", "annotations") + (("annotations_instance",) if instances else ()):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(per_scene * len(scenes)):
            scene, k = scenes[i % len(scenes)], i // len(scenes)  # round-robin: any prefix covers every scene
            relation = scene in RELATION_SCENES and _is_relation_only(k, relation_fraction)
            tasks.append((str(out), split, i + 1, scene, relation, (h, w), seed, instances, quality, relation_layout))

    t0 = time.perf_counter()
    if workers <= 1:
        results = [_job(t) for t in tasks]
    else:  # spawn: the caller may hold torch threads, which do not survive fork reliably
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            results = list(ex.map(_job, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    seconds = time.perf_counter() - t0

    results.sort()
    atomic_write_text(out / "sceneCategories.txt", "".join(f"{stem} {scene}\n" for stem, scene, _ in results))
    counts: dict[str, dict[str, int]] = {}
    for stem, scene, _ in results:
        split = "training" if stem.startswith(SPLITS["training"]) else "validation"
        counts.setdefault(split, {}).setdefault(scene, 0)
        counts[split][scene] += 1
    meta = {
        "format": "twostream-synthetic-v1",
        "params": params,
        "counts": counts,
        "relation_scenes": RELATION_SCENES,
        # scene -> the contacts its relation-only images have and the other scene's have not (the deciding ones)
        "relation_contacts": {scene: [list(pair) for pair in pairs]
                              for scene, pairs in RELATION_CONTACTS[relation_layout].items()},
        "relation_only": [stem for stem, _, rel in results if rel],
    }
    atomic_write_text(out / _META, json.dumps(meta, indent=1) + "\n")  # last: the mark of a whole set
    log.info("wrote %d synthetic images (%dx%d) to %s in %.2f s (%.0f images/s, %d worker(s))", len(results), h, w,
             out, seconds, len(results) / max(seconds, 1e-9), max(1, workers))
    return {**meta, "seconds": seconds, "images": len(results)}
