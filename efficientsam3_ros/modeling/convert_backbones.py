"""Original RepViT / TinyViT / EfficientViT parameter names -> timm ``features_only`` names.

The released EfficientSAM3 checkpoints keep each student backbone in its authors'
own module layout (THU-MIG/RepViT, wkcn/TinyViT, mit-han-lab/efficientvit); this
package builds the same networks with timm. timm 1.0 ships a checkpoint filter only
for TinyViT, and that one expects timm's names already, so the renames are spelled
out here. Each rule is a pure rename (no tensor changes); the reference-manifest
tests check that the renamed key set equals timm's, entry for entry and shape for shape.

Two steps: native key -> timm model key (``native_to_timm``), then timm model key ->
``FeatureListNet`` key (``timm_to_features``: timm flattens ``stages.0`` into a child
called ``stages_0``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# ------------------------------------------------------------------------------ RepViT


def _repvit_block_kind(keys: list[str]) -> str:
    """A stride-2 block has a plain conv (``token_mixer.0.c``) and a pointwise conv (``token_mixer.2``)."""
    if any(".token_mixer.2." in k for k in keys):
        return "downsample"
    return "block"


def repvit_renames(native_keys: Iterable[str]) -> dict[str, str]:
    """Original RepViT keys (``features.<i>.*``) -> timm RepVit keys.

    The original is one flat list: ``features.0`` is the stem, then one block per entry;
    a stride-2 block (depthwise conv, SE slot, pointwise conv; then an MLP) opens each
    stage after the first. timm groups the same modules: the block *before* each
    stride-2 block becomes that stage's ``downsample.pre_block``; the stride-2 block's
    convs become ``spatial_downsample`` / ``channel_downsample`` and its MLP ``ffn``;
    the remaining blocks are ``stages.<s>.blocks.<j>`` with ``token_mixer`` / ``se`` /
    ``channel_mixer.conv1|conv2`` (the original ``token_mixer.0|1`` and ``channel_mixer.m.0|2``).
    """
    by_index: dict[int, list[str]] = {}
    for key in native_keys:
        m = re.match(r"features\.(\d+)\.", key)
        if m is None:
            continue
        by_index.setdefault(int(m.group(1)), []).append(key)
    indices = sorted(by_index)
    kinds = {i: ("stem" if i == 0 else _repvit_block_kind(by_index[i])) for i in indices}
    downsamples = [i for i in indices if kinds[i] == "downsample"]
    pre_blocks = {d - 1 for d in downsamples}

    # Assign (stage, role, local index) to every entry.
    place: dict[int, tuple[int, str, int]] = {}
    stage, local = 0, 0
    for i in indices:
        if kinds[i] == "stem":
            place[i] = (-1, "stem", 0)
        elif i in pre_blocks:
            stage, local = stage + 1, 0
            place[i] = (stage, "pre_block", 0)
        elif kinds[i] == "downsample":
            place[i] = (stage, "downsample", 0)
        else:
            place[i] = (stage, "block", local)
            local += 1

    out: dict[str, str] = {}
    for i, keys in by_index.items():
        stage, role, j = place[i]
        for key in keys:
            rest = key[len(f"features.{i}.") :]
            new = _repvit_rest(rest, stage, role, j)
            if new is not None:
                out[key] = new
    return out


_REPVIT_BLOCK = [
    (r"^token_mixer\.0\.", "token_mixer."),
    (r"^token_mixer\.1\.", "se."),
    (r"^channel_mixer\.m\.0\.", "channel_mixer.conv1."),
    (r"^channel_mixer\.m\.2\.", "channel_mixer.conv2."),
]
_REPVIT_DOWN = [
    (r"^token_mixer\.0\.", "spatial_downsample."),
    (r"^token_mixer\.2\.", "channel_downsample."),
    (r"^channel_mixer\.m\.0\.", "ffn.conv1."),
    (r"^channel_mixer\.m\.2\.", "ffn.conv2."),
]
_REPVIT_STEM = [(r"^0\.", "conv1."), (r"^2\.", "conv2.")]


def _sub_first(rules: list[tuple[str, str]], rest: str) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, rest):
            return re.sub(pattern, repl, rest, count=1)
    return None


def _repvit_rest(rest: str, stage: int, role: str, j: int) -> str | None:
    if role == "stem":
        new = _sub_first(_REPVIT_STEM, rest)
        return None if new is None else "stem." + new
    if role == "downsample":
        new = _sub_first(_REPVIT_DOWN, rest)
        return None if new is None else f"stages.{stage}.downsample.{new}"
    new = _sub_first(_REPVIT_BLOCK, rest)
    if new is None:
        return None
    prefix = f"stages.{stage}.downsample.pre_block." if role == "pre_block" else f"stages.{stage}.blocks.{j}."
    return prefix + new


# ----------------------------------------------------------------------------- TinyViT


def tinyvit_rename(key: str) -> str | None:
    """Original TinyViT -> timm TinyVit.

    ``layers.<i>`` -> ``stages.<i>``, except ``layers.<i>.downsample`` -> ``stages.<i+1>.downsample``
    (the original merges patches at the end of a layer, timm at the start of the next);
    ``patch_embed.seq.0|2`` -> ``patch_embed.conv1|conv2``; Conv2d_BN's conv ``c`` -> ``conv``.
    """
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)$", key)
    if m:
        key = f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    elif key.startswith("layers."):
        key = "stages." + key[len("layers.") :]
    elif key.startswith("patch_embed.seq."):
        m = re.match(r"patch_embed\.seq\.(\d+)\.(.*)$", key)
        if m is None or m.group(1) not in ("0", "2"):
            return None
        key = f"patch_embed.conv{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    else:
        return None
    return re.sub(r"\.c\.(weight|bias)$", r".conv.\1", key)


# ------------------------------------------------------------------------- EfficientViT


def efficientvit_rename(key: str) -> str | None:
    """Original EfficientViT (MIT) -> timm EfficientVit.

    ``input_stem.op_list.0`` -> ``stem.in_conv``; ``input_stem.op_list.<k>`` -> ``stem.res<k-1>``;
    ``stages.<s>.op_list.<j>`` -> ``stages.<s>.blocks.<j>``. Inner names are identical.
    """
    m = re.match(r"input_stem\.op_list\.(\d+)\.(.*)$", key)
    if m:
        k = int(m.group(1))
        return f"stem.in_conv.{m.group(2)}" if k == 0 else f"stem.res{k - 1}.{m.group(2)}"
    m = re.match(r"stages\.(\d+)\.op_list\.(\d+)\.(.*)$", key)
    if m:
        return f"stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}"
    return None


# ------------------------------------------------------------------------------ common

# Buffers the original code persists but timm recomputes (so they are not in timm's state_dict).
RECOMPUTED_BUFFERS = {
    "attention_bias_idxs": "TinyViT attention-bias index table: timm rebuilds it from the window size"
}


def native_to_timm(family: str, native_keys: Iterable[str]) -> dict[str, str]:
    """Native backbone key -> timm (full model) key, for every key a rule covers."""
    keys = list(native_keys)
    if family == "repvit":
        return repvit_renames(keys)
    rename = {"tinyvit": tinyvit_rename, "efficientvit": efficientvit_rename}.get(family)
    if rename is None:
        raise ValueError(f"no backbone key rules for family {family!r}")
    out = {}
    for key in keys:
        new = rename(key)
        if new is not None:
            out[key] = new
    return out


def timm_to_features(key: str, children: Mapping[str, object] | Iterable[str]) -> str | None:
    """timm model key -> ``FeatureListNet`` key: the shortest module prefix whose '_'-joined name is a child.

    ``stages.0.blocks.1.x`` -> ``stages_0.blocks.1.x``; ``stem.in_conv.conv.weight`` ->
    ``stem_in_conv.conv.weight`` (EfficientViT's stem is flattened too). None when the key
    lies in a module the features model dropped (e.g. a classifier head).
    """
    names = set(children)
    parts = key.split(".")
    for n in range(1, len(parts)):
        if "_".join(parts[:n]) in names:
            return "_".join(parts[:n]) + "." + ".".join(parts[n:])
    return None
