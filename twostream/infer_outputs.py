"""What ``tools/infer.py`` does with a list of inputs: expand them, predict in batches, print, write files.

Inputs are image files, folders (their image files, not recursive) and glob patterns (``**`` recurses). A bad input
(missing, not an image, truncated, empty, too large, a pattern that matches nothing) becomes one error record and one
line naming it; the others carry on. Per image, ``--out DIR`` receives::

    <stem>.json          Prediction.to_json() + "image" (the input path) + "sem_seg" (the PNG below, relative)
    <stem>_sem.png       the semantic map at the image's size, a palette PNG: pixel value = label, colour = class
    <stem>_overlay.png   class colours blended over the image
    <stem>_panel.png     image | overlay with the graph | the graph (twostream.viz.save_panel)
    <stem>.html          the interactive viewer (twostream.viz.write_html), self-contained
    <stem>_cam.png       with explanations: the class-activation map blended over the image (twostream.viz.cam_overlay)

With explanations (``explain=True``, ``tools/infer.py --explain``) ``<stem>.json`` gains ``"explanation"``
(:meth:`twostream.explain.SceneExplanation.to_json`), the panel and the viewer show node and edge importance, the CAM
and the streams, and the printed summary gains a "because" line.

An image-only model has no map and no graph: only ``<stem>.json`` (and, explained, ``<stem>_cam.png``) is
written. Two inputs with one stem (``a/x.jpg``, ``b/x.png``) get ``x`` and ``x-2``.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twostream.data.classes import ClassTable
from twostream.data.io import DataError, load_image
from twostream.inference import Prediction, Predictor

log = logging.getLogger(__name__)

__all__ = ["BadInput", "expand_inputs", "format_prediction", "image_extensions", "run_inference", "save_label_png",
           "unique_stems", "write_outputs"]

_GLOB_CHARS = set("*?[")


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def image_extensions() -> frozenset[str]:
    """File suffixes PIL opens (``.jpg``, ``.png``, ...), lower case."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass(frozen=True)
class BadInput:
    """A command-line input that names no readable file: ``spec`` as given and why, in words."""

    spec: str
    reason: str


def expand_inputs(specs: Sequence[str]) -> list[Path | BadInput]:
    """Command-line inputs -> files (and :class:`BadInput` s) in the order given, each file once.

    A path that exists is used as it is (a folder: its image files, sorted); a path that does not exist is kept, so
    reading it reports "not found" in the same place as any other unreadable file, unless it holds glob characters:
    then it is a pattern (``**`` recurses), and one that matches nothing is a :class:`BadInput`.
    """
    exts = image_extensions()
    entries: list[Path | BadInput] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            entries.append(path)

    def add_folder(folder: Path) -> None:
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not images:
            entries.append(BadInput(str(folder), "folder holds no image files"))
        for p in images:
            add(p)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            add_folder(path)
        elif path.exists() or not _GLOB_CHARS & set(spec):
            add(path)
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                entries.append(BadInput(spec, "no file matches this pattern"))
            for m in matches:
                (add_folder if Path(m).is_dir() else add)(Path(m))
    return entries


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems, one per path: the file's stem, with ``-2``, ``-3``, ... for later repeats (case-insensitive,
    so outputs stay apart on case-insensitive file systems too)."""
    taken = {p.stem.lower() for p in paths}  # every input's own stem: never given to another input
    used: set[str] = set()
    stems = []
    for p in paths:
        stem, k = p.stem, 2
        while stem.lower() in used or (stem != p.stem and stem.lower() in taken):
            stem, k = f"{p.stem}-{k}", k + 1
        used.add(stem.lower())
        stems.append(stem)
    return stems


# --------------------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------------------


def format_prediction(name: str, pred: Prediction, max_objects: int = 8, max_pairs: int = 5) -> str:
    """A few lines for a person: the scene top-k, the largest objects (area %) and the strongest adjacencies
    (shared boundary in pixels of the graph's map)."""
    h, w = pred.image_size
    lines = [f"{name} ({w}x{h})"]
    if pred.scenes:
        lines.append("  scenes:   " + ", ".join(f"{s} {p:.1%}" for s, p in pred.scenes))
    because = f"  because:  {pred.explanation.because()}" if pred.explanation is not None else None
    if pred.graph is None:
        lines.append("  graph:    none (image-only model)")
        return "\n".join(lines + ([because] if because else []))
    g = pred.graph
    objects = pred.top_objects(max_objects)
    more = f", +{g.num_nodes - len(objects)} more" if g.num_nodes > len(objects) else ""
    lines.append(f"  objects:  {g.num_nodes}" + (": " + ", ".join(f"{n} {a:.1%}" for n, a in objects) + more
                                                  if objects else ""))
    pairs = pred.top_adjacencies(max_pairs)
    gh, gw = g.image_size
    lines.append(f"  touching: {g.num_edges // 2} pairs" + (
        f"; strongest (shared boundary, px at {gw}x{gh}): " + ", ".join(f"{a}-{b} {int(n)}" for a, b, n in pairs)
        if pairs else ""))
    if because:
        lines.append(because)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def save_label_png(path: str | Path, sem_map: np.ndarray, class_table: ClassTable) -> Path:
    """``(H, W)`` labels -> a palette PNG: pixel values are the labels (``load_label`` reads them back), the palette
    the class colours (any viewer shows the segmentation). More than 256 labels need 16-bit grey instead."""
    from PIL import Image

    path = Path(path)
    if len(class_table) <= 256 and int(sem_map.max(initial=0)) < 256:
        im = Image.fromarray(sem_map.astype(np.uint8), mode="P")
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: len(class_table)] = class_table.palette
        im.putpalette(palette.reshape(-1).tolist())
    else:
        im = Image.fromarray(sem_map.astype(np.uint16))
    im.save(path, format="PNG", optimize=True)
    return path


def write_outputs(out_dir: str | Path, stem: str, image: np.ndarray, pred: Prediction, source: str | Path
                  ) -> dict[str, str]:
    """Write the files of one image (module docstring); returns ``{kind: path}``."""
    from PIL import Image

    from twostream.viz import GraphView, cam_overlay, overlay, save_panel, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    record = {"image": str(source), **pred.to_json()}
    if pred.explanation is not None and pred.explanation.cam is not None:
        cam = out / f"{stem}_cam.png"
        Image.fromarray(cam_overlay(image, pred.explanation.cam)).save(cam, format="PNG")
        record["cam"] = cam.name
        files["cam"] = str(cam)
    if pred.graph is not None:
        sem = save_label_png(out / f"{stem}_sem.png", pred.sem_map, pred.class_table)
        record["sem_seg"] = sem.name
        files["sem_seg"] = str(sem)
        over = out / f"{stem}_overlay.png"
        Image.fromarray(overlay(image, pred.sem_map, pred.class_table)).save(over, format="PNG")
        files["overlay"] = str(over)
        view = GraphView("prediction", pred.graph, pred.sem_map, scene_topk=pred.scenes or None,
                         explanation=pred.explanation)
        title = Path(source).name
        files["panel"] = str(save_panel(out / f"{stem}_panel.png", image, view, title=title))
        files["html"] = str(write_html(out / f"{stem}.html", image, view, title=title))
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return {"json": str(json_path), **files}


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


def run_inference(predictor: Predictor, specs: Sequence[str], *, topk: int = 5, batch_size: int = 8,
                  out_dir: str | Path | None = None, on_record: Callable[[dict, Prediction | None], None] | None = None,
                  explain: bool = False, explain_scene: str | None = None) -> list[dict]:
    """Predict for every input of ``specs`` (files, folders, patterns), ``batch_size`` images at a time; with
    ``explain``, explain each prediction (for ``explain_scene`` when given; a name outside the vocabulary is a
    ``ValueError`` before any image is read).

    Returns one record per input, in the order given: ``{"input", "ok": true, "output_stem", "image_size",
    "scenes", "graph", "outputs"}`` (``outputs`` with ``out_dir``: kind -> path) or ``{"input", "ok": false,
    "error"}``, the error one line naming the input. ``on_record(record, prediction or None)`` is called as each
    record is complete: patterns that match nothing first, then files as their batch finishes.
    """
    if explain or explain_scene is not None:  # a bad scene name or a segmenter-only predictor: fail once, up front
        if predictor.model is None:
            raise ValueError("--explain needs a scene classifier (--checkpoint); a segmenter alone has no scenes")
        if explain_scene is not None:
            from twostream.explain import resolve_scene

            resolve_scene(explain_scene, predictor.scenes)
        explain = True
    entries = expand_inputs(specs)
    records: list[dict | None] = [None] * len(entries)

    def emit(slot: int, record: dict, pred: Prediction | None = None) -> None:
        records[slot] = record
        if on_record is not None:
            on_record(record, pred)

    def fail(slot: int, name: str, reason: str) -> None:
        emit(slot, {"input": name, "ok": False, "error": reason})

    slots = [i for i, e in enumerate(entries) if isinstance(e, Path)]
    files = [entries[i] for i in slots]
    stems = unique_stems(files)
    for i, e in enumerate(entries):
        if isinstance(e, BadInput):
            fail(i, e.spec, f"{e.spec}: {e.reason}")
    for start in range(0, len(files), batch_size):
        batch = []
        for slot, path, stem in zip(slots[start:start + batch_size], files[start:start + batch_size],
                                    stems[start:start + batch_size]):
            try:
                batch.append((slot, path, stem, load_image(path)))
            except DataError as e:
                fail(slot, str(path), str(e))
        if not batch:
            continue
        try:
            preds = predictor.predict([im for *_, im in batch], topk=topk, batch_size=len(batch), explain=explain,
                                      explain_scene=explain_scene)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: these inputs fail, the others carry on
            log.debug("prediction failed", exc_info=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            for slot, path, _, _ in batch:
                fail(slot, str(path), f"{path}: prediction failed ({type(e).__name__}: {first})")
            continue
        for (slot, path, stem, image), pred in zip(batch, preds):
            record = {"input": str(path), "ok": True, "output_stem": stem, **pred.to_json()}
            if out_dir is not None:
                try:
                    record["outputs"] = write_outputs(out_dir, stem, image, pred, path)
                except OSError as e:
                    fail(slot, str(path), f"{path}: cannot write outputs to {out_dir}: {e}")
                    continue
            emit(slot, record, pred)
    assert all(r is not None for r in records)
    return records
