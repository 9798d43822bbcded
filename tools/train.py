#!/usr/bin/env python
"""Train one stage of twostream: the segmenter (configs/seg/*.yaml) or the two-stream scene classifier (configs/*.yaml).

    python tools/train.py --config configs/quickstart.yaml
    python tools/train.py --config configs/swin_gat.yaml --opts train.epochs=3 model.gnn.type=sage
    torchrun --nproc_per_node=2 tools/train.py --config configs/swin_gat.yaml      # DDP, same flags

A run folder (output.dir) receives config.yaml, vocabulary.json, class_table.json, checkpoints (last.pth, best.pth,
ckpt_e*_s*.pth), metrics.jsonl and TensorBoard logs (tb/). Running the same command again continues from last.pth.
"""

from __future__ import annotations

import argparse
import logging
import sys

from twostream.cli import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from twostream.engine.trainer import train
    from twostream.model_card import record_command

    cfg = load_config(args.config, args.opts)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
        return 0
    logging.getLogger(__name__).info("training stage '%s' with %s", cfg.train.stage, args.config)
    record_command(cfg.output.dir)  # <output.dir>/command.txt: the model card says which command trained the model
    train(cfg, resume=args.resume, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
