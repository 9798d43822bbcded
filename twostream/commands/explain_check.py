"""Check explanations against known causes: train variants on a relation set and score their explanations.

    python tools/make_synthetic.py --out datasets/relation --scenes living_room dining_room --relation-fraction 1.0 \
        --train-per-scene 200 --val-per-scene 100
    python tools/explain_check.py --config configs/explain_relation.yaml --out runs/why \
        --variant graph_only= \
        --variant two_stream="model.image_encoder.enabled=true model.fusion.type=concat"

Each --variant NAME=OVERRIDES trains the config with those overrides into <out>/NAME (a finished run is not trained
again), evaluates it with tools/eval.py --explain (hit rate of the deciding edge on the relation-only images, the same
with random weights, deletion fidelity) and the table of all variants is printed (markdown; --table-out writes it).
Works with any config: see docs/explanations.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("explain-check", __doc__)
    p.add_argument("--config", default="configs/explain_relation.yaml",
                   help="the experiment config (default: configs/explain_relation.yaml)")
    p.add_argument("--out", default="runs/why", help="parent folder of the variants' runs (default: runs/why)")
    p.add_argument("--variant", action="append", default=None, metavar="NAME=OVERRIDES",
                   help="a variant: a name and space-separated key=value overrides (repeatable; default: "
                        "graph_only= alone)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every variant, e.g. data.root=... (default: none)")
    p.add_argument("--explain-method", default="integrated_gradients",
                   choices=["integrated_gradients", "saliency", "input_x_gradient"],
                   help="attribution method (default: integrated_gradients)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--table-out", default=None, help="also write the markdown table to this file")
    p.add_argument("--panel", nargs=2, default=None, metavar=("VARIANT", "PNG"),
                   help="also draw the explanation of one relation-only validation image by that variant's run")
    p.add_argument("--panel-scene", default="dining_room", help="the scene of that image (default: dining_room)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.explain.check import explain_example, format_check_table, parse_variant, run_check

    variants = dict(parse_variant(v) for v in (args.variant or ["graph_only="]))
    rows = run_check(args.config, variants, args.out, common=args.opts, method=args.explain_method,
                     device=args.device)
    table = format_check_table(rows)
    print(table)
    if args.table_out:
        Path(args.table_out).write_text(table + "\n")
    if args.panel:
        variant, png = args.panel
        panel = explain_example(Path(args.out) / variant, png, scene=args.panel_scene, method=args.explain_method)
        print(f"wrote {panel}")
    return 0
