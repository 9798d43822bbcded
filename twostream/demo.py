"""A Gradio page for trying a model: upload (or pick) a photo, see its scenes, segmentation and scene graph.

    python tools/demo.py --checkpoint runs/quickstart            # http://127.0.0.1:7860
    python tools/demo.py --checkpoint user/twostream-model --port 8000 --share

Outputs: the scene top-k (``gr.Label``), the segmentation overlay, the scene-graph panel (image | overlay with the
graph | the graph), the interactive viewer of :func:`twostream.viz.scene_graph_html` (in an ``<iframe srcdoc>``:
``gr.HTML`` inserts markup with ``innerHTML``, which never runs scripts, while a sandboxed frame runs the viewer's own
script and keeps its CSS away from the page), the prediction JSON (scenes + scene graph), and, where the installed
Predictor explains predictions, the explanation.

The API endpoint ``predict`` takes one image and returns those outputs in that order (then the explanation's JSON
and its class-activation map, where the Predictor explains)::

    from gradio_client import Client, handle_file
    label, overlay, panel, viewer, prediction, *rest = Client("http://127.0.0.1:7860").predict(
        handle_file("photo.jpg"), api_name="/predict")
    label["label"], prediction["scenes"], prediction["graph"]["num_nodes"]

An image that cannot be read is a ``gr.Error`` with the reader's one-line message, never a traceback. The page
needs no network: analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` unless set) and the theme uses the system's
fonts (the default theme fetches Google fonts).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twostream.quickstart import PHOTOS

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

    from twostream.api import SceneClassifier

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check: works offline

log = logging.getLogger(__name__)

__all__ = ["EXAMPLE_PHOTOS", "analyse", "build_demo", "example_images", "launch_demo", "viewer_iframe"]

EXAMPLE_PHOTOS = PHOTOS  # the photographs scikit-image ships, those the quick start predicts on
PANEL_WIDTH = 1200  # pixels of the scene-graph panel
VIEWER_HEIGHT = 640  # pixels of the viewer's frame


def example_images() -> list[Path]:
    """Photographs to pick from: scikit-image's sample photos, when scikit-image is installed."""
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in EXAMPLE_PHOTOS if (folder / name).is_file()]


def viewer_iframe(page: str, height: int = VIEWER_HEIGHT) -> str:
    """A self-contained HTML page as an ``<iframe srcdoc>``: its scripts run inside a sandbox (no same-origin
    access to the demo page), where ``gr.HTML`` alone would drop them."""
    return (f'<iframe title="scene-graph viewer" sandbox="allow-scripts" srcdoc="{html.escape(page, quote=True)}" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd; border-radius: 6px;"></iframe>')


def analyse(classifier: SceneClassifier, image: str | Path | np.ndarray, *, topk: int = 5,
            explain: bool = False) -> dict[str, Any]:
    """Everything the page shows for one image: ``{"label": {scene: probability}, "overlay": (H, W, 3) uint8,
    "panel": (h, w, 3) uint8, "viewer": iframe HTML, "prediction": JSON, "explanation": JSON or None, "cam": the
    class-activation map over the image or None}``.

    Raises:
        DataError: the file cannot be read (one line naming it).
    """
    from twostream.data.io import load_image
    from twostream.infer_outputs import prediction_graph_view
    from twostream.viz import cam_overlay, draw_panel, overlay, scene_graph_html

    rgb = load_image(image) if isinstance(image, str | Path) else image
    pred = classifier.predict(rgb, topk=topk, explain=explain)
    out: dict[str, Any] = {"label": {name: float(p) for name, p in pred.scenes}, "overlay": None, "panel": None,
                           "viewer": "<p>This model has no graph stream (image-only): no segmentation, no graph.</p>",
                           "prediction": pred.to_json(), "explanation": None, "cam": None}
    if pred.graph is not None:
        out["overlay"] = overlay(rgb, pred.sem_map, pred.class_table)
        view = prediction_graph_view(pred)  # as tools/infer.py draws it, the explanation included
        title = Path(image).name if isinstance(image, str | Path) else None
        fig = draw_panel(rgb, view, title=title, width=PANEL_WIDTH)
        fig.canvas.draw()
        out["panel"] = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()  # (h, w, 3) uint8
        out["viewer"] = viewer_iframe(scene_graph_html(rgb, view, title=title))
    if pred.explanation is not None:
        out["explanation"] = out["prediction"].get("explanation")  # the prediction's JSON holds it already
        if pred.explanation.cam is not None:  # where in the image the top scene's evidence lies
            out["cam"] = cam_overlay(rgb, pred.explanation.cam)
    return out


def _image_input(**kwargs):
    """A ``gr.Image`` whose uploads reach the app as file paths, unopened: gr.Image itself opens every upload with
    PIL first, so a bad file would fail inside Gradio with PIL's message; here twostream's reader decodes it and
    says in one line what is wrong. (The method is replaced on the instance: a subclass would make Gradio write a
    ``.pyi`` stub beside this module.)"""
    import types

    import gradio as gr
    from gradio import image_utils

    component = gr.Image(type="filepath", **kwargs)

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # pasted from the clipboard
            return image_utils.decode_base64_to_file(payload.url, self.GRADIO_CACHE, self.format)
        return payload.path

    component.preprocess = types.MethodType(preprocess, component)
    return component


def _theme():
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)


def build_demo(classifier: SceneClassifier, *, examples: Sequence[str | Path] | None = None, topk: int = 5,
               title: str | None = None) -> gr.Blocks:
    """The page (a ``gr.Blocks``) for ``classifier``; ``examples``: photos to pick from (default
    :func:`example_images`). Its ``predict`` endpoint runs :func:`analyse`."""
    import gradio as gr

    from twostream.data.io import DataError

    explain = classifier.supports_explanations
    examples = [str(p) for p in (example_images() if examples is None else examples)]
    name = title or f"twostream: {len(classifier.scenes)} scenes"

    def run(path: str | None):
        if not path:
            raise gr.Error("Upload an image (or pick an example) first.", print_exception=False)
        try:
            out = analyse(classifier, path, topk=topk, explain=explain)
        except DataError as e:  # unreadable, truncated, not an image, too large: the reader's one line
            message = str(e).replace(str(path), Path(path).name)  # the upload's name, not the server's temp path
            log.warning("%s", message)
            # the modal renders HTML: the file name is escaped
            raise gr.Error(html.escape(message), title="Cannot read the image", print_exception=False) from None
        values = [out["label"], out["overlay"], out["panel"], out["viewer"], out["prediction"]]
        return (*values, out["explanation"], out["cam"]) if explain else tuple(values)

    with gr.Blocks(title=name, analytics_enabled=False) as demo:
        gr.Markdown(f"# {html.escape(name)}\nWhat kind of place is this, and why: the scenes, the objects the "
                    "segmenter found and which of them touch (the scene graph the classifier used).")
        with gr.Row():
            with gr.Column(scale=1):
                # a file path, not an array: twostream's own reader decodes it (EXIF orientation, any PIL mode,
                # one-line errors), exactly as tools/infer.py reads files
                image = _image_input(label="image", sources=["upload", "clipboard"], height=320)
                button = gr.Button("Predict", variant="primary")
                if examples:
                    gr.Examples(examples, inputs=image, label="examples (scikit-image photographs)")
            with gr.Column(scale=1):
                label = gr.Label(num_top_classes=topk, label="scene")
                overlay = gr.Image(label="segmentation overlay", type="numpy", interactive=False, height=320)
        panel = gr.Image(label="scene graph: image | overlay with the graph | the graph", type="numpy",
                         interactive=False)
        viewer = gr.HTML(label="interactive viewer: hover or click a node or a region")
        prediction = gr.JSON(label="prediction: scenes and scene graph (tools/infer.py's JSON)")
        outputs = [label, overlay, panel, viewer, prediction]
        if explain:
            outputs += [gr.JSON(label="explanation: which nodes, edges and image regions drove the scene"),
                        gr.Image(label="image evidence (class-activation map)", type="numpy", interactive=False)]
        button.click(run, inputs=image, outputs=outputs, api_name="predict")
        image.upload(run, inputs=image, outputs=outputs, api_name=False)
    return demo


def launch_demo(classifier: SceneClassifier, *, host: str = "127.0.0.1", port: int | None = None,
                share: bool = False, examples: Sequence[str | Path] | None = None, topk: int = 5,
                block: bool = True):
    """Serve :func:`build_demo` on ``host:port`` (``port`` ``None``: Gradio's default 7860, or the next free one);
    ``share`` opens a public gradio.live link (needs the internet). ``block=False`` returns at once."""
    demo = build_demo(classifier, examples=examples, topk=topk)
    demo.queue(default_concurrency_limit=1)  # one prediction at a time: the model is not re-entrant on CPU threads
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True, quiet=False,
                       prevent_thread_lock=not block, theme=_theme(), footer_links=["api"],
                       allowed_paths=[str(p.parent) for p in map(Path, examples or example_images())])
