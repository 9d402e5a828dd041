"""Procedural concept world with exact ground truth (scenes, videos, dataset writers, bags).

Used by the tests, the trainers' smoke runs and the demo, where no real data can be
downloaded. See ``world`` for the scene model and ``writers`` for the file formats.
"""

from efficientsam3_ros.synthetic.world import (
    COLOURS,
    CONCEPTS,
    DEFAULT_CONCEPTS,
    SHAPES,
    Frame,
    GTObject,
    WorldConfig,
    concept_id,
    iter_video,
    render_scene,
    render_video,
)
from efficientsam3_ros.synthetic.writers import (
    KINDS,
    CocoBuilder,
    categories,
    sav_annotation,
    write_coco,
    write_dataset,
    write_rosbag,
    write_sa1b,
    write_saco,
    write_sav,
)

__all__ = [
    "COLOURS",
    "CONCEPTS",
    "DEFAULT_CONCEPTS",
    "KINDS",
    "SHAPES",
    "CocoBuilder",
    "Frame",
    "GTObject",
    "WorldConfig",
    "categories",
    "concept_id",
    "iter_video",
    "render_scene",
    "render_video",
    "sav_annotation",
    "write_coco",
    "write_dataset",
    "write_rosbag",
    "write_sa1b",
    "write_saco",
    "write_sav",
]
