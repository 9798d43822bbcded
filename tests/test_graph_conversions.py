"""SceneGraph conversions: JSON (format, class names, exact float32 round trip), networkx, PyG, plain tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twostream.data.classes import ClassTable, ade20k150
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.scene_graph import JSON_FORMAT, SceneGraph


def _graph(granularity: str = "region", features: bool = False) -> SceneGraph:
    rng = np.random.default_rng(0)
    sem = np.kron(rng.integers(0, 9, (5, 6)), np.ones((3, 3), np.int64))[:14, :17]
    feats = torch.randn(1, 4, 7, 9) if features else None
    return SceneGraphBuilder(granularity=granularity, min_area=1).build_batch(sem[None], features=feats)[0]


def test_json_format_is_readable_and_round_trips_exactly(tmp_path):
    graph = _graph()
    d = json.loads(json.dumps(graph.to_json()))
    assert d["format"] == JSON_FORMAT and d["image_size"] == [14, 17] and d["class_table"] == "ade20k150"
    assert [n["id"] for n in d["nodes"]] == list(range(graph.num_nodes))
    names = ade20k150().short_names
    assert all(n["name"] == names[n["label"]] for n in d["nodes"])
    assert set(d["nodes"][0]) == {"id", "label", "name", "area", "centroid", "bbox"}
    assert len(d["edges"]) == graph.num_edges // 2 and all(e["source"] < e["target"] for e in d["edges"])
    assert all(len(str(v)) <= 12 for n in d["nodes"] for v in n["centroid"])  # shortest float32 decimals
    back = SceneGraph.from_json(d)
    assert back.equal(graph)  # bit for bit
    path = graph.save_json(tmp_path / "g.json")
    assert SceneGraph.load_json(path).equal(graph)


def test_json_with_features_and_empty_graph():
    graph = _graph(features=True)
    assert SceneGraph.from_json(graph.to_json()).features is None  # features only when asked for
    back = SceneGraph.from_json(json.loads(json.dumps(graph.to_json(include_features=True))))
    assert back.equal(graph.__class__(**{**graph.__dict__, "features": graph.features.detach()}))
    empty = SceneGraphBuilder()(np.zeros((3, 3), np.int64))
    assert SceneGraph.from_json(empty.to_json()).equal(empty)


def test_json_other_class_table_is_embedded_and_checked():
    table = ClassTable(name="toy", names=("void", "sky", "tree"), palette=np.zeros((3, 3), np.uint8))
    graph = SceneGraphBuilder(class_table=table, ignore_label0=False)(np.array([[1, 2], [2, 0]]))
    d = graph.to_json()
    assert d["class_table"]["name"] == "toy"
    assert [n["name"] for n in d["nodes"]] == ["void", "sky", "tree"]
    assert SceneGraph.from_json(d).equal(graph)
    with pytest.raises(ValueError, match="'toy' but 'ade20k150' was given"):
        SceneGraph.from_json(d, class_table=ade20k150())
    d["nodes"][1]["name"] = "wall"
    with pytest.raises(ValueError, match="wrong class table"):
        SceneGraph.from_json(d)
    with pytest.raises(ValueError, match="unknown class table 'coco'"):
        SceneGraph.from_json({**graph.to_json(), "class_table": "coco"})


def test_json_rejects_malformed_edges():
    d = _graph().to_json()
    with pytest.raises(ValueError, match="listed twice"):
        SceneGraph.from_json({**d, "edges": d["edges"] + d["edges"][:1]})
    with pytest.raises(ValueError, match="two different node ids"):
        SceneGraph.from_json({**d, "edges": [{"source": 0, "target": 0, "boundary": 1.0}]})


def test_networkx_round_trip():
    graph = _graph(features=True)
    g = graph.to_networkx()
    assert g.number_of_nodes() == graph.num_nodes and g.number_of_edges() == graph.num_edges // 2
    node = g.nodes[0]
    assert node["name"] == ade20k150().short_name(node["label"]) and len(node["bbox"]) == 4
    a, b = graph.edge_index[:, 0].tolist()
    assert g.edges[a, b]["boundary"] == graph.boundary[0].item()
    back = SceneGraph.from_networkx(g)
    assert back.equal(graph.__class__(**{**graph.__dict__, "features": graph.features.detach()}))


def test_pyg_round_trip_and_batch():
    from torch_geometric.data import Batch

    graph = _graph()
    back = SceneGraph.from_pyg(graph.to_pyg(), graph.image_size, graph.class_table)
    assert back.equal(graph)
    empty = SceneGraphBuilder()(np.zeros((4, 4), np.int64))
    batch = Batch.from_data_list([graph.to_pyg(), empty.to_pyg(), graph.to_pyg()])
    assert batch.num_graphs == 3 and batch.boundary.shape == (2 * graph.num_edges,)
    assert torch.equal(batch.batch.bincount(), torch.tensor([graph.num_nodes, 0, graph.num_nodes]))


def test_tensor_dict_round_trip(tmp_path):
    graph = _graph()
    torch.save(graph.to_tensors(), tmp_path / "g.pt")
    back = SceneGraph.from_tensors(torch.load(tmp_path / "g.pt", weights_only=True), graph.class_table)
    assert back.equal(graph)
