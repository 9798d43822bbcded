"""twostream.SceneClassifier: the cheap package import, the inputs it takes, save_pretrained -> from_pretrained round
trips (identical predictions, and identical to tools/infer.py), the saved folder and its model card, the Hub paths
(download and push, with the network replaced by local stand-ins) and every bad source as one line."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fixtures import SCENES, photos, shared_run
from PIL import Image

from twostream.engine.checkpoint import CheckpointError

pytest.importorskip("skimage", reason="scikit-image is not installed")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_infer_tool import INFER, run_tool  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run):
    from twostream import SceneClassifier

    return SceneClassifier.from_pretrained(run, device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    Image.fromarray(photos()["coffee"][::2, ::2]).save(path)  # 200 x 300
    return path


def same_prediction(a, b) -> None:
    assert [s for s, _ in a.scenes] == [s for s, _ in b.scenes]
    np.testing.assert_allclose([p for _, p in a.scenes], [p for _, p in b.scenes], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.sem_map, b.sem_map)
    # the graph is exact; the segmenter's mean confidence per node is a float that batching may move in its last bits
    ga, gb = a.graph.to_json(), b.graph.to_json()
    ca = [n.pop("confidence", None) for n in ga["nodes"]]
    cb = [n.pop("confidence", None) for n in gb["nodes"]]
    assert ga == gb
    np.testing.assert_allclose(np.array(ca, dtype=float), np.array(cb, dtype=float), rtol=0, atol=1e-5)


def test_package_import_is_cheap_and_lazy():
    code = ("import sys, twostream; assert 'torch' not in sys.modules, 'import twostream loaded torch'; "
            "from twostream import SceneClassifier; assert 'torch' in sys.modules; print(SceneClassifier.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "SceneClassifier"
    import twostream

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        twostream.Nope  # noqa: B018


def test_inputs_of_every_kind_give_the_same_prediction(model, photo):
    rgb = np.array(Image.open(photo).convert("RGB"))  # (200, 300, 3) uint8
    ref = model.predict(photo, topk=3)
    assert len(ref.scenes) == 3 and ref.sem_map.shape == (200, 300) and ref.graph.num_nodes > 0
    assert {s for s, _ in ref.scenes} <= set(SCENES)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W) uint8
    for form in (str(photo), Image.open(photo), rgb, chw, chw.float() / 255.0, rgb.astype(np.float32) / 255.0):
        same_prediction(model.predict(form, topk=3), ref)
    many = model.predict([photo, rgb], topk=3)
    assert isinstance(many, list) and len(many) == 2
    batch = model.predict(torch.stack([chw, chw]), topk=3)  # (B, 3, H, W): two predictions
    assert len(batch) == 2
    for p in (*many, *batch):
        same_prediction(p, ref)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])  # opaque alpha changes nothing
    same_prediction(model.predict(rgba, topk=3), ref)


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((8, 8, 3), np.int32), "dtype int32"),
    (np.full((8, 8, 3), 2.0, np.float32), r"float array must be RGB in \[0, 1\]"),
    (np.zeros((2, 8, 8, 3, 1), np.uint8), "shape"),
    (torch.zeros(5, 8, 8), r"\(3, H, W\)"),
    (42, "cannot read an image from int"),
])
def test_bad_images_are_one_line_errors(model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model.predict(bad)


def test_explain_forwards_to_the_predictor_or_says_it_cannot(model, photo):
    if model.supports_explanations:  # once twostream.explain is merged
        pred = model.predict(photo, explain=True)
        assert pred.explanation is not None
    else:
        with pytest.raises(ValueError, match=r"explain=True needs twostream\.explain"):
            model.predict(photo, explain=True)


def test_round_trip_is_identical_and_matches_infer_tool(model, run, photo, tmp_path, capsys):
    from twostream import SceneClassifier

    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "class_table.json", "config.json", "config.yaml",
                                                        "model.safetensors", "vocabulary.json"]
    reloaded = SceneClassifier.from_pretrained(saved, device="cpu")
    assert reloaded.scenes == model.scenes == SCENES
    ref = model.predict(photo, topk=5)
    same_prediction(reloaded.predict(photo, topk=5), ref)
    for name, tensor in model.predictor.model.state_dict().items():
        assert torch.equal(tensor, reloaded.predictor.model.state_dict()[name]), name
    # tools/infer.py reads the saved folder (a superset of an export) and the run folder to the same numbers
    for source in (saved, run):
        rc, out, err = run_tool(INFER, photo, "--checkpoint", source, "--json", "--topk", "5", "--device", "cpu",
                                capsys=capsys)
        assert rc == 0, err
        [record] = json.loads(out)
        assert [r["scene"] for r in record["scenes"]] == [s for s, _ in ref.scenes]
        np.testing.assert_allclose([r["prob"] for r in record["scenes"]], [p for _, p in ref.scenes], atol=1e-6)
        assert record["graph"] == ref.graph.to_json()
    # saving the reloaded model again writes the same weights and config
    again = tmp_path / "again"
    reloaded.save_pretrained(again)
    assert (again / "config.yaml").read_text() == (saved / "config.yaml").read_text()
    assert json.loads((again / "config.json").read_text()) == json.loads((saved / "config.json").read_text())


def test_saved_folder_describes_itself(run, tmp_path):
    """config.json and the model card: Hub front matter, the config, the vocabulary with counts, the command and the
    evaluation of exactly these weights (a stale evaluation of another step is left out)."""
    from huggingface_hub import ModelCard

    from twostream import SceneClassifier
    from twostream.data.vocabulary import SceneVocabulary
    from twostream.model_card import record_command

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    counts = {s: 10 + i for i, s in enumerate(SCENES)} | {"misc": 3}
    SceneVocabulary(SCENES, train_counts=counts).save(folder / "vocabulary.json")
    record_command(folder, ["tools/train.py", "--config", "quickstart.yaml"])
    record_command(folder, ["tools/train.py", "--config", "quickstart.yaml"])  # resumed: not repeated
    metrics = {"checkpoint": str(folder / "best.pth"), "split": "validation", "step": 0, "num_images": 80,
               "top1": 0.9375, "top3": 1.0, "mean_class_accuracy": 0.925, "graphs": "online",
               "segmentation": {"miou": 0.227, "pixel_accuracy": 0.789},
               "graph_quality": {"micro": {"node_f1": 0.64, "edge_f1": 0.4}}}
    (folder / "eval-validation").mkdir()
    (folder / "eval-validation" / "metrics.json").write_text(json.dumps(metrics))
    (folder / "eval-training").mkdir()  # another step: not these weights
    (folder / "eval-training" / "metrics.json").write_text(json.dumps({**metrics, "split": "training", "step": 7}))

    out = tmp_path / "saved"
    SceneClassifier.from_pretrained(folder, device="cpu").save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "twostream-model-v1" and config["scenes"] == SCENES
    assert config["class_table"] == "ade20k150" and config["num_labels"] == 151
    assert config["training"]["commands"] == ["python tools/train.py --config quickstart.yaml"]
    assert list(config["training"]["evaluation"]) == ["validation"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "twostream" and "scene-graph" in card.data.tags
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["synthetic"]
    results = {(r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("validation", "top-1 accuracy")] == 0.9375 and results[("validation", "mIoU")] == 0.227
    assert not any(split == "training" for split, _ in results)
    text = card.text
    assert "python tools/train.py --config quickstart.yaml" in text
    assert "| 2 | kitchen | 12 |" in text  # the vocabulary with its training counts
    assert "| validation | 80 | 93.8% | 100.0% | 92.5% | 22.7% | 0.640 | 0.400 |" in text
    assert "vit" in text.lower() or "test_vit" in text
    # the card survives a round trip: the saved folder's record feeds the next save
    again = tmp_path / "again"
    SceneClassifier.from_pretrained(out, device="cpu").save_pretrained(again)
    assert ModelCard.load(again / "README.md").text == text.replace(str(out), str(again))


def test_export_tool_writes_the_same_folder(run, tmp_path, capsys):
    rc, _, err = run_tool(REPO / "tools" / "export.py", "--checkpoint", run, "--out", tmp_path / "export",
                          capsys=capsys)
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert names == ["README.md", "class_table.json", "config.json", "config.yaml", "model.safetensors",
                     "vocabulary.json"]
    assert (tmp_path / "export" / "README.md").read_text().startswith("---\n")


def test_hub_download_and_push_use_the_same_folder(model, photo, tmp_path, monkeypatch):
    """No network here: snapshot_download and HfApi are replaced by stand-ins that serve / receive a folder."""
    import huggingface_hub
    import huggingface_hub.hub_mixin

    from twostream import SceneClassifier

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, tmp_path / "hub" / repo_id)
            uploaded["repo_id"] = repo_id
            return f"https://huggingface.co/{repo_id}/commit/0"

    from twostream.explain.streams import compute_stream_means

    torch.manual_seed(0)  # stream means as training stores them (the shared run has none), so the Hub carries them
    means = compute_stream_means(model.predictor.model, [{"image": torch.rand(2, 3, 64, 64)}])
    monkeypatch.setattr(model.predictor, "stream_means", means)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    assert model.push_to_hub("someone/twostream-test").endswith("/commit/0")
    hub_folder = tmp_path / "hub" / "someone/twostream-test"
    assert 'SceneClassifier.from_pretrained("someone/twostream-test")' in (hub_folder / "README.md").read_text()

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        """Like the real one: only the files allow_patterns names reach the local snapshot."""
        assert "model.safetensors" in allow_patterns and "config.yaml" in allow_patterns
        snapshot = tmp_path / "snapshot" / repo_id
        snapshot.mkdir(parents=True)
        for file in (tmp_path / "hub" / repo_id).iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy2(file, snapshot / file.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    from_hub = SceneClassifier.from_pretrained("someone/twostream-test", device="cpu")
    assert from_hub.info.source == "someone/twostream-test"
    same_prediction(from_hub.predict(photo), model.predict(photo))
    # every file the saved folder holds comes down, the stream means of explanations too
    assert sorted(p.name for p in (tmp_path / "snapshot" / "someone/twostream-test").iterdir()) == \
        sorted(p.name for p in hub_folder.iterdir())
    assert from_hub.predictor.stream_means is not None
    for name, mean in means.items():
        if isinstance(mean, torch.Tensor):
            assert torch.equal(from_hub.predictor.stream_means[name], mean), name


def test_bad_sources_are_one_line(model, tmp_path, monkeypatch):
    from twostream import SceneClassifier

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"not a saved model: model\.safetensors, config\.yaml, vocabulary"):
        SceneClassifier.from_pretrained(empty)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    (saved / "vocabulary.json").unlink()
    with pytest.raises(CheckpointError, match=r"not a saved model: vocabulary\.json missing"):
        SceneClassifier.from_pretrained(saved)
    with pytest.raises(CheckpointError, match=r"nowhere/model\.safetensors: not found"):
        SceneClassifier.from_pretrained(tmp_path / "nowhere" / "model.safetensors")
    # weights that do not fit the saved config name the parameter
    model.save_pretrained(saved)
    text = (saved / "config.yaml").read_text().replace("hidden_dim: 16", "hidden_dim: 32")
    (saved / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=r"parameter '[\w.]+' has shape .* in the model"):
        SceneClassifier.from_pretrained(saved)
    # a Hub id that cannot be reached (offline: nothing in the cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(CheckpointError) as err:
        SceneClassifier.from_pretrained("nobody/no-such-twostream-model")
    message = str(err.value)
    assert "\n" not in message and "nobody/no-such-twostream-model" in message and "Hugging Face Hub" in message
