"""Config: defaults, YAML inheritance, overrides, round trip, and every error path."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from twostream.config import (
    Config,
    ConfigError,
    FusionConfig,
    GNNConfig,
    SegmenterConfig,
    config_from_dict,
    load_config,
    save_config,
    section_hash,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_consistent():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.gnn.type == "gat" and cfg.data.image_size == (224, 224)


def test_yaml_overrides_only_named_values(tmp_path):
    p = write(tmp_path / "a.yaml", "train:\n  epochs: 7\nmodel:\n  gnn:\n    type: sage\n")
    cfg = load_config(p)
    assert cfg.train.epochs == 7 and cfg.model.gnn.type == "sage"
    assert cfg.train.lr == Config().train.lr  # untouched keys keep their defaults
    assert cfg.model.gnn.hidden_dim == Config().model.gnn.hidden_dim


def test_base_inheritance_child_wins(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  epochs: 5\n  lr: 0.001\nmodel:\n  gnn:\n    type: gcn\n")
    p = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(p)
    assert cfg.train.epochs == 9  # child
    assert cfg.train.lr == 0.001  # base, merged key by key, not section by section
    assert cfg.model.gnn.type == "gcn"


def test_two_levels_of_base_are_refused(tmp_path):
    write(tmp_path / "root.yaml", "train:\n  epochs: 1\n")
    write(tmp_path / "mid.yaml", "_base_: root.yaml\n")
    p = write(tmp_path / "leaf.yaml", "_base_: mid.yaml\n")
    with pytest.raises(ConfigError, match="one level of inheritance"):
        load_config(p)


def test_command_line_overrides(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.gnn.type=sage", "data.image_size=[128, 96]", "train.lr=2e-4"])
    assert cfg.train.epochs == 3 and cfg.model.gnn.type == "sage"
    assert cfg.data.image_size == (128, 96)
    assert cfg.train.lr == pytest.approx(2e-4)  # PyYAML alone would read 2e-4 as a string
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    cfg = load_config(None, ["data.scenes.names=[bedroom, kitchen]", "data.scenes.mode=list"])
    assert cfg.data.scenes.names == ["bedroom", "kitchen"]


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(None, ["train.epochs=1.5"])


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.fusion.type=gated", "data.scenes.names=[a, b]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_every_shipped_config_loads_and_round_trips(tmp_path):
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    for path in configs:
        cfg = load_config(path)
        assert load_config(save_config(cfg, tmp_path / f"{path.stem}.yaml")) == cfg, path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.gnn.type=gin", "--opts: model.gnn.type: 'gin' is not allowed; choose one of: gcn, sage, gat, gatv2"),
        ("model.gnn.typ=gat", "unknown key 'model.gnn.typ' (did you mean 'type'?); valid keys in model.gnn:"),
        ("trian.epochs=3", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
        ("train.compile=1", "train.compile: expected true or false, got 1"),
        ("data.image_size=[1, 2, 3]", "data.image_size: expected a list of 2 values, got 3"),
        ("graph.connectivity=6", "graph.connectivity: 6 is not allowed; choose one of: 4, 8"),
        ("model.gnn=3", "model.gnn: expected a mapping with keys enabled, type"),
        ("epochs", "is not of the form key=value"),
    ],
)
def test_override_errors_name_key_source_and_allowed(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    text = str(info.value)
    assert message in text
    assert text.startswith("--opts")
    assert "\n" not in text


def test_file_errors_name_the_file(tmp_path):
    p = write(tmp_path / "bad.yaml", "model:\n  fusion:\n    type: attention\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.fusion\.type: 'attention' is not allowed; choose one of"):
        load_config(p)
    p = write(tmp_path / "unknown.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown key 'train\.epoch' \(did you mean 'epochs'\?\)"):
        load_config(p)
    p = write(tmp_path / "broken.yaml", "train: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(p)
    p = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_error_in_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  optimiser: sgd\n")
    p = write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key 'train\.optimiser'"):
        load_config(p)
    p = write(tmp_path / "orphan.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found"):
        load_config(p)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.image_encoder.enabled=false", "model.gnn.enabled=false"], "both false"),
        (["model.fusion.type=none"], "both streams are enabled"),
        (["model.gnn.enabled=false"], "needs model.fusion.type=none"),
        (["graph.source=online", "model.segmenter.trainable=true"], "needs a differentiable path to the segmenter"),
        (["model.shared_backbone=true"], "needs graph.source=online"),
        (["model.segmenter.kind=none"], "set graph.source=gt"),
        (["graph.pool_features=true"], "pool_features needs graph.source=online"),
        (["model.segmenter.panoptic_head=true"], "needs model.segmenter.instance_head=true"),
        (["model.segmenter.trainable=true"], "trainable needs graph.source=online"),
        (["train.stage=segmentation", "model.segmenter.kind=detectron2"], "trains model.segmenter.kind upsnet or hf"),
        (["train.stage=segmentation", "model.segmenter.kind=hf"], "set model.segmenter.trainable=true"),
        (["train.stage=segmentation", "data.image_size=[100, 128]"], "must be divisible by 32"),
        (["model.segmenter.input_size=[0, 128]"], "model.segmenter.input_size: both sides must be positive"),
        (["model.segmenter.max_size=-1"], "model.segmenter.max_size: must be at least 0"),
        (["model.segmenter.input_size=[512, 512]", "model.segmenter.keep_ratio=true", "model.segmenter.max_size=256"],
         r"max_size \(256\) is smaller than the short side"),
        (["model.gnn.hidden_dim=30", "model.gnn.heads=4"], "must be divisible by model.gnn.heads"),
        (["train.batch_size=0"], "train.batch_size: must be at least 1"),
        (["train.lr=0"], "train.lr: must be positive"),
        (["data.normalize=true"], "would normalise the images a second time"),
    ],
)
def test_cross_key_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_from_dict_is_partial_and_validated():
    cfg = config_from_dict({"train": {"epochs": 2}})
    assert cfg.train.epochs == 2 and cfg.model == Config().model
    with pytest.raises(ConfigError, match="<dict>: unknown key 'nope'"):
        config_from_dict({"nope": 1})


def test_section_hash_tracks_values():
    a, b = Config(), load_config(None, ["graph.connectivity=8"])
    assert section_hash(a.graph) == section_hash(Config().graph)
    assert section_hash(a.graph) != section_hash(b.graph)
    assert section_hash(a.model) == section_hash(b.model)


def test_saved_yaml_is_plain(tmp_path):
    path = save_config(Config(), tmp_path / "c.yaml")
    data = yaml.safe_load(path.read_text())  # no python/tuple tags: safe_load reads it
    assert data["data"]["image_size"] == [224, 224]


def _choices(section: type, key: str) -> set:
    return set(typing.get_args(typing.get_type_hints(section)[key]))


def test_allowed_values_are_the_model_tables():
    """config.py may not import the models, so its Literals copy the name tables by hand: this keeps them equal. A new
    GNN layer, norm, readout, fusion or segmenter is one table entry plus its name in the Literal."""
    from twostream.models.fusion import FUSIONS
    from twostream.models.gnn import CONVS, NORMS, READOUTS
    from twostream.models.segmenter import SEGMENTERS

    pairs = {
        "model.gnn.type": (_choices(GNNConfig, "type"), set(CONVS)),
        "model.gnn.norm": (_choices(GNNConfig, "norm"), set(NORMS)),
        "model.gnn.readout": (_choices(GNNConfig, "readout"), set(READOUTS)),
        # 'none': a single-stream model has no fusion module; no segmenter has no builder
        "model.fusion.type": (_choices(FusionConfig, "type"), {*FUSIONS, "none"}),
        "model.segmenter.kind": (_choices(SegmenterConfig, "kind"), {*SEGMENTERS, "none"}),
    }
    for key, (literal, table) in pairs.items():
        assert literal == table, f"{key}: config allows {sorted(literal - table)} that the table lacks; the table " \
                                 f"has {sorted(table - literal)} that the config refuses"


def test_image_only_model_resolves_to_no_segmenter():
    image_only = load_config(REPO / "configs/image_only_swin.yaml")
    assert image_only.model.segmenter.kind == "none" and image_only.model.segmenter.checkpoint == ""
    assert load_config(REPO / "configs/swin_gat.yaml").model.segmenter.kind == "upsnet"  # it needs one
    seg_stage = load_config(None, ["train.stage=segmentation", "model.gnn.enabled=false", "model.fusion.type=none"])
    assert seg_stage.model.segmenter.kind == "upsnet"  # the segmentation stage is the segmenter


def test_config_differences_name_the_dotted_keys():
    from twostream.config import config_differences

    base = load_config(None, [])
    other = load_config(None, ["train.lr=0.5", "model.gnn.hidden_dim=8", "train.epochs=9", "data.image_size=[64, 96]"])
    assert config_differences(base, base) == []
    assert config_differences(base, other) == ["data.image_size", "model.gnn.hidden_dim", "train.epochs", "train.lr"]
    assert config_differences(base, other, ["train.epochs", "model.gnn"]) == ["data.image_size", "train.lr"]
