"""Throughput of the classifier configs (end to end and per stage), the training step and the data loader, as a
markdown table with the performance targets' verdicts.

    python tools/benchmark.py                         # CPU, the configs' 224 px, batch 1 and 8 (a few minutes)
    python tools/benchmark.py --quick                 # 128 px, fewer iterations
    python tools/benchmark.py --device cuda --bf16    # on a GPU, bf16 autocast (add --compile for torch.compile)
    python tools/benchmark.py --ci                    # 64 px toy models, seconds: a smoke run, not a measurement
    python tools/benchmark.py --only store            # the graph store at 1 M graphs vs the old shard cache

On a CPU shared with other work, torch's intra-op threads wait for each other on every small operation (the GNN,
the fusion, data transforms): compare with --threads 1 before reading much into those stages. --compile is meant for
GPUs (it runs on a CPU, where it was checked for function only).

The store section writes synthetic graphs (1 M by default: about 1.1 GiB for the store and 1.5 GiB for the old shard
cache it is compared with, in a temporary folder, as measured in docs/graph_store.md) and times random and in-order
access, opening, memory and building, plus a graphs-only epoch against the same epoch reading images.

Models: swin_gat, vit_gcn, resnet_sage, image_only_swin and shared_swin_gat (plus the image streams of vit_gcn and
resnet_sage alone, for their ratios, and swin_gat:seg_hires, swin_gat with its segmenter at 512/224 of the image
size: the cost of segmenting at the segmenter's training resolution), built from configs/ with pretrained=false (no
downloads). The explain section
times one image explained by the quick-start model (nodes, edges, occlusion, CAM, streams) against its plain forward.
"""

from __future__ import annotations

import argparse
import logging

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("benchmark", __doc__)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--size", type=int, default=None,
                   help="square image size for every model, a multiple of 32 (default: each config's own, 224; "
                        "128 with --quick)")
    p.add_argument("--quick", action="store_true", help="128 px and at most 3 timed iterations")
    p.add_argument("--ci", action="store_true", help="CI size: 64 px, toy widths, timm test models, 1-2 iterations")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B",
                   help="inference batch sizes (default: 1 8)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default: 1; 2 with --compile)")
    p.add_argument("--iters", type=int, default=5, help="timed calls per measurement, median kept (default: 5)")
    p.add_argument("--budget", type=float, default=15.0,
                   help="seconds after which a measurement stops once it has 3 calls (default: 15)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: what torch picks, reported in the header)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbones, FPN, semantic head and "
                   "image encoders")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts (default: 0 1 2)")
    p.add_argument("--loader-batches", type=int, default=10, help="timed batches per loader run (default: 10)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="inference rows to run (default: all: image_only_swin swin_gat swin_gat:seg_hires "
                        "shared_swin_gat vit_gcn:image_only vit_gcn resnet_sage:image_only resnet_sage)")
    p.add_argument("--only", nargs="+", choices=["inference", "train", "loader", "builder", "store", "explain"],
                   default=None,
                   help="run only these sections (default: all)")
    p.add_argument("--store-size", type=int, default=None,
                   help="graphs in the store section (default: 1000000; 4000 with --ci)")
    p.add_argument("--store-reads", type=int, default=20_000,
                   help="graphs read per access measurement of the store section (default: 20000)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every inference model, e.g. model.segmenter.deformable=false "
                        "(default: none)")
    p.add_argument("--config-dir", default=None,
                   help="the configs folder (default: the shipped configs, configs/ in a checkout)")
    p.add_argument("--out", default=None, help="also write the markdown report to this file")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"],
                   help="progress messages on stderr (default: INFO)")
    return p


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from twostream.benchmark import BenchmarkOptions, format_report, run_benchmark
    from twostream.benchmark.inference import DEFAULT_MODELS, MODELS_BY_NAME

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    # progress from the benchmark only; model tables and dataset summaries would drown it
    logging.getLogger("twostream").setLevel(logging.WARNING)
    logging.getLogger("twostream.benchmark").setLevel(args.log_level)
    options = BenchmarkOptions(device=args.device, size=args.size, quick=args.quick, ci=args.ci,
                               batch_sizes=tuple(args.batch_sizes), warmup=args.warmup, iters=args.iters,
                               budget_s=args.budget, bf16=args.bf16, compile=args.compile,
                               workers=tuple(args.workers), loader_batches=args.loader_batches,
                               overrides=tuple(args.opts), store_size=args.store_size,
                               store_reads=args.store_reads)
    unknown = [m for m in args.models or [] if m not in MODELS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown --models {', '.join(unknown)}; choose from: {', '.join(MODELS_BY_NAME)}")
    options.models = tuple(MODELS_BY_NAME[m] for m in args.models) if args.models else DEFAULT_MODELS
    if args.config_dir:
        options.config_dir = Path(args.config_dir)
    sections = args.only or ("inference", "train", "loader", "builder", "store", "explain")
    report = format_report(run_benchmark(options, sections=sections))
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0
