"""Original SAM3 / EfficientSAM3 checkpoint names -> this package's module names.

The released ``.pt`` files (Meta's ``sam3.pt`` and the EfficientSAM3 ``stage1_all_converted``
files) hold ``{"model": state_dict}`` in the original SAM3 code's naming:
``detector.<image model key>`` and ``tracker.<instance predictor key>``. This package runs
transformers' ``Sam3Model`` under ``EfficientSam3Model.detector``, so a detector key is
renamed the way transformers' own SAM3 conversion script renames it (a regex table, the
same facts), plus three tensor changes: fused qkv / in_proj weights are split in three,
the ViT position embedding loses its cls slot, and the CLIP-style text projection
(stored for ``x @ W``) is transposed into an ``nn.Linear`` weight. Student trunks are
renamed by ``convert_backbones``; MobileCLIP text towers (SAM3-LiteText) by the table
below, following transformers' ``Sam3LiteText`` modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .config import ModelConfig
from .convert_backbones import RECOMPUTED_BUFFERS, native_to_timm, timm_to_features
from .convert_common import COPY, QKV, STRIP_CLS, TRANSPOSE, KeyMapper, Target, Unused

# fmt: off
# Original SAM3 image-model key (without "detector.") -> transformers Sam3Model key. Applied in order,
# each rule to the output of the previous ones, anchored at the start (as transformers' script does).
DETECTOR_RULES: list[tuple[str, str]] = [
    # ViT trunk (teacher)
    (r"^backbone\.vision_backbone\.trunk\.", "vision_encoder.backbone."),
    (r"^vision_encoder\.backbone\.pos_embed$", "vision_encoder.backbone.embeddings.position_embeddings"),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (r"^vision_encoder\.backbone\.ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.norm([12])\.", r"vision_encoder.backbone.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.attn\.qkv\.", r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.attn\.proj\.", r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.fc([12])\.", r"vision_encoder.backbone.layers.\1.mlp.fc\2."),
    # FPN neck
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_0\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_1\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.2."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_1x1\.", r"vision_encoder.neck.fpn_layers.\1.proj1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_3x3\.", r"vision_encoder.neck.fpn_layers.\1.proj2."),
    # SAM3 CLIP text encoder
    (r"^backbone\.language_backbone\.encoder\.token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (r"^backbone\.language_backbone\.encoder\.positional_embedding$", "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^backbone\.language_backbone\.encoder\.ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^backbone\.language_backbone\.encoder\.text_projection$", "text_encoder.text_projection.weight"),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.attn\.in_proj_", r"text_encoder.text_model.encoder.layers.\1.self_attn.in_proj_"),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"text_encoder.text_model.encoder.layers.\1.self_attn.out_proj."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.ln_([12])\.", r"text_encoder.text_model.encoder.layers.\1.layer_norm\2."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    # SAM3-LiteText: MobileCLIP projector onto d_model
    (r"^backbone\.language_backbone\.projector\.", "text_projection."),
    # Geometry encoder
    (r"^geometry_encoder\.encode\.(\d+)\.cross_attn_image\.out_proj\.", r"geometry_encoder.layers.\1.cross_attn.o_proj."),
    (r"^geometry_encoder\.encode\.(\d+)\.cross_attn_image\.", r"geometry_encoder.layers.\1.cross_attn."),
    (r"^geometry_encoder\.encode\.(\d+)\.self_attn\.out_proj\.", r"geometry_encoder.layers.\1.self_attn.o_proj."),
    (r"^geometry_encoder\.encode\.(\d+)\.self_attn\.", r"geometry_encoder.layers.\1.self_attn."),
    (r"^geometry_encoder\.encode\.(\d+)\.linear([12])\.", r"geometry_encoder.layers.\1.mlp.fc\2."),
    (r"^geometry_encoder\.encode\.(\d+)\.norm([123])\.", r"geometry_encoder.layers.\1.layer_norm\2."),
    (r"^geometry_encoder\.(label_embed|cls_embed|boxes_direct_project|boxes_pool_project|boxes_pos_enc_project|final_proj)\.", r"geometry_encoder.\1."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    # DETR encoder
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn_image\.out_proj\.", r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn_image\.", r"detr_encoder.layers.\1.cross_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"detr_encoder.layers.\1.self_attn.o_proj."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"detr_encoder.layers.\1.self_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear([12])\.", r"detr_encoder.layers.\1.mlp.fc\2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm([123])\.", r"detr_encoder.layers.\1.layer_norm\2."),
    # DETR decoder
    (r"^transformer\.decoder\.query_embed\.", "detr_decoder.query_embed."),
    (r"^transformer\.decoder\.reference_points\.", "detr_decoder.reference_points."),
    (r"^transformer\.decoder\.presence_token\.", "detr_decoder.presence_token."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.(\d)\.", "detr_decoder.presence_head.layer{+1}."),
    (r"^transformer\.decoder\.presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (r"^transformer\.decoder\.norm\.", "detr_decoder.output_layer_norm."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.(\d)\.", "detr_decoder.box_head.layer{+1}."),
    (r"^transformer\.decoder\.ref_point_head\.layers\.(\d)\.", "detr_decoder.ref_point_head.layer{+1}."),
    (r"^transformer\.decoder\.boxRPB_embed_x\.layers\.(\d)\.", "detr_decoder.box_rpb_embed_x.layer{+1}."),
    (r"^transformer\.decoder\.boxRPB_embed_y\.layers\.(\d)\.", "detr_decoder.box_rpb_embed_y.layer{+1}."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"detr_decoder.layers.\1.self_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.", r"detr_decoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.out_proj\.", r"detr_decoder.layers.\1.text_cross_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.out_proj\.", r"detr_decoder.layers.\1.vision_cross_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear([12])\.", r"detr_decoder.layers.\1.mlp.fc\2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    # Dot-product scoring
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.(\d)\.", "dot_product_scoring.text_mlp.layer{+1}."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    # Mask decoder
    (r"^segmentation_head\.pixel_decoder\.", "mask_decoder.pixel_decoder."),
    (r"^segmentation_head\.mask_predictor\.mask_embed\.layers\.", "mask_decoder.mask_embedder.layers."),
    (r"^segmentation_head\.mask_embed\.layers\.", "mask_decoder.mask_embedder.layers."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.out_proj\.", "mask_decoder.prompt_cross_attn.o_proj."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
]

# MobileCLIP text tower (SAM3-LiteText), original key after "backbone.language_backbone.encoder."
# -> transformers Sam3LiteTextTextModel key (under "text_encoder.").
MOBILECLIP_RULES: list[tuple[str, str]] = [
    (r"^embedding_layer\.", "embeddings.token_embedding."),
    (r"^positional_embedding\.pos_embed\.pos_embed$", "embeddings.position_embedding.position_embedding"),
    (r"^final_layer_norm\.", "final_layer_norm."),
    (r"^transformer\.(\d+)\.layer_scale$", r"layers.\1.layer_scale"),
    (r"^transformer\.(\d+)\.token_mixer\.layer_scale$", r"layers.\1.token_mixer.layer_scale"),
    (r"^transformer\.(\d+)\.token_mixer\.norm\.rbr_skip\.", r"layers.\1.token_mixer.reference_batchnorm."),
    (r"^transformer\.(\d+)\.token_mixer\.mixer\.rbr_skip\.", r"layers.\1.token_mixer.mixer.batchnorm_skip."),
    (r"^transformer\.(\d+)\.token_mixer\.mixer\.rbr_conv\.0\.conv\.", r"layers.\1.token_mixer.mixer.conv."),
    (r"^transformer\.(\d+)\.token_mixer\.mixer\.rbr_conv\.0\.bn\.", r"layers.\1.token_mixer.mixer.batchnorm_conv."),
    (r"^transformer\.(\d+)\.convffn\.conv\.conv\.", r"layers.\1.conv_feed_forward.depthwise_conv."),
    (r"^transformer\.(\d+)\.convffn\.conv\.bn\.", r"layers.\1.conv_feed_forward.depthwise_batchnorm."),
    (r"^transformer\.(\d+)\.convffn\.fc([12])\.", r"layers.\1.conv_feed_forward.mlp.fc\2."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.0\.", r"layers.\1.layer_norm1."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r"layers.\1.self_attn.qkv_proj."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r"layers.\1.self_attn.out_proj."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.0\.", r"layers.\1.layer_norm2."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.1\.", r"layers.\1.mlp.fc1."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.4\.", r"layers.\1.mlp.fc2."),
    (r"^projection_layer$", "projection.weight"),
]
# fmt: on

DETECTOR_PREFIX = "detector."
TRACKER_PREFIX = "tracker."
STUDENT_PREFIX = "backbone.vision_backbone.trunk.model."
MOBILECLIP_PREFIX = "backbone.language_backbone.encoder."
# A bare upstream Sam3Image.state_dict(): its image-model roots, and the instance predictor that
# released files store as ``tracker.*`` (facebookresearch/sam3 sam3/model_builder.py, _load_checkpoint).
IMAGE_MODEL_ROOTS = (
    "backbone.vision_backbone.",
    "backbone.language_backbone.",
    "transformer.",
    "geometry_encoder.",
    "segmentation_head.",
    "dot_prod_scoring.",
)
PREDICTOR_PREFIX = "inst_interactive_predictor.model."

# Keys the released checkpoints carry that EfficientSam3Model deliberately does not load, and why.
UNUSED_RULES: list[tuple[str, str]] = [
    (
        r"^backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis$",
        "RoPE table (complex64): transformers' Sam3ViTRotaryEmbedding recomputes it as a non-persistent buffer",
    ),
    (
        r"^geometry_encoder\.points_(direct|pool|pos_enc)_project\.",
        "point-prompt projections: transformers' Sam3GeometryEncoder encodes box prompts only",
    ),
    (
        r"^backbone\.vision_backbone\.sam2_convs\.",
        "SAM2-style FPN of the instance-interactive predictor: not part of the concept detector "
        "(modeling/instance.py is not wired into the loader yet)",
    ),
]
TRACKER_UNUSED = (
    "instance-interactive predictor / tracker (original inst_interactive_predictor.model.*): not part of "
    "the concept detector (modeling/tracker.py and modeling/instance.py are not wired into the loader yet)"
)


def _apply_rules(rules: list[tuple[str, str]], key: str) -> str | None:
    """Apply every matching rule in order; None when no rule matched (an unknown key)."""
    matched = False
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m is None:
            continue
        matched = True
        if "{+1}" in repl:  # the original MLPs count layers from 0, transformers' from 1
            key = repl.replace("{+1}", str(int(m.group(1)) + 1)) + key[m.end() :]
        else:
            key = m.expand(repl) + key[m.end() :]
    return key if matched else None


def _split_fused(key: str) -> list[Target]:
    """Fused projections -> q/k/v targets (chunk 1, 2, 3 along dim 0), else a plain copy."""
    for fused, fmt in ((".in_proj_weight", "{}_proj.weight"), (".in_proj_bias", "{}_proj.bias")):
        if key.endswith(fused):
            base = key[: -len(fused)] + "."
            return [Target(base + fmt.format(n), QKV[i]) for i, n in enumerate("qkv")]
    for fused in (".attention.qkv.", ".self_attn.qkv_proj."):
        if fused in key:
            head, tail = key.split(fused, 1)
            stem = fused.rsplit(".", 2)[0]  # ".attention" / ".self_attn"
            return [Target(f"{head}{stem}.{n}_proj.{tail}", QKV[i]) for i, n in enumerate("qkv")]
    return [Target(key, COPY)]


def _detector_targets(key: str, mobileclip: bool = False) -> list[Target] | None:
    """A detector key (no prefix) -> its targets under ``detector.`` (None when no rule renames it)."""
    if mobileclip and key.startswith(MOBILECLIP_PREFIX):
        rest = key[len(MOBILECLIP_PREFIX) :]
        new = _apply_rules(MOBILECLIP_RULES, rest)
        if new is None:
            return None
        if new == "projection.weight":  # MobileCLIP computes x @ projection_layer
            return [Target(DETECTOR_PREFIX + "text_encoder." + new, TRANSPOSE)]
        return [Target(DETECTOR_PREFIX + "text_encoder." + t.key, t.transform) for t in _split_fused(new)]
    new = _apply_rules(DETECTOR_RULES, key)
    if new is None:
        return None
    if new == "vision_encoder.backbone.embeddings.position_embeddings":
        return [Target(DETECTOR_PREFIX + new, STRIP_CLS)]
    if new == "text_encoder.text_projection.weight":
        return [Target(DETECTOR_PREFIX + new, TRANSPOSE)]
    return [Target(DETECTOR_PREFIX + t.key, t.transform) for t in _split_fused(new)]


def _unused_reason(key: str) -> str | None:
    for pattern, reason in UNUSED_RULES:
        if re.match(pattern, key):
            return reason
    return None


def released_key_mapper(
    config: ModelConfig, source_keys: Iterable[str], trunk_children: Iterable[str] = ()
) -> KeyMapper:
    """The mapper for an original-format checkpoint (``detector.*`` / ``tracker.*`` keys).

    ``trunk_children``: the child module names of the student's timm ``FeatureListNet``
    (``model.image_trunk.backbone``), needed to name features-only keys.
    """
    keys = list(source_keys)
    children = set(trunk_children)
    native_prefix = DETECTOR_PREFIX + STUDENT_PREFIX + "backbone.model."
    trunk_map: dict[str, str] = {}
    if config.is_student:
        native = [
            _normalise(k)[len(native_prefix) :] for k in keys if _normalise(k).startswith(native_prefix)
        ]
        for native_key, timm_key in native_to_timm(config.family, native).items():
            feature_key = timm_to_features(timm_key, children)
            if feature_key is not None:
                trunk_map[native_key] = "detector.vision_encoder.backbone.backbone." + feature_key

    def mapper(raw: str) -> list[Target] | Unused | None:
        key = _normalise(raw)
        if key.startswith(TRACKER_PREFIX):
            return Unused(TRACKER_UNUSED)
        if not key.startswith(DETECTOR_PREFIX):
            return None
        inner = key[len(DETECTOR_PREFIX) :]
        reason = _unused_reason(inner)
        if reason is not None:
            return Unused(reason)
        if inner.startswith(STUDENT_PREFIX):
            return _student_targets(inner[len(STUDENT_PREFIX) :], trunk_map)
        return _detector_targets(inner, mobileclip=config.text_encoder == "mobileclip")

    return mapper


def _student_targets(rest: str, trunk_map: dict[str, str]) -> list[Target] | Unused | None:
    """``head.{0,1,3}.*`` -> the adapter head; ``backbone.model.<native>`` -> the timm features model."""
    if rest.startswith("head."):
        return [Target("detector.vision_encoder.backbone." + rest)]
    if rest.startswith("backbone.model."):
        native = rest[len("backbone.model.") :]
        leaf = native.rsplit(".", 1)[-1]
        if leaf in RECOMPUTED_BUFFERS:
            return Unused(RECOMPUTED_BUFFERS[leaf])
        target = trunk_map.get(native)
        return [Target(target)] if target else None
    return None


def _normalise(key: str) -> str:
    """A key in the released naming: legacy ``student_trunk.`` fragments deleted, as the original loader does,
    and a bare upstream ``Sam3Image.state_dict()`` key given its ``detector.`` / ``tracker.`` prefix.

    Why the latter: upstream's ``_load_checkpoint`` takes a model's own state_dict too (its
    ``detector.`` strip is then a no-op), so that is how a model fine-tuned with the upstream
    code is naturally saved.
    """
    if "student_trunk." in key:
        key = key.replace("student_trunk.", "")
    if key.startswith(PREDICTOR_PREFIX):
        return TRACKER_PREFIX + key[len(PREDICTOR_PREFIX) :]
    if key.startswith(IMAGE_MODEL_ROOTS):
        return DETECTOR_PREFIX + key
    return key


# What a released file's trunk / text keys say it holds: (key prefix, family or tower, words for a person).
TRUNK_SIGNATURES: tuple[tuple[str, str, str], ...] = (
    (DETECTOR_PREFIX + "backbone.vision_backbone.trunk.blocks.", "sam3", "the SAM3 ViT (teacher) trunk"),
    (DETECTOR_PREFIX + STUDENT_PREFIX + "backbone.model.features.", "repvit", "a RepViT student trunk"),
    (DETECTOR_PREFIX + STUDENT_PREFIX + "backbone.model.patch_embed.", "tinyvit", "a TinyViT student trunk"),
    (
        DETECTOR_PREFIX + STUDENT_PREFIX + "backbone.model.input_stem.",
        "efficientvit",
        "an EfficientViT student trunk",
    ),
)
TEXT_SIGNATURES: tuple[tuple[str, str, str], ...] = (
    (DETECTOR_PREFIX + MOBILECLIP_PREFIX + "transformer.resblocks.", "clip", "SAM3's CLIP text encoder"),
    (
        DETECTOR_PREFIX + MOBILECLIP_PREFIX + "embedding_layer.",
        "mobileclip",
        "a MobileCLIP (SAM3-LiteText) text encoder",
    ),
)


def _signature(keys: list[str], table: tuple[tuple[str, str, str], ...]) -> tuple[str, str] | None:
    for prefix, kind, words in table:
        if any(k.startswith(prefix) for k in keys):
            return kind, words
    return None


def released_contents_hint(config: ModelConfig, source_keys: Iterable[str], trunk_problem: bool) -> str:
    """One line for a person whose released file does not fit: what the file holds, and which model loads it.

    Why: the mismatch listing names hundreds of keys, not the cause (a file of another trunk
    family, size or text tower than the model named). ``trunk_problem``: the plan found trunk
    entries missing or mis-shaped. Empty when the keys say nothing more useful.
    """
    from .registry import STUDENTS  # late: the registry builds models, this module only names keys

    keys = [_normalise(k) for k in source_keys]
    trunk, text = _signature(keys, TRUNK_SIGNATURES), _signature(keys, TEXT_SIGNATURES)
    own_trunk = next((w for _, kind, w in TRUNK_SIGNATURES if kind == config.family), config.family)
    own_text = next((w for _, kind, w in TEXT_SIGNATURES if kind == config.text_encoder), config.text_encoder)

    def names(family: str) -> str:
        if family == "sam3":
            return "--model sam3"
        sizes = ", ".join(n for n, spec in STUDENTS.items() if spec.family == family)
        return f"--model {sizes} (the size it was trained at)"

    if trunk is not None and trunk[0] != config.family:
        return f"the file holds {trunk[1]}, but {config.name} has {own_trunk}: load it with {names(trunk[0])}"
    if text is not None and text[0] != config.text_encoder:
        return (
            f"the file's text tower is {text[1]}, but {config.name} has {own_text}: use a model with the "
            "same text encoder and context length"
        )
    if trunk is not None and trunk_problem and config.family != "sam3":
        return f"the file holds {trunk[1]} of another size than {config.name}: try {names(trunk[0])}"
    return ""


def hf_key_mapper(prefix_map: Callable[[str], str] | None = None) -> KeyMapper:
    """The mapper for HF-format SAM3 / SAM3-LiteText weights: transformers' names, our ``detector.`` prefix.

    ``Sam3VideoModel`` files prefix the detector with ``detector_model.`` and carry the
    tracker as ``tracker_model.*`` / ``tracker_neck.*``.
    """

    def mapper(key: str) -> list[Target] | Unused | None:
        if prefix_map is not None:
            key = prefix_map(key)
        if key.startswith(("tracker_model.", "tracker_neck.")):
            return Unused(TRACKER_UNUSED)
        if key.startswith("detector_model."):
            key = key[len("detector_model.") :]
        if key.endswith("rotary_emb.rope_embeddings"):
            return Unused(UNUSED_RULES[0][1])
        return [Target(DETECTOR_PREFIX + key)]

    return mapper
