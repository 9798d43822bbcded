"""twostream: two-stream scene understanding (scene graphs from segmentation + a vision transformer, fused)."""

__version__ = "0.1.0"
