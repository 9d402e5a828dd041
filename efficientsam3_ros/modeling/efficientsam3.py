"""EfficientSAM3: SAM3's concept detector on a swappable image trunk and text encoder.

One class serves the teacher and every student; the config decides the trunk
(SAM3 ViT or a timm student with its adapter) and the text tower (SAM3 CLIP or
MobileCLIP). The heads are transformers' ``Sam3Model`` modules, used as they are.

The public API follows what can be cached on a robot:
``encode_image`` once per frame, ``encode_concepts`` once when the concepts change,
and ``detect`` per frame, batched over all active concepts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Sam3Config, Sam3Model
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput
from transformers.models.sam3_lite_text.configuration_sam3_lite_text import Sam3LiteTextTextConfig
from transformers.models.sam3_lite_text.modeling_sam3_lite_text import Sam3LiteTextTextModel

from .box_scoring import BoxScoring
from .config import ModelConfig, box_scoring_settings
from .student_encoder import HighResVisionModel, StudentImageEncoder
from .tokenizer import ConceptTokenizer

# Stand-ins built only so that transformers' Sam3Model constructs without allocating the
# modules we replace right after (a 446M ViT or a 354M CLIP for nothing).
_PLACEHOLDER_TEXT = {
    "hidden_size": 8,
    "intermediate_size": 8,
    "num_hidden_layers": 0,
    "num_attention_heads": 1,
}


@dataclass
class ConceptFeatures:
    """Cached text side of the detector: one row per concept."""

    embeds: torch.Tensor  # [K, L, D] projected token features
    mask: torch.Tensor  # [K, L] 1 for real tokens
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DetectorOutput:
    """Raw detector outputs for K concepts and Q queries, in model input coordinates."""

    pred_masks: torch.Tensor  # [K, Q, h, w] mask logits at 1/4 of the input size
    pred_boxes: torch.Tensor  # [K, Q, 4] normalised xyxy
    pred_logits: torch.Tensor  # [K, Q] per-query logits
    presence_logits: torch.Tensor  # [K, 1] "is the concept in the image at all"

    @property
    def scores(self) -> torch.Tensor:
        """SAM3's instance score: sigmoid(query logit) x sigmoid(presence logit)."""
        return self.pred_logits.sigmoid() * self.presence_logits.sigmoid()


class EfficientSam3Model(nn.Module):
    """SAM3 Promptable Concept Segmentation with a configurable trunk and text encoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.detector = Sam3Model(_to_sam3_config(config))
        initialise_weights(self.detector, config.init)
        if config.high_res_features and not config.is_student:
            raise ValueError(
                f"{config.name}: high_res_features needs a multi-stage student trunk; SAM3's ViT has one scale"
            )
        if config.high_res_features:
            vision_config = self.detector.vision_encoder.config
            self.detector.vision_encoder = HighResVisionModel(
                vision_config, StudentImageEncoder(config), config.fpn_dim
            )
            initialise_weights(self.detector.vision_encoder.neck, config.init)
        elif config.is_student:
            self.detector.vision_encoder.backbone = StudentImageEncoder(config)
        if config.text_encoder == "mobileclip":
            text_cfg = Sam3LiteTextTextConfig(max_position_embeddings=config.context_length, **config.text)
            self.detector.text_encoder = Sam3LiteTextTextModel(text_cfg)
            self.detector.text_projection = nn.Linear(text_cfg.hidden_size, config.fpn_dim)
        elif config.text_encoder != "clip":
            raise ValueError(f"unknown text encoder {config.text_encoder!r}; use 'clip' or 'mobileclip'")
        self.tokenizer = ConceptTokenizer(config.context_length)
        # built last, so that adding it leaves every other module's random start as it was
        self.box_scoring = (
            BoxScoring(config.fpn_dim, **box_scoring_settings(config.box_scoring))
            if config.box_scoring
            else None
        )

    # ----------------------------------------------------------------- image side
    @property
    def image_trunk(self) -> nn.Module:
        return self.detector.vision_encoder.backbone

    def encode_image(self, pixel_values: torch.Tensor) -> Sam3VisionEncoderOutput:
        """Trunk + FPN neck, once per frame. ``pixel_values``: [B, 3, S, S] normalised to [-1, 1]."""
        return self.detector.vision_encoder(pixel_values)

    def trunk_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The trunk feature the students are distilled on: [B, 1024, S/14, S/14]."""
        out = self.image_trunk(pixel_values)
        grid = (
            pixel_values.shape[-2] // self.config.patch_size,
            pixel_values.shape[-1] // self.config.patch_size,
        )
        return out.last_hidden_state.transpose(1, 2).reshape(pixel_values.shape[0], -1, *grid)

    # ------------------------------------------------------------------ text side
    def tokenize(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(phrases)

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> projected token features [K, L, D] (the text_encoder graph)."""
        out = self.detector.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out.pooler_output

    def encode_concepts(self, phrases: list[str]) -> ConceptFeatures:
        """Once per concept change: phrases -> cached text features."""
        device = next(self.parameters()).device
        input_ids, attention_mask = self.tokenize(phrases)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        embeds = self.encode_tokens(input_ids, attention_mask)
        return ConceptFeatures(
            embeds=embeds, mask=attention_mask, labels=[" ".join(p.split()) for p in phrases]
        )

    # -------------------------------------------------------------- detector side
    def detect(
        self,
        image_features: Sam3VisionEncoderOutput,
        concepts: ConceptFeatures,
        input_boxes: torch.Tensor | None = None,
        input_boxes_labels: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """Detector for all K concepts of one image in one batched call.

        ``input_boxes`` ([K, N, 4] normalised cxcywh) are optional visual exemplars per concept.
        """
        k = len(concepts)
        if image_features.fpn_hidden_states[0].shape[0] != 1:
            raise ValueError("detect() takes the features of one image; call it once per image")
        out = self.detector(
            vision_embeds=map_image_features(image_features, lambda f: f.expand(k, -1, -1, -1)),
            text_embeds=TextEmbeds(concepts.embeds),
            attention_mask=concepts.mask,
            input_boxes=input_boxes,
            input_boxes_labels=input_boxes_labels,
        )
        logits = self.rescore(
            out.pred_logits,
            out.pred_boxes,
            image_features.fpn_hidden_states[0],
            concepts.embeds,
            concepts.mask,
        )
        return _detector_output(out, logits)

    def rescore(self, logits: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The query logits [K, Q] with ``box_scoring``'s correction (unchanged without the head).

        ``inputs``: ``BoxScoring.forward``'s after the logits (boxes, the 4x FPN level, the prompts'
        tokens and mask). The one call every detector path makes (``detect``, ``forward``,
        stage-3 training; the exported graph holds the head itself).
        """
        return logits if self.box_scoring is None else self.box_scoring(logits, *inputs)

    def forward(self, pixel_values: torch.Tensor, phrases: list[str]) -> DetectorOutput:
        """One-shot path (no caching): one image ([1, 3, S, S]), K phrases, through transformers' Sam3Model."""
        device = pixel_values.device
        input_ids, attention_mask = self.tokenize(phrases)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        pixels = pixel_values.expand(len(phrases), -1, -1, -1)
        out = self.detector(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
        if self.box_scoring is None:
            return _detector_output(out)
        finest = self.encode_image(pixel_values[:1]).fpn_hidden_states[0]
        text = self.encode_tokens(input_ids, attention_mask)
        return _detector_output(
            out, self.rescore(out.pred_logits, out.pred_boxes, finest, text, attention_mask)
        )


def map_image_features(
    features: Sam3VisionEncoderOutput, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Sam3VisionEncoderOutput:
    """The FPN levels and their position encodings (what the detector reads) with ``fn`` applied.

    One image's features serve several prompts: ``detect`` expands them to one row per concept,
    stage-3 training gathers one row per datapoint (``f[index]``) from each distinct image.
    """
    return Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(fn(f) for f in features.fpn_hidden_states),
        fpn_position_encoding=tuple(fn(p) for p in features.fpn_position_encoding),
    )


class TextEmbeds:
    """Adapter: Sam3Model reads precomputed text features from ``.pooler_output``."""

    def __init__(self, pooler_output: torch.Tensor):
        self.pooler_output = pooler_output


def _detector_output(out, logits: torch.Tensor | None = None) -> DetectorOutput:
    """Sam3Model's outputs, the query logits replaced by ``logits`` (``rescore``'s) when given."""
    return DetectorOutput(
        pred_masks=out.pred_masks,
        pred_boxes=out.pred_boxes,
        pred_logits=out.pred_logits if logits is None else logits,
        presence_logits=out.presence_logits,
    )


def initialise_weights(root: nn.Module, scheme: str) -> None:
    """Re-draw the random weights under ``scheme`` (see ModelConfig.init); "sam3" keeps transformers' init."""
    if scheme == "sam3":
        return
    if scheme != "fan_in":
        raise ValueError(f"unknown init scheme {scheme!r}; use 'sam3' or 'fan_in'")
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            module.reset_parameters()


def _to_sam3_config(config: ModelConfig) -> Sam3Config:
    """Translate our config into transformers' Sam3Config (placeholders where we swap modules)."""
    vit = copy.deepcopy(config.vit)
    if config.is_student:
        # Only the neck reads the trunk config (hidden_size, patch_size); the trunk itself is swapped.
        vit.update(num_hidden_layers=0, intermediate_size=8, num_attention_heads=1, pretrain_image_size=14)
    vision = {
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            **vit,
        },
        "fpn_hidden_size": config.fpn_dim,
        # three levels the detector reads + one SAM3 drops unread (Sam3Model reads fpn[:-1])
        "scale_factors": [*config.fpn_level_scales, 0.5],
        "backbone_feature_sizes": [[side, side] for side in config.fpn_level_sides],
    }
    text = dict(config.text) if config.text_encoder == "clip" else dict(_PLACEHOLDER_TEXT)
    text.update(max_position_embeddings=config.context_length, hidden_act="gelu")
    text.pop("use_repmixer_blocks", None)
    text.pop("repmixer_kernel_size", None)
    det = config.detector
    return Sam3Config(
        vision_config=vision,
        text_config=text,
        geometry_encoder_config=dict(det["geometry_encoder"]),
        detr_encoder_config=dict(det["detr_encoder"]),
        detr_decoder_config=dict(det["detr_decoder"]),
        mask_decoder_config=dict(det["mask_decoder"]),
    )
