"""Train one stage of twostream: the segmenter (configs/seg/*.yaml) or the two-stream scene classifier (configs/*.yaml).

    python tools/train.py --config configs/quickstart.yaml
    python tools/train.py --config configs/swin_gat.yaml --opts train.epochs=3 model.gnn.type=sage
    torchrun --nproc_per_node=2 tools/train.py --config configs/swin_gat.yaml      # DDP, same flags

A run folder (output.dir) receives config.yaml, vocabulary.json, class_table.json, checkpoints (last.pth, best.pth,
ckpt_e*_s*.pth), metrics.jsonl and TensorBoard logs (tb/). Running the same command again continues from last.pth,
exactly where the run stopped. SIGTERM or SIGUSR1 (a scheduler's pre-emption) finishes the optimizer step, writes a
checkpoint and exits with status 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1); exit status 2 is a
user error (one line), 0 a finished run. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("train", __doc__)
    p.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml or configs/seg/*.yaml)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides with dotted keys, e.g. train.epochs=3 model.gnn.type=sage (default: none)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint (default: <output.dir>/last.pth when it exists)")
    p.add_argument("--fresh", action="store_true",
                   help="start over even if output.dir holds checkpoints (default: continue from last.pth)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    import yaml

    from twostream.config import config_to_dict, load_config
    from twostream.engine.trainer import Preempted, train

    cfg = load_config(args.config, args.opts)
    if args.print_config:
        from twostream.engine.checkpoint import CheckpointError, resolve_segmenter_config

        try:  # the segmenter's architecture as its checkpoint says, when the checkpoint is there already
            cfg = resolve_segmenter_config(cfg)
        except CheckpointError as e:
            print(f"# model.segmenter: architecture not read from its checkpoint yet ({e})")
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
        return 0
    logging.getLogger(__name__).info("training stage '%s' with %s", cfg.train.stage, args.config)
    # command: <output.dir>/command.txt, the command the model card says trained the model (sys.argv: tools/train.py
    # ... or, under the console command, twostream train ...)
    try:
        train(cfg, resume=args.resume, fresh=args.fresh, command=sys.argv)
    except Preempted as e:  # the checkpoint is written and the trainer logged where; the same command resumes
        return e.exit_code
    return 0
