"""Draw scene graphs: a PNG panel (image | segmentation with the graph | graph) and an interactive HTML page.

    python tools/visualize.py --image img.jpg --prediction pred.json --out viz/          # what infer.py predicted
    python tools/visualize.py --image ADE_val_00000001.jpg \\
        --annotation ADE_val_00000001.png --out viz/                                      # the ground-truth graph
    python tools/visualize.py --image X.jpg --prediction X.json --annotation X.png --out viz/   # both, compared

--out receives panel.png and graph.html (one self-contained file: open it in any browser, offline).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("visualize", __doc__)
    p.add_argument("--image", required=True, help="the image (any format PIL reads)")
    p.add_argument("--prediction", default=None, help="prediction JSON written by tools/infer.py (default: none)")
    p.add_argument("--annotation", default=None,
                   help="label PNG of the image (ADE20K: 0 = other, 1..150) for the ground-truth graph (default: none)")
    p.add_argument("--out", required=True, help="output folder for panel.png and graph.html")
    p.add_argument("--title", default=None, help="heading of the drawings (default: the image's file name)")
    p.add_argument("--width", type=int, default=1500, help="width of panel.png in pixels (default: 1500)")
    p.add_argument("--colors", type=int, default=None,
                   help="quantise panel.png to this many colours, ~3x smaller, e.g. 256 for docs (default: full)")
    p.add_argument("--granularity", default="class", choices=["class", "region"],
                   help="ground-truth graph: one node per class or per connected region (default: class)")
    p.add_argument("--connectivity", type=int, default=4, choices=[4, 8], help="ground-truth graph (default: 4)")
    p.add_argument("--min-area", type=int, default=16,
                   help="ground-truth graph, region granularity: smallest region in pixels (default: 16)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.data.io import load_image
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.viz import save_panel, write_html
    from twostream.viz.sources import annotation_view, prediction_view

    log = logging.getLogger("twostream.visualize")
    if not args.prediction and not args.annotation:
        get_args_parser().error("give --prediction, --annotation or both")
    image = load_image(args.image)
    views = []
    if args.prediction:
        views.append(prediction_view(args.prediction, image.shape[:2]))
    if args.annotation:
        builder = SceneGraphBuilder(granularity=args.granularity, connectivity=args.connectivity,
                                    min_area=args.min_area)
        views.append(annotation_view(args.annotation, image.shape[:2], builder))
    title = args.title or Path(args.image).name
    out = Path(args.out)
    panel = save_panel(out / "panel.png", image, views, title=title, width=args.width, colors=args.colors)
    page = write_html(out / "graph.html", image, views, title=title)
    for v in views:
        log.info("%s: %d objects, %d adjacencies", v.name, v.graph.num_nodes, v.graph.num_edges // 2)
    log.info("wrote %s and %s", panel, page)
    return 0
