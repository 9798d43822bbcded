"""What ``tools/infer.py`` does with a list of inputs: expand them, predict in batches, print, write files.

Inputs are image files, folders (their image files, not recursive) and glob patterns (``**`` recurses). A bad input
(missing, not an image, truncated, empty, too large, a pattern that matches nothing) becomes one error record and one
line naming it; the others carry on. With ``out_dir``, each image gets the files of the artefacts asked for
(:data:`ARTEFACTS`, ``--save``; default :data:`DEFAULT_SAVE`)::

    <stem>.json          json: Prediction.to_json() + "image" (the input path) + "sem_seg" (the PNG below, relative)
    <stem>_sem.png       sem: the semantic map at the image's size, a palette PNG: pixel value = label, colour = class
    <stem>_cam.png       cam: an explained prediction's class-activation map over the image ("cam" in the JSON)
    <stem>_overlay.png   overlay: class colours blended over the image
    <stem>_panel.png     panel: image | overlay with the graph | the graph (twostream.viz.save_panel)
    <stem>.html          html: the interactive viewer (twostream.viz.write_html), self-contained

and the run one index, ``predictions.csv`` (:data:`INDEX_COLUMNS`: input, top-k scenes and probabilities, node and
touching-pair counts, error), one row per input as it completes, which spreadsheets and ``pandas.read_csv`` read.
The default (JSON + palette map, 7.7 KB per photo) keeps a folder of tens of thousands of images well under 1 GB;
the drawings cost 0.2-0.5 MB each and most of the time per image, so they are asked for, and rendered in worker
processes (``render_workers``) while the model runs on.

An image-only model has no map and no graph: only ``<stem>.json`` is written. Two inputs with one stem (``a/x.jpg``,
``b/x.png``) get ``x`` and ``x-2``.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twostream.data.classes import ClassTable
from twostream.data.io import DataError, load_image

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only: the artefact table loads without torch
    from twostream.inference import Prediction, Predictor

log = logging.getLogger(__name__)

__all__ = ["ARTEFACTS", "DEFAULT_SAVE", "INDEX_FILE", "Artefact", "BadInput", "IndexWriter", "expand_inputs",
           "format_prediction", "image_extensions", "index_columns", "parse_save", "run_inference", "save_label_png",
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
# Files: one small table of artefacts
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


def _write_sem(path: Path, image: np.ndarray, pred: Prediction, source: str | Path) -> None:
    save_label_png(path, pred.sem_map, pred.class_table)


def _write_overlay(path: Path, image: np.ndarray, pred: Prediction, source: str | Path) -> None:
    from PIL import Image

    from twostream.viz import overlay

    Image.fromarray(overlay(image, pred.sem_map, pred.class_table)).save(path, format="PNG")


def prediction_graph_view(pred: Prediction):
    """The :class:`~twostream.viz.GraphView` of a prediction (its graph, map, scenes and explanation) that the panel,
    the viewer and the demo draw."""
    from twostream.viz import GraphView

    return GraphView("prediction", pred.graph, pred.sem_map, scene_topk=pred.scenes or None,
                     explanation=pred.explanation)


def _write_panel(path: Path, image: np.ndarray, pred: Prediction, source: str | Path) -> None:
    from twostream.viz import save_panel

    save_panel(path, image, prediction_graph_view(pred), title=Path(source).name)


def _write_html(path: Path, image: np.ndarray, pred: Prediction, source: str | Path) -> None:
    from twostream.viz import write_html

    write_html(path, image, prediction_graph_view(pred), title=Path(source).name)


def _write_cam(path: Path, image: np.ndarray, pred: Prediction, source: str | Path) -> None:
    from PIL import Image

    from twostream.viz import cam_overlay  # with twostream.explain

    Image.fromarray(cam_overlay(image, pred.explanation.cam)).save(path, format="PNG")


def _has_cam(pred: Prediction) -> bool:
    return getattr(getattr(pred, "explanation", None), "cam", None) is not None


def _write_json(path: Path, image: np.ndarray, pred: Prediction, source: str | Path,
                names: dict[str, str] | None = None) -> None:
    """The record; ``names``: JSON key -> file name of the files it refers to (``sem_seg``, ``cam``)."""
    record = {"image": str(source), **pred.to_json(), **(names or {})}
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Artefact:
    """One kind of file written per image: ``<stem><suffix>`` by ``write(path, image, prediction, source)``.

    ``graph``: needs the map and the graph (skipped for an image-only model); ``when``: written only for the
    predictions it accepts (``cam``: an explained one); ``drawing``: rendered (a fraction of a second and more, not
    milliseconds), so it runs in the worker processes when there are any; ``json_key``: the key under which the JSON
    names the file (written before the JSON). ``bytes``: typical size of one file (quick-start model, scikit-image
    photos: docs/inference.md).
    """

    name: str
    suffix: str
    write: Callable[[Path, np.ndarray, Prediction, str | Path], None]
    what: str
    graph: bool = True
    drawing: bool = False
    bytes: int = 0
    when: Callable[[Prediction], bool] | None = None
    json_key: str | None = None


# Written in this order (the JSON names the map, so the map comes first). One more kind of file is one entry.
ARTEFACTS: dict[str, Artefact] = {a.name: a for a in (
    Artefact("sem", "_sem.png", _write_sem, "semantic map, palette PNG (labels as pixel values)", bytes=2_500,
             json_key="sem_seg"),
    Artefact("cam", "_cam.png", _write_cam, "with explanations: the class-activation map over the image",
             graph=False, bytes=300_000, when=_has_cam, json_key="cam"),
    Artefact("json", ".json", _write_json, "scenes + scene graph (what tools/visualize.py --prediction reads)",
             graph=False, bytes=5_200),
    Artefact("overlay", "_overlay.png", _write_overlay, "class colours over the image", drawing=True,
             bytes=190_000),
    Artefact("panel", "_panel.png", _write_panel, "image | overlay with the graph | the graph", drawing=True,
             bytes=460_000),
    Artefact("html", ".html", _write_html, "interactive scene-graph viewer, self-contained", drawing=True,
             bytes=300_000),
)}
DEFAULT_SAVE = ("json", "sem", "cam")  # 7.7 KB per photo (and a CAM for explained predictions only)
INDEX_FILE = "predictions.csv"


def parse_save(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``--save`` -> artefact names in writing order: a comma list of :data:`ARTEFACTS` names, ``all`` or
    ``none`` (the index only)."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["all"]:
        return tuple(ARTEFACTS)
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in ARTEFACTS]
    if unknown or not names:
        raise ValueError(f"--save: {', '.join(unknown) or 'nothing'} is not one of {', '.join(ARTEFACTS)} (or all, "
                         "none); e.g. --save json,sem,overlay")
    return tuple(n for n in ARTEFACTS if n in names)


def write_outputs(out_dir: str | Path, stem: str, image: np.ndarray, pred: Prediction, source: str | Path,
                  save: Sequence[str] = tuple(ARTEFACTS)) -> dict[str, str]:
    """Write the artefacts ``save`` names for one image (module docstring); returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    names: dict[str, str] = {}  # JSON key -> file, for the files the JSON refers to
    for name in parse_save(save):
        art = ARTEFACTS[name]
        if (art.graph and pred.graph is None) or (art.when is not None and not art.when(pred)):
            continue
        path = out / f"{stem}{art.suffix}"
        if name == "json":
            _write_json(path, image, pred, source, names)
        else:
            art.write(path, image, pred, source)
            if art.json_key:
                names[art.json_key] = path.name
        files[name] = str(path)
    return files


def _render(out_dir: str, stem: str, image: np.ndarray, pred: Prediction, source: str, save: tuple[str, ...]
            ) -> dict[str, str]:
    """A worker process's job: the drawings of one image."""
    return write_outputs(out_dir, stem, image, pred, source, save)


# --------------------------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------------------------


def index_columns(topk: int) -> list[str]:
    """``input, ok, error, output_stem, height, width, scene_1, prob_1, ..., scene_k, prob_k, num_nodes,
    num_pairs`` (``num_pairs``: touching object pairs, the graph's undirected edges)."""
    scenes = [c for k in range(1, topk + 1) for c in (f"scene_{k}", f"prob_{k}")]
    return ["input", "ok", "error", "output_stem", "height", "width", *scenes, "num_nodes", "num_pairs"]


class IndexWriter:
    """``predictions.csv``: one row per input, written (and flushed) as each completes, so an interrupted run keeps
    the rows of every image it finished."""

    def __init__(self, path: str | Path, topk: int) -> None:
        import csv

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.topk = topk
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=index_columns(topk))
        self._csv.writeheader()

    def write(self, record: dict) -> None:
        row: dict = {"input": record["input"], "ok": int(bool(record["ok"])), "error": record.get("error", "")}
        if record["ok"]:
            h, w = record["image_size"]
            row.update(output_stem=record.get("output_stem", ""), height=h, width=w)
            for k, s in enumerate(record.get("scenes", [])[: self.topk], start=1):
                row[f"scene_{k}"], row[f"prob_{k}"] = s["scene"], f"{s['prob']:.6g}"
            graph = record.get("graph")
            if graph is not None:
                row["num_nodes"] = len(graph["nodes"])
                row["num_pairs"] = len(graph["edges"])  # the JSON lists each touching pair once
        self._csv.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


def run_inference(predictor: Predictor, specs: Sequence[str], *, topk: int = 5, batch_size: int = 8,
                  out_dir: str | Path | None = None, save: Sequence[str] = DEFAULT_SAVE, render_workers: int = 0,
                  progress: bool = False, keep_graphs: bool = True,
                  on_record: Callable[[dict, Prediction | None], None] | None = None,
                  explain: bool = False, explain_scene: str | None = None,
                  entries: Sequence[Path | BadInput] | None = None) -> list[dict]:
    """Predict for every input of ``specs`` (files, folders, patterns), ``batch_size`` images at a time; with
    ``explain``, explain each prediction (for ``explain_scene`` when given; a name outside the vocabulary is a
    ``ValueError`` before any image is read).

    Args:
        out_dir: write the artefacts ``save`` names per image and the index ``predictions.csv`` there.
        save: artefact names (:func:`parse_save`), default :data:`DEFAULT_SAVE`.
        render_workers: processes that render the drawings (overlay, panel, html) while the model runs on; 0
            renders in this process.
        progress: a progress bar with images/s on stderr (tqdm).
        keep_graphs: keep each record's ``graph`` in the returned list (off for long runs that only need the
            index: memory stays flat).
        entries: ``expand_inputs(specs)`` when the caller has it already (a folder of tens of thousands of images
            is then listed once).

    Returns one record per input, in the order given: ``{"input", "ok": true, "output_stem", "image_size",
    "scenes", "graph", "outputs"}`` (``outputs`` with ``out_dir``: kind -> path) or ``{"input", "ok": false,
    "error"}``, the error one line naming the input. ``on_record(record, prediction or None)`` is called as each
    record is complete: patterns that match nothing first, then files as their batch (and their drawings) finish.
    """
    from tqdm import tqdm

    # a bad scene name or a segmenter-only predictor: fail once, up front, not once per batch
    explain = predictor.explain_request(explain, explain_scene)[0]

    save = parse_save(save)
    entries = expand_inputs(specs) if entries is None else entries
    records: list[dict | None] = [None] * len(entries)
    index = IndexWriter(Path(out_dir) / INDEX_FILE, topk) if out_dir is not None else None
    bar = tqdm(total=len(entries), unit="img", disable=not progress, dynamic_ncols=True, mininterval=1.0,
               smoothing=0.05, desc="infer")
    drawings = tuple(n for n in save if ARTEFACTS[n].drawing) if out_dir is not None else ()
    pool = None
    if drawings and render_workers > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (forking a process that runs torch's thread pools can deadlock)
        pool = ProcessPoolExecutor(render_workers, mp_context=multiprocessing.get_context("spawn"))
    pending: dict = {}  # future -> (slot, path, record, prediction)

    def emit(slot: int, record: dict, pred: Prediction | None = None) -> None:
        if index is not None:
            index.write(record)
        if on_record is not None:
            on_record(record, pred)
        if not keep_graphs:
            record.pop("graph", None)
        records[slot] = record
        bar.update(1)

    def fail(slot: int, name: str, reason: str) -> None:
        emit(slot, {"input": name, "ok": False, "error": reason})

    def finish(future) -> None:
        slot, path, record, pred = pending.pop(future)
        try:
            record["outputs"].update(future.result())
        except OSError as e:
            fail(slot, str(path), f"{path}: cannot write outputs to {out_dir}: {e}")
            return
        emit(slot, record, pred)

    def wait_for(limit: int) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        while len(pending) > limit:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                finish(future)

    slots = [i for i, e in enumerate(entries) if isinstance(e, Path)]
    files = [entries[i] for i in slots]
    stems = unique_stems(files)
    try:
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
                preds = predictor.predict([im for *_, im in batch], topk=topk, batch_size=len(batch),
                                          explain=explain, explain_scene=explain_scene)
            except (RuntimeError, ValueError) as e:  # e.g. out of memory: these inputs fail, the others carry on
                log.debug("prediction failed", exc_info=True)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                for slot, path, _, _ in batch:
                    fail(slot, str(path), f"{path}: prediction failed ({type(e).__name__}: {first})")
                continue
            for (slot, path, stem, image), pred in zip(batch, preds):
                record = {"input": str(path), "ok": True, "output_stem": stem, **pred.to_json()}
                if out_dir is None:
                    emit(slot, record, pred)
                    continue
                here = save if pool is None else tuple(n for n in save if n not in drawings)
                try:
                    record["outputs"] = write_outputs(out_dir, stem, image, pred, path, here)
                except OSError as e:
                    fail(slot, str(path), f"{path}: cannot write outputs to {out_dir}: {e}")
                    continue
                if pool is None or pred.graph is None:
                    emit(slot, record, pred)
                    continue
                future = pool.submit(_render, str(out_dir), stem, image, pred, str(path), drawings)
                pending[future] = (slot, path, record, pred)
                wait_for(2 * render_workers)  # a few images in flight: memory stays bounded on long runs
        wait_for(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if index is not None:
            index.close()
        bar.close()
    assert all(r is not None for r in records)
    return records
