"""nn.Modules of EfficientSAM3: student trunks, SAM3 heads (transformers), text encoders, the tracker.

Entry points: ``build_model(name)``, ``list_models()``, ``get_config(name)``; for video,
``build_tracker(model.config, memory="perceiver" | "dense")`` (a ``TrackerModel`` on the same
trunk feature, one bounded ``TrackMemory`` per track) and ``InstancePredictor`` (SAM1-style
point/box prompts on the tracker's heads).
"""

from .config import ModelConfig, OperatingPoint
from .efficientsam3 import ConceptFeatures, DetectorOutput, EfficientSam3Model
from .instance import InstancePredictor
from .memory import TrackMemory
from .registry import STUDENTS, build_model, count_parameters, get_config, list_models, register_model
from .tracker import TrackerModel, TrackerOutput, build_tracker
from .tracker_checkpoint import load_tracker
from .tracker_config import TrackerConfig

__all__ = [
    "STUDENTS",
    "ConceptFeatures",
    "DetectorOutput",
    "EfficientSam3Model",
    "InstancePredictor",
    "ModelConfig",
    "OperatingPoint",
    "TrackMemory",
    "TrackerConfig",
    "TrackerModel",
    "TrackerOutput",
    "build_model",
    "build_tracker",
    "load_tracker",
    "count_parameters",
    "get_config",
    "list_models",
    "register_model",
]
