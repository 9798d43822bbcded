"""Drawing scene graphs: PNG panels (matplotlib) and a self-contained interactive HTML viewer."""

from twostream.viz.common import GraphView, graph_layout, node_id_map
from twostream.viz.explanation import cam_overlay, importance_colours
from twostream.viz.html import scene_graph_html, write_html
from twostream.viz.panel import draw_panel, overlay, save_panel

__all__ = ["GraphView", "cam_overlay", "draw_panel", "graph_layout", "importance_colours", "node_id_map", "overlay",
           "save_panel", "scene_graph_html", "write_html"]
