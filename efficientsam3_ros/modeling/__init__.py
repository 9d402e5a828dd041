"""nn.Modules of EfficientSAM3: student trunks, SAM3 heads (transformers), text encoders.

Entry points: ``build_model(name)``, ``list_models()``, ``get_config(name)``.
"""

from .config import ModelConfig
from .efficientsam3 import ConceptFeatures, DetectorOutput, EfficientSam3Model
from .registry import STUDENTS, build_model, count_parameters, get_config, list_models, register_model

__all__ = [
    "STUDENTS",
    "ConceptFeatures",
    "DetectorOutput",
    "EfficientSam3Model",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "get_config",
    "list_models",
    "register_model",
]
