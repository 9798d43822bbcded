"""tools/prepare_dataset.py: docs/data.md's "Bring your own data" followed on a tiny folder per scene with 0-based
masks (convert -> check -> train the segmenter -> cache its graphs -> train the classifier, two epochs each -> eval ->
infer), the custom class table carried into every checkpoint; and each input mistake named on one line."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twostream.data.classes import ade20k150, read_class_table_csv
from twostream.data.convert import convert_folders, read_input_classes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_infer_tool import run_tool

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
# the quick-start configs at test size (a ResNet-10 UPSNet of 16 channels, timm's test ViT, a small GAT)
SEG = ["data.image_size=[64, 64]", "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16",
       "model.segmenter.head_channels=8", "data.num_workers=0", "train.batch_size=8", "train.epochs=2",
       "train.warmup_steps=2", "train.log_every=1", "eval.every_epochs=1", "output.tensorboard=false",
       "train.keep_last=1"]
CLS = [*SEG, "model.image_encoder.name=test_vit", "model.gnn.hidden_dim=16", "model.gnn.heads=2",
       "model.gnn.class_embed_dim=8", "model.fusion.dim=16", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def user_folder(synthetic_root, tmp_path_factory) -> dict:
    """The synthetic set as users hold such data: photos/<scene>/<name>.jpg, masks/<scene>/<name>.png with their
    own 0-based class ids (unannotated pixels 255) and a classes.csv of id,name."""
    root = tmp_path_factory.mktemp("user")
    scenes = dict(line.split() for line in (synthetic_root / "sceneCategories.txt").read_text().splitlines())
    ade = {p.stem: (split, np.array(Image.open(p))) for split in ("training", "validation")
           for p in sorted((synthetic_root / "annotations" / split).glob("*.png"))}
    present = sorted(set(np.unique(np.concatenate([a.ravel() for _, a in ade.values()])).tolist()) - {0})
    to_user = np.full(256, 255, np.uint8)
    to_user[present] = np.arange(len(present))  # ADE id -> the user's 0-based id; ADE "other" -> 255
    names = ade20k150().short_names
    with (root / "classes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name"])
        w.writerows([i, names[a]] for i, a in enumerate(present))
    for stem, (split, labels) in ade.items():
        scene = scenes[stem]
        (root / "photos" / scene).mkdir(parents=True, exist_ok=True)
        (root / "masks" / scene).mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic_root / "images" / split / f"{stem}.jpg", root / "photos" / scene / f"{stem}.jpg")
        Image.fromarray(to_user[labels]).save(root / "masks" / scene / f"{stem}.png")
    return {"root": root, "present": present, "ade": ade, "scenes": scenes}


def test_guide_end_to_end_with_a_custom_class_table(user_folder, tmp_path, monkeypatch, capsys):
    from twostream.engine.checkpoint import load_checkpoint

    u = user_folder["root"]
    monkeypatch.chdir(tmp_path)
    out = Path("datasets/mydata")
    rc, stdout, err = run_tool(TOOLS / "prepare_dataset.py", "--images", u / "photos", "--masks", u / "masks",
                               "--classes", u / "classes.csv", "--out", out, capsys=capsys)
    assert rc == 0, stdout + err
    assert "the table counts from 0" in stdout and "OK: wrote" in stdout
    table = read_class_table_csv(out / "class_table.csv", name="mydata")
    assert table.names[0] == "other" and len(table) == len(user_folder["present"]) + 1
    # every annotation is the original ADE map renumbered: ADE id a -> its rank + 1, ADE 0 (unannotated) -> 255
    expect = np.full(256, 255, np.uint8)
    expect[user_folder["present"]] = np.arange(1, len(user_folder["present"]) + 1)
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(manifest) == len(user_folder["ade"]) == 48
    for row in manifest[::7]:
        _, original = user_folder["ade"][Path(row["image"]).stem]
        written = np.array(Image.open(out / "annotations" / row["split"] / f"{row['stem']}.png"))
        np.testing.assert_array_equal(written, expect[original])
    splits = {r["split"] for r in manifest}
    assert splits == {"training", "validation"}
    rc, stdout, _ = run_tool(TOOLS / "prepare_ade20k.py", "--root", out, "--check", capsys=capsys)
    assert rc == 0 and "OK: no problems found" in stdout, stdout

    # the guide's training steps, at test size
    seg_run, run = Path("runs/mydata_seg"), Path("runs/mydata")
    rc, _, err = run_tool(TOOLS / "train.py", "--config", "seg/quickstart.yaml", "--opts", f"data.root={out}",
                          f"output.dir={seg_run}", *SEG, capsys=capsys)
    assert rc == 0, err[-3000:]
    seg = load_checkpoint(seg_run / "best.pth")
    assert tuple(seg["class_table"]["names"]) == table.names and seg["class_table"]["name"] == "mydata"
    assert 0 <= json.loads((seg_run / "final_metrics.json").read_text())["miou"] <= 1  # scored on the new table
    common = [f"data.root={out}", "data.scenes.mode=all", f"model.segmenter.checkpoint={seg_run / 'best.pth'}", *CLS]
    rc, _, err = run_tool(TOOLS / "build_graphs.py", "--config", "quickstart.yaml", "--opts", *common,
                          "--no-progress", capsys=capsys)
    assert rc == 0, err[-3000:]
    rc, _, err = run_tool(TOOLS / "train.py", "--config", "quickstart.yaml", "--opts", *common, f"output.dir={run}",
                          capsys=capsys)
    assert rc == 0, err[-3000:]
    ckpt = load_checkpoint(run / "best.pth")
    assert tuple(ckpt["class_table"]["names"]) == table.names
    assert sorted(ckpt["vocabulary"]) == sorted(set(user_folder["scenes"].values()))
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    rc, _, err = run_tool(TOOLS / "eval.py", "--checkpoint", run, capsys=capsys)
    assert rc == 0, err[-3000:]
    metrics = json.loads((run / "eval-validation" / "metrics.json").read_text())
    assert "miou" in metrics["segmentation"]  # scored against the dataset's own table, not ADE20K-150
    photo = next((out / "images" / "validation").iterdir())
    rc, stdout, err = run_tool(TOOLS / "infer.py", photo, "--checkpoint", run, "--json", "--device", "cpu",
                               capsys=capsys)
    assert rc == 0, err[-3000:]
    [record] = json.loads(stdout)
    names = {n["name"] for n in record["graph"]["nodes"]}
    assert names and names <= set(table.short_names)  # the nodes speak the dataset's own class names
    assert record["graph"]["class_table"]["name"] == "mydata"  # a table not shipped travels inside the JSON


def _write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_ids_beyond_the_table_are_named_and_nothing_is_written(user_folder, tmp_path):
    u = user_folder["root"]
    rows = list(csv.reader((u / "classes.csv").open()))
    short = _write_csv(tmp_path / "short.csv", rows[:-1])  # the last class missing: its id exceeds the table
    last = len(rows) - 2
    report = convert_folders(u / "photos", tmp_path / "out", masks=u / "masks", classes=short)
    assert not report.ok and not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert report.problems and all(f"id(s) {last} not in short.csv (ids 0..{last - 1}, ignore 255)" in p
                                   for p in report.problems)
    assert all(Path(p.split(":")[0]).suffix == ".png" for p in report.problems)  # each names its mask
    assert any("one past the table's last id" in h and "count from 1" in h for h in report.hints)
    assert "FAILED" in report.format()


def test_size_missing_jpeg_and_colour_mistakes(user_folder, tmp_path):
    u = tmp_path / "copy"
    shutil.copytree(user_folder["root"] / "photos", u / "photos")
    shutil.copytree(user_folder["root"] / "masks", u / "masks")
    masks = sorted((u / "masks").rglob("*.png"))
    Image.open(masks[0]).resize((60, 64)).save(masks[0])  # wrong size
    masks[1].unlink()  # missing
    Image.open(masks[2]).convert("RGB").save(masks[2])  # colour mask, table without colours
    Image.open(masks[3]).save(masks[3].with_suffix(".jpg"))  # a JPEG mask beside the images of another scene
    masks[3].unlink()
    (u / "masks" / "stray.png").write_bytes(masks[4].read_bytes())  # a mask without an image
    report = convert_folders(u / "photos", tmp_path / "out", masks=u / "masks", classes=user_folder["root"] /
                             "classes.csv", check_only=True)
    text = "\n".join(report.problems)
    assert f"{masks[0]}: mask is 60x64 but its image {masks[0].stem}.jpg is 64x64 (W x H)" in text
    assert f"{masks[1].stem}.jpg: image has no mask" in text
    assert f"{masks[2]}: mask is in colour (RGB) but the class table has no r,g,b columns" in text
    assert "lossy compression changes ids at every edge" in text
    assert f"{u / 'masks' / 'stray.png'}: mask has no image" in text
    assert not (tmp_path / "out").exists()


def test_colour_masks_map_through_the_table_and_background_zero(tmp_path):
    """Colour-coded masks with a table of r,g,b whose id 0 is 'background' (kept as background, not shifted)."""
    colours = {0: (0, 0, 0), 1: (200, 0, 0), 2: (0, 200, 0)}
    table = _write_csv(tmp_path / "classes.csv", [["id", "name", "r", "g", "b"], [0, "background", 0, 0, 0],
                                                  [1, "sofa", 200, 0, 0], [2, "plant", 0, 200, 0]])
    rng = np.random.default_rng(0)
    for scene in ("den", "garden"):
        for k in range(3):
            ids = rng.integers(0, 3, size=(32, 48))
            (tmp_path / "photos" / scene).mkdir(parents=True, exist_ok=True)
            (tmp_path / "masks" / scene).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / scene / f"p{k}.png")
            rgb = np.array([colours[i] for i in range(3)], np.uint8)[ids]
            Image.fromarray(rgb).save(tmp_path / "masks" / scene / f"p{k}.png")
    report = convert_folders(tmp_path / "photos", tmp_path / "out", masks=tmp_path / "masks", classes=table,
                             val_fraction=0.34)
    assert report.ok, report.format()
    assert "id 0 ('background') is the background" in report.labels
    written = read_class_table_csv(tmp_path / "out" / "class_table.csv")
    assert written.names == ("background", "sofa", "plant") and written.palette[1].tolist() == [200, 0, 0]
    ann = np.array(Image.open(next((tmp_path / "out" / "annotations" / "training").glob("den_p*.png"))))
    assert set(np.unique(ann).tolist()) <= {0, 1, 2}
    # an unknown colour is named
    bad = tmp_path / "masks" / "den" / "p0.png"
    rgb = np.array(Image.open(bad))
    rgb[0, 0] = (9, 9, 9)
    Image.fromarray(rgb).save(bad)
    report = convert_folders(tmp_path / "photos", tmp_path / "out2", masks=tmp_path / "masks", classes=table,
                             check_only=True)
    assert [p for p in report.problems] == [f"{bad}: colour(s) (9, 9, 9) not in classes.csv"]


@pytest.mark.parametrize(("rows", "message"), [
    ([["id", "name"], [0, "wall"], [0, "floor"]], "line 3: id 0 is listed twice"),
    ([["id", "name"], [1, "wall"], [2, "wall"]], "line 3: name 'wall' is listed twice"),
    ([["name"], ["wall"]], "expected a header row with the columns id,name"),
    ([["id", "name"], ["one", "wall"]], "line 2: id 'one' is not an integer"),
    ([["id", "name"], [-1, "wall"]], "line 2: id -1 is negative"),
])
def test_bad_class_tables_are_one_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        read_input_classes(_write_csv(tmp_path / "c.csv", rows))


def test_pre_split_folders_and_scenes_without_masks(user_folder, tmp_path):
    """photos/{train,val}/<scene>/ keeps the given split; without masks the annotations are all ignore."""
    u = user_folder["root"]
    for split, scene in (("train", "kitchen"), ("val", "kitchen"), ("train", "street")):
        dst = tmp_path / "photos" / split / scene
        dst.mkdir(parents=True)
        for p in sorted((u / "photos" / scene).glob("*.jpg"))[: 3 if split == "train" else 1]:
            shutil.copy(p, dst / p.name)
    report = convert_folders(tmp_path / "photos", tmp_path / "out")
    assert report.ok, report.format()
    assert dict(report.counts["training"]) == {"kitchen": 3, "street": 3}
    assert dict(report.counts["validation"]) == {"kitchen": 1}
    ann = next((tmp_path / "out" / "annotations" / "validation").glob("*.png"))
    assert np.unique(np.array(Image.open(ann))).tolist() == [255]
    assert not (tmp_path / "out" / "class_table.csv").exists()  # ADE20K-150 (a published segmenter's table)
