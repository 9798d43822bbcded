"""tools/demo.py for real: the Gradio app in a subprocess on a free local port, called through gradio_client's
``predict`` endpoint like any API user would, an unreadable upload answered with one line, then the server stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from infer_fixtures import SCENES, photos, shared_run
from PIL import Image

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240  # seconds: importing gradio and torch on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "server.log"
    # Without PYTHONUNBUFFERED, as a user's shell and CI have it: the demo must flush its URL line itself.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-tmp"))}
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "demo.py"), "--checkpoint", str(run),
                                 "--port", str(port), "--device", "cpu", "--topk", "3"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path_factory.mktemp("cwd"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Running on local URL" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "run": run, "log": log, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_demo_predict_endpoint_and_bad_upload(server, tmp_path):
    from gradio_client import Client, handle_file

    from twostream import SceneClassifier

    assert f"Running on local URL:  {server['url']}" in server["log"].read_text()  # bound to 127.0.0.1 by default
    photo = tmp_path / "coffee.png"
    Image.fromarray(photos()["coffee"][::2, ::2]).save(photo)
    client = Client(server["url"], verbose=False)
    assert "/predict" in client.view_api(return_format="dict")["named_endpoints"]
    outputs = client.predict(handle_file(str(photo)), api_name="/predict")
    label, overlay, panel, viewer, prediction = outputs[:5]  # then the explanation, where the predictor has one

    # the same numbers as the Python API on the same file
    expected = SceneClassifier.from_pretrained(server["run"], device="cpu").predict(photo, topk=3)
    assert label["label"] == expected.scenes[0][0]
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert list(got) == [s for s, _ in expected.scenes] and set(got) <= set(SCENES)
    np.testing.assert_allclose(list(got.values()), [p for _, p in expected.scenes], atol=1e-6)
    assert [r["scene"] for r in prediction["scenes"]] == list(got)
    np.testing.assert_allclose([r["prob"] for r in prediction["scenes"]], list(got.values()), atol=1e-6)
    assert prediction["graph"] == expected.graph.to_json()
    assert prediction["image_size"] == [200, 300]
    # the drawings come back as image files of the photo's size (overlay) and a panel; the viewer as a frame
    assert np.asarray(Image.open(overlay)).shape[:2] == (200, 300)
    assert np.asarray(Image.open(panel)).shape[1] > 300
    assert viewer.startswith("<iframe") and 'sandbox="allow-scripts"' in viewer and "twostream-data" in viewer

    bad = tmp_path / "holiday.jpg"
    bad.write_text("not an image")
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(bad)), api_name="/predict")
    message = str(err.value)
    assert "holiday.jpg: image is not an image PIL can read" in message
    assert "Traceback" not in message and "/tmp/gradio" not in message
    assert server["proc"].poll() is None  # the server carries on
    assert "Traceback" not in server["log"].read_text()


def test_unreachable_hub_id_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """The model loads before Gradio starts: a source that cannot be loaded stops the tool at once."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_infer_tool import run_tool

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: as if the Hub could not be reached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    for source, message in (("nobody/no-such-twostream-model", "nobody/no-such-twostream-model: no such folder or "
                             "file here, and the Hugging Face Hub gave no model of that id"),
                            ("empty", "empty: not a saved model: model.safetensors, config.yaml")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        rc, _, err = run_tool(REPO / "tools" / "demo.py", "--checkpoint", source, capsys=capsys)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert rc == 2 and len(errors) == 1 and message in errors[0], err


def test_analyse_with_explain_draws_and_returns_the_explanation(tmp_path_factory):
    """In-process: the page's explanation is the prediction's own JSON, the CAM lies over the photo, and the panel
    draws the explanation as tools/infer.py's panel does (it differs from the unexplained panel)."""
    from twostream import SceneClassifier
    from twostream.demo import analyse

    classifier = SceneClassifier.from_pretrained(shared_run(tmp_path_factory), device="cpu")
    image = photos()["chelsea"][::4, ::4]
    plain = analyse(classifier, image, topk=3)
    why = analyse(classifier, image, topk=3, explain=True)
    assert plain["explanation"] is None and plain["cam"] is None
    assert why["explanation"] == why["prediction"]["explanation"]
    assert why["explanation"]["scene"] == max(why["label"], key=why["label"].get)  # the top scene is explained
    assert why["cam"].shape == image.shape and why["cam"].dtype == np.uint8
    assert why["panel"].shape[2] == 3 and not np.array_equal(why["panel"], plain["panel"])
