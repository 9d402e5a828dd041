"""EfficientSAM3 promptable concept segmentation and tracking for ROS 2 robots.

Layers (see DESIGN.md): ``modeling`` (nn.Modules) -> ``runtime`` (backends, export)
-> ``pipeline`` (ConceptSegmenter) -> ``ros`` / ``bag`` (front doors).
"""

__version__ = "0.1.0"
