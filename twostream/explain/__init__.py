"""Why this scene: which objects, which contacts, which pixels and which stream drove a prediction.

- :class:`SceneExplainer` / :func:`explain_batch`: the entry point, for a model and a batch of images with their
  scene graphs (:mod:`.explainer`);
- :class:`SceneExplanation`: one image's explanation and its JSON form (:mod:`.explanation`);
- :class:`ExplanationEvaluator`: explains every image of a split and checks the explanations against causes we
  know (the synthetic relation-only scenes), with the randomisation test and deletion fidelity (:mod:`.evaluation`);
- :func:`compute_stream_means` / :func:`record_stream_means`: the training-set stream means the stream contribution
  replaces a stream with (:mod:`.streams`).

The attributions come from the libraries of the ecosystem: Captum through ``torch_geometric.explain`` for nodes and
edges, pytorch-grad-cam for the image; this package is the wrapper that makes a graph-level two-stream model
explainable by them, plus the exact occlusion check and the bookkeeping. See docs/explanations.md.
"""

from twostream.explain.evaluation import ExplanationEvaluator
from twostream.explain.explainer import PARTS, SceneExplainer, explain_batch, resolve_scene
from twostream.explain.explanation import SceneExplanation
from twostream.explain.streams import compute_stream_means, record_stream_means

__all__ = ["PARTS", "ExplanationEvaluator", "SceneExplainer", "SceneExplanation", "compute_stream_means",
           "explain_batch", "record_stream_means", "resolve_scene"]
