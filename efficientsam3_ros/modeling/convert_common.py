"""Key-mapping plans: which checkpoint tensor fills which model entry, and how.

A converter (original SAM3 / EfficientSAM3 names, HF names, our own names) only
names targets; this module turns those names into a checked plan. Planning needs
names and shapes only, so it runs on a meta-device model and on a checkpoint opened
lazily: a checkpoint that cannot fill the model is refused before a single weight
is copied, and ``efficientsam3 models verify`` can dry-run a file in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Transform:
    """A documented, shape-predictable change applied to a source tensor.

    kinds: ``copy``; ``transpose`` (2-D ``.T``: original ``x @ W`` projections become
    ``nn.Linear`` weights); ``strip_cls`` (drop position 0 of dim 1: SAM3's ViT pos_embed
    carries a cls slot that transformers' ViT does not); ``chunk`` (``index`` of ``parts``
    equal pieces along dim 0: fused qkv / in_proj split into q, k, v).
    """

    kind: str = "copy"
    index: int = 0
    parts: int = 1

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.kind == "copy":
            return tensor
        if self.kind == "transpose":
            return tensor.t()
        if self.kind == "strip_cls":
            return tensor[:, 1:]
        if self.kind == "chunk":
            return torch.chunk(tensor, self.parts, dim=0)[self.index]
        raise ValueError(f"unknown transform {self.kind!r}")

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input shape, without touching data."""
        if self.kind == "copy":
            return tuple(shape)
        if self.kind == "transpose":
            return tuple(reversed(shape)) if len(shape) == 2 else (-1,)
        if self.kind == "strip_cls":
            return (shape[0], shape[1] - 1, *shape[2:]) if len(shape) >= 2 else (-1,)
        if self.kind == "chunk":
            if not shape or shape[0] % self.parts:
                return (-1,)
            return (shape[0] // self.parts, *shape[1:])
        raise ValueError(f"unknown transform {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "chunk":
            return f"chunk {self.index + 1}/{self.parts} along dim 0"
        return self.kind


COPY = Transform()
TRANSPOSE = Transform("transpose")
STRIP_CLS = Transform("strip_cls")
QKV = tuple(Transform("chunk", i, 3) for i in range(3))


@dataclass(frozen=True)
class Target:
    """One model entry filled from one source key."""

    key: str
    transform: Transform = COPY


@dataclass(frozen=True)
class Unused:
    """A source key deliberately not loaded, with the reason a reader can check."""

    reason: str


# A key mapper answers, for one source key: the targets it fills, an Unused reason, or None (unknown).
KeyMapper = Callable[[str], "list[Target] | Unused | None"]


@dataclass
class ConversionPlan:
    """The checked outcome of mapping a checkpoint's keys onto a model's state_dict."""

    assignments: dict[str, tuple[str, Transform]] = field(
        default_factory=dict
    )  # target -> (source, transform)
    unused: dict[str, str] = field(default_factory=dict)  # source -> reason
    unexpected: list[str] = field(default_factory=list)  # source keys nobody claims
    missing: list[str] = field(default_factory=list)  # model entries left empty
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # target, first source, second source
    dropped_targets: list[tuple[str, str]] = field(default_factory=list)  # (target, source): not in the model
    wrong_dtype: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # target, source, model dtype, checkpoint dtype
    hint: str = ""  # what the file holds and which model loads it, when the keys tell (a wrong file)

    @property
    def ok(self) -> bool:
        return not (
            self.unexpected
            or self.missing
            or self.mismatched
            or self.duplicates
            or self.dropped_targets
            or self.wrong_dtype
        )

    def problems(self, limit: int = 20) -> str:
        """Every problem by name (the first ``limit`` of each kind), one per line."""
        lines: list[str] = []

        def section(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")

        section("missing model entries (nothing in the checkpoint fills them)", self.missing)
        section("unexpected checkpoint keys (no rule, or no such entry in this model)", self.unexpected)
        section(
            "mis-shaped",
            [f"{t} <- {s}: model {list(m)}, checkpoint gives {list(c)}" for t, s, m, c in self.mismatched],
        )
        section("filled twice", [f"{t} <- {a} and {b}" for t, a, b in self.duplicates])
        section("mapped to a name the model lacks", [f"{s} -> {t}" for t, s in self.dropped_targets])
        section(
            "wrong kind of dtype",
            [f"{t} <- {s}: model {m}, checkpoint gives {c}" for t, s, m, c in self.wrong_dtype],
        )
        if lines and self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


def plan_conversion(
    source_shapes: Mapping[str, tuple[int, ...]],
    target_shapes: Mapping[str, tuple[int, ...]],
    mapper: KeyMapper,
) -> ConversionPlan:
    """Map every source key, then check coverage and shapes against the model's entries."""
    plan = ConversionPlan()
    for source, shape in source_shapes.items():
        result = mapper(source)
        if result is None:
            plan.unexpected.append(source)
            continue
        if isinstance(result, Unused):
            plan.unused[source] = result.reason
            continue
        if not any(t.key in target_shapes for t in result):
            plan.unexpected.append(source)  # renamed, but to nothing this model has
            continue
        for target in result:
            if target.key not in target_shapes:
                plan.dropped_targets.append((target.key, source))
                continue
            if target.key in plan.assignments:
                plan.duplicates.append((target.key, plan.assignments[target.key][0], source))
                continue
            got = target.transform.shape(tuple(shape))
            want = tuple(target_shapes[target.key])
            if got != want:
                plan.mismatched.append((target.key, source, want, got))
                continue
            plan.assignments[target.key] = (source, target.transform)
    mismatched_targets = {t for t, *_ in plan.mismatched}
    plan.missing = [k for k in target_shapes if k not in plan.assignments and k not in mismatched_targets]
    return plan


def dtype_kind(dtype: str) -> str:
    """``bool`` | ``complex`` | ``float`` | ``int`` for a torch dtype name such as ``bfloat16``."""
    if dtype == "bool":
        return "bool"
    if dtype.startswith("complex"):
        return "complex"
    return "float" if dtype.startswith(("float", "bfloat")) else "int"


def check_dtype_kinds(
    plan: ConversionPlan, source_dtypes: Mapping[str, str], target_dtypes: Mapping[str, str]
) -> None:
    """Move assignments whose source holds another kind of number to ``plan.wrong_dtype``.

    Why: ``load_state_dict`` casts silently, so integers in a float weight (a wrong or damaged
    file) would load as if nothing were amiss. Another float width (a float16 / bfloat16
    checkpoint for float32 parameters) is a normal checkpoint and is cast. Sources without a
    known dtype are not checked.
    """
    for target, (source, _) in list(plan.assignments.items()):
        got, want = source_dtypes.get(source), target_dtypes.get(target)
        if got and want and dtype_kind(got) != dtype_kind(want):
            plan.wrong_dtype.append((target, source, want, got))
            del plan.assignments[target]


def materialise(plan: ConversionPlan, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply a plan: fetch each source tensor once (``get``) and transform it into the model's names."""
    out: dict[str, torch.Tensor] = {}
    cache: dict[str, torch.Tensor] = {}
    by_source: dict[str, int] = {}
    for source, _ in plan.assignments.values():
        by_source[source] = by_source.get(source, 0) + 1
    for target, (source, transform) in plan.assignments.items():
        tensor = cache.get(source)
        if tensor is None:
            tensor = get(source)
            if by_source[source] > 1:
                cache[source] = tensor  # a fused qkv feeds three targets; read it once
        out[target] = transform.apply(tensor)
    return out


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def first_match(mappers: Iterable[KeyMapper]) -> KeyMapper:
    """Chain mappers: the first one that recognises a key decides."""
    chain = list(mappers)

    def mapper(key: str) -> list[Target] | Unused | None:
        for m in chain:
            result = m(key)
            if result is not None:
                return result
        return None

    return mapper
