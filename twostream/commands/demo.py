"""Try a trained model in the browser: a Gradio page with the scenes, the segmentation and the scene graph.

    python tools/demo.py --checkpoint runs/quickstart                 # http://127.0.0.1:7860
    python tools/demo.py --checkpoint exports/quickstart --port 8000
    python tools/demo.py --checkpoint user/twostream-model --share    # a Hub id; --share: a public gradio.live link

Needs the demo extra (gradio: pip install -e ".[demo]" in a checkout, pip install "gradio>=6" elsewhere). The page
listens on 127.0.0.1 (this machine only) unless --host says otherwise. Its API endpoint /predict takes an image and
returns the scene label, the overlay, the panel, the viewer and the prediction JSON
(gradio_client.Client(url).predict(handle_file(path), api_name="/predict")).
"""

from __future__ import annotations

import argparse
import sys

from twostream.commands import command_parser

DEFAULT_CHECKPOINT = "runs/quickstart"


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("demo", __doc__)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="RUN_OR_EXPORT_OR_HUB_ID",
                   help=f"run folder, checkpoint, saved model folder or Hugging Face Hub id "
                        f"(default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens the page to the network (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (default: off)")
    p.add_argument("--topk", type=int, default=5, help="scenes shown (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    import importlib.util
    import logging

    if importlib.util.find_spec("gradio") is None:
        raise ImportError("the demo needs gradio, the demo extra: pip install -e '.[demo]' in a checkout, "
                          "pip install 'gradio>=6' elsewhere")
    if args.topk < 1:
        get_args_parser().error("--topk must be at least 1")
    from twostream.api import SceneClassifier

    if args.log_level != "DEBUG":
        logging.getLogger("twostream.models").setLevel(logging.WARNING)  # the parameter table is noise here
    model = SceneClassifier.from_pretrained(args.checkpoint, device=args.device)  # a bad source fails before gradio
    logging.getLogger("twostream.demo").info("%s", model)
    from twostream.demo import launch_demo

    # A server's output is read while it runs (a log file, a supervisor): the URL line must not wait in a buffer.
    sys.stdout.reconfigure(line_buffering=True)
    launch_demo(model, host=args.host, port=args.port, share=args.share, topk=args.topk)
    return 0
