"""The exportable graphs: tensor-only wrappers around the model, declared once, used everywhere.

Each graph is a ``GraphSpec`` (name, wrapper module, input/output names, dynamic axes,
example inputs). The exporter, the parity check, the onnxruntime and TensorRT backends
and even the torch backend all run these same wrappers, so "the graph" means one
function whatever executes it. Adding a graph (the tracker does) is one
``register_graph(GraphSpec(...))`` call.

Graphs of the detector path:
* ``image_encoder``: pixels [1,3,S,S] -> fpn_0 [1,C,4g,4g], fpn_1 [1,C,2g,2g], fpn_2 [1,C,g,g]
  (or [1,C,2g,2g] with ``ModelConfig.detr_level_scale`` 2), trunk [1,g*g,C_trunk] (the trunk
  tokens, for the memory tracker's own neck)
* ``text_encoder``: input_ids [K,L], attention_mask [K,L] (int64) -> text_embeds [K,L,C]
* ``detector``: fpn_0..2 of ONE image + text_embeds [K,L,C] + text_mask [K,L]
  -> pred_masks [K,Q,4g,4g], pred_boxes [K,Q,4], pred_logits [K,Q], presence_logits [K,1].
  The image features enter with batch 1 and are expanded to K inside the graph, so the
  host never copies them K times; K is the dynamic ``concepts`` axis.

Graphs of the memory tracker (``source="tracker"``: built from a ``TrackerModel``, not the
image model; static shapes, the example size is the number of tracks N, each with a full
steady-state memory, see ``modeling.tracker_export``):
* ``tracker_step``: feat, pos, s0, s1, memory, memory_tpos, pointers, pointer_offsets
  -> mask_logits, iou_scores, object_score_logits, object_pointers
* ``tracker_memory_encoder``: feat, mask_logits, object_score_logits -> memory_tokens
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy, inverse_sigmoid

from ..modeling.efficientsam3 import EfficientSam3Model

GRAPH_SOURCES = ("image", "tracker")


@dataclass(frozen=True)
class GraphSpec:
    """Everything needed to export, check and run one graph.

    ``source`` says which model ``build`` and ``example_inputs`` take: ``"image"`` an
    ``EfficientSam3Model``, ``"tracker"`` a ``TrackerModel``. The tracker is a separate module
    (its weights are not in the image checkpoint), so its graphs name it instead of hanging
    it off the image model; exporters pass whichever model the spec asks for.
    """

    name: str
    build: Callable[[Any], nn.Module]  # (model) -> wrapper module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: Callable[[Any, int], tuple[torch.Tensor, ...]]  # (model, K concepts | N tracks)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    description: str = ""
    source: str = "image"
    #: (model) -> input names, for a graph whose inputs depend on the model's config;
    #: None: always ``input_names``
    input_names_of: Callable[[Any], tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if self.source not in GRAPH_SOURCES:
            raise ValueError(f"GraphSpec.source must be one of {GRAPH_SOURCES}, got {self.source!r}")

    def inputs_for(self, model: Any) -> tuple[str, ...]:
        """This graph's input names for ``model`` (``input_names`` unless they depend on its config)."""
        return self.input_names_of(model) if self.input_names_of is not None else self.input_names

    @property
    def dynamic_inputs(self) -> dict[str, dict[int, str]]:
        return {k: v for k, v in self.dynamic_axes.items() if k in self.input_names}


GRAPHS: dict[str, GraphSpec] = {}


def register_graph(spec: GraphSpec) -> GraphSpec:
    """Declare a graph; the export command and the backends pick it up by name."""
    if spec.name in GRAPHS:
        raise ValueError(f"graph {spec.name!r} registered twice")
    GRAPHS[spec.name] = spec
    return spec


def get_graph(name: str) -> GraphSpec:
    try:
        return GRAPHS[name]
    except KeyError:
        raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}") from None


# The graphs one ConceptSegmenter frame needs, in execution order.
DETECTOR_GRAPHS = ("image_encoder", "text_encoder", "detector")
# The memory tracker's per-frame graphs (source="tracker"), in execution order.
TRACKER_GRAPHS = ("tracker_step", "tracker_memory_encoder")


# ---------------------------------------------------------------------------------- wrappers
class ImageEncoderGraph(nn.Module):
    """Trunk (+ student adapter), the three FPN levels the detector reads, and the trunk tokens.

    Cheaper than ``model.encode_image`` with identical results: the stride-28 level and
    the per-frame sine position encodings are not computed (the detector never reads the
    former; the latter depend only on the input size and live in the detector graph).
    The trunk tokens are returned too because the memory tracker runs its own neck on them:
    one trunk pass per frame serves both heads (an output of an intermediate the graph
    computes anyway costs no compute, only the buffer).
    """

    def __init__(self, model: EfficientSam3Model):
        super().__init__()
        vision = model.detector.vision_encoder
        self.trunk = vision.backbone
        self.patch_size = model.config.patch_size
        scales = list(model.config.fpn_level_scales)
        layers = list(vision.neck.fpn_layers)[:3]  # the fourth (0.5x) level is never read
        if [layer.scale_factor for layer in layers] != scales:
            raise ValueError(f"expected SAM3's neck with scale factors {scales} (and 0.5)")
        self.fpn_layers = nn.ModuleList(layers)
        # students with ModelConfig.high_res_features: the trunk's finer stages join the levels
        self.high_res_fusion = getattr(vision, "high_res_fusion", None)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        trunk = self.trunk(pixels)
        hidden = trunk.last_hidden_state  # [B, g*g, C_trunk]
        b = hidden.shape[0]
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        spatial = hidden.reshape(b, h, w, hidden.shape[-1]).permute(0, 3, 1, 2)
        levels = tuple(layer(spatial) for layer in self.fpn_layers)
        if self.high_res_fusion is not None:
            levels = self.high_res_fusion(levels, trunk.hidden_states)
        f0, f1, f2 = levels
        return f0, f1, f2, hidden


class TextEncoderGraph(nn.Module):
    """Token ids -> projected token features, exactly ``model.encode_tokens``."""

    def __init__(self, model: EfficientSam3Model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_tokens(input_ids, attention_mask)


class DetectorGraph(nn.Module):
    """SAM3's text-prompted detector for K concepts of one image, only what is returned.

    Follows ``Sam3Model.forward`` without geometry prompts, but scores and refines boxes of
    the last decoder layer only and skips the semantic-segmentation head (SAM3 computes
    both for every layer and drops them at inference). With ``ModelConfig.box_scoring`` the
    logits take the head's correction, as ``model.detect``'s do. ``test_runtime_graphs`` pins
    the equivalence to ``model.detect``.
    """

    def __init__(self, model: EfficientSam3Model):
        super().__init__()
        det = model.detector
        self.position_encoding = det.vision_encoder.neck.position_encoding
        self.detr_encoder = det.detr_encoder
        self.detr_decoder = det.detr_decoder
        self.dot_product_scoring = det.dot_product_scoring
        self.mask_decoder = det.mask_decoder
        self.box_scoring = model.box_scoring  # None: SAM3's scoring alone

    def forward(
        self,
        fpn_0: torch.Tensor,
        fpn_1: torch.Tensor,
        fpn_2: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        k = text_embeds.shape[0]
        text_embeds = text_embeds.to(fpn_2.dtype)
        mask = text_mask.bool()
        # Constant per input size: folded into the exported graph.
        pos_2 = self.position_encoding(fpn_2.shape, fpn_2.device, fpn_2.dtype)
        feats = [f.expand(k, -1, -1, -1) for f in (fpn_0, fpn_1, fpn_2)]
        enc = self.detr_encoder(
            vision_features=[feats[2]],
            text_features=text_embeds,
            vision_pos_embeds=[pos_2.expand(k, -1, -1, -1)],
            text_mask=mask,
        )
        dec = self.detr_decoder(
            vision_features=enc.last_hidden_state,
            text_features=enc.text_features,
            vision_pos_encoding=enc.pos_embeds_flattened,
            text_mask=mask,
            spatial_shapes=enc.spatial_shapes,
        )
        last = dec.intermediate_hidden_states[-1]  # [K, Q, C]
        offsets = self.detr_decoder.box_head(last)
        boxes = box_cxcywh_to_xyxy((inverse_sigmoid(dec.reference_boxes[-1]) + offsets).sigmoid())
        logits = self.dot_product_scoring(
            decoder_hidden_states=last[None], text_features=enc.text_features, text_mask=mask
        )[0].squeeze(-1)
        if self.box_scoring is not None:  # EfficientSam3Model.rescore
            logits = self.box_scoring(logits, boxes, fpn_0, text_embeds, mask)
        presence = dec.presence_logits[-1]
        masks = _instance_masks(self.mask_decoder, last, feats, enc.last_hidden_state, text_embeds, mask)
        return masks, boxes, logits, presence


def _instance_masks(
    mask_decoder: nn.Module,
    queries: torch.Tensor,
    feats: list[torch.Tensor],
    encoder_hidden: torch.Tensor,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
) -> torch.Tensor:
    """``Sam3MaskDecoder.forward`` minus the semantic head (whose output nobody reads)."""
    from transformers.masking_utils import create_bidirectional_mask

    normed = mask_decoder.prompt_cross_attn_norm(encoder_hidden)
    cross_mask = create_bidirectional_mask(
        config=mask_decoder.config,
        inputs_embeds=normed,
        encoder_hidden_states=prompt,
        attention_mask=prompt_mask,
    )
    attn, _ = mask_decoder.prompt_cross_attn(
        query=normed, key=prompt, value=prompt, attention_mask=cross_mask
    )
    encoder_hidden = encoder_hidden + attn
    pixel_embed = mask_decoder._embed_pixels(backbone_features=feats, encoder_hidden_states=encoder_hidden)
    instance = mask_decoder.instance_projection(pixel_embed)
    return torch.einsum("bqc,bchw->bqhw", mask_decoder.mask_embedder(queries), instance)


# ------------------------------------------------------------------------------ example inputs
def _param(model: EfficientSam3Model) -> torch.Tensor:
    return next(model.parameters())


def _pixels(model: EfficientSam3Model, k: int) -> tuple[torch.Tensor, ...]:
    s = model.config.image_size
    return (torch.rand(1, 3, s, s, device=_param(model).device) * 2 - 1,)


def _tokens(model: EfficientSam3Model, k: int) -> tuple[torch.Tensor, ...]:
    words = ["red mug", "person", "a small yellow rubber duck", "chair", "robot arm", "door handle"]
    phrases = [words[i % len(words)] for i in range(k)]
    ids, mask = model.tokenize(phrases)
    device = _param(model).device
    return ids.to(device), mask.to(device)


def _detector_inputs(model: EfficientSam3Model, k: int) -> tuple[torch.Tensor, ...]:
    c, p = model.config.fpn_dim, _param(model)
    fpn = tuple(torch.randn(1, c, n, n, device=p.device) for n in model.config.fpn_level_sides)
    ids, mask = _tokens(model, k)
    with torch.no_grad():
        embeds = model.encode_tokens(ids, mask)
    return (*fpn, embeds, mask)


register_graph(
    GraphSpec(
        name="image_encoder",
        build=ImageEncoderGraph,
        input_names=("pixels",),
        output_names=("fpn_0", "fpn_1", "fpn_2", "trunk"),
        example_inputs=_pixels,
        description="trunk + adapter + FPN neck, once per frame (+ trunk tokens for the memory tracker)",
    )
)
register_graph(
    GraphSpec(
        name="text_encoder",
        build=TextEncoderGraph,
        input_names=("input_ids", "attention_mask"),
        output_names=("text_embeds",),
        example_inputs=_tokens,
        dynamic_axes={
            "input_ids": {0: "concepts"},
            "attention_mask": {0: "concepts"},
            "text_embeds": {0: "concepts"},
        },
        description="concept phrases -> token features, once per concept change",
    )
)
register_graph(
    GraphSpec(
        name="detector",
        build=DetectorGraph,
        input_names=("fpn_0", "fpn_1", "fpn_2", "text_embeds", "text_mask"),
        output_names=("pred_masks", "pred_boxes", "pred_logits", "presence_logits"),
        example_inputs=_detector_inputs,
        dynamic_axes={
            "text_embeds": {0: "concepts"},
            "text_mask": {0: "concepts"},
            "pred_masks": {0: "concepts"},
            "pred_boxes": {0: "concepts"},
            "pred_logits": {0: "concepts"},
            "presence_logits": {0: "concepts"},
        },
        description="DETR encoder/decoder + presence + mask head, batched over concepts",
    )
)


# ------------------------------------------------------------------------------ tracker graphs
# modeling.tracker_export pulls in transformers' tracker/EdgeTAM modules: imported on use only,
# so the detector path does not pay for it.
def _tracker_step(tracker: Any) -> nn.Module:
    return tracker.step_graph


def _tracker_memory_encoder(tracker: Any) -> nn.Module:
    return tracker.memory_encoder_graph


def _tracker_step_inputs(tracker: Any, n: int) -> tuple[torch.Tensor, ...]:
    from ..modeling.tracker_export import steady_state_layout, step_example_inputs

    return step_example_inputs(tracker, steady_state_layout(tracker, n))


def _tracker_step_input_names(tracker: Any) -> tuple[str, ...]:
    from ..modeling.tracker_export import step_input_names

    return step_input_names(tracker)


def _tracker_memory_inputs(tracker: Any, n: int) -> tuple[torch.Tensor, ...]:
    from ..modeling.tracker_export import memory_example_inputs

    return memory_example_inputs(tracker, n)


register_graph(
    GraphSpec(
        name="tracker_step",
        build=_tracker_step,
        input_names=("feat", "pos", "s0", "s1", "memory", "memory_tpos", "pointers", "pointer_offsets"),
        output_names=("mask_logits", "iou_scores", "object_score_logits", "object_pointers"),
        example_inputs=_tracker_step_inputs,
        description="memory attention + mask decoder, N tracks with full memories (static shapes); "
        "+ prompt_masks for a tracker that prompts with each track's previous mask",
        source="tracker",
        input_names_of=_tracker_step_input_names,
    )
)
register_graph(
    GraphSpec(
        name="tracker_memory_encoder",
        build=_tracker_memory_encoder,
        input_names=("feat", "mask_logits", "object_score_logits"),
        output_names=("memory_tokens",),
        example_inputs=_tracker_memory_inputs,
        description="frame feature + predicted masks -> memory tokens of N tracks (static shapes)",
        source="tracker",
    )
)
