"""A procedural "concept world": coloured shapes named by noun phrases, with exact ground truth.

Why it exists: no real data or weights can be downloaded on the build machines, yet the
segmenter, the tracker, the trainers and the bag evaluator all need images whose answer is
known to the pixel. Here every concept is a noun phrase "<colour> <shape>" ("red circle"),
scenes mix target concepts with distractors of other concepts (same colour or same shape:
hard negatives), and videos add motion, rotation, scaling, occlusion and objects entering
and leaving the frame. Because the image is painted from the very label map the masks are
cut from, the ground truth is exact: a mask is the *visible* part of an object after
z-ordering, and the box is tight around that mask.

Everything is seeded: the same seed and config give byte-identical frames and ground truth.
Rendering is numpy + PIL ``ImageDraw`` only (a 320x240 frame takes a few milliseconds).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- vocabulary

#: Saturated base colours (RGB). Backgrounds are kept low-saturation so a colour word stays unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 135, 25),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")

#: Every concept of the world, colour-major. A concept's id is its index here; COCO category id = index + 1.
CONCEPTS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

#: The 8 concepts a default scene draws its target objects from; the other 28 serve as distractors.
DEFAULT_CONCEPTS: tuple[str, ...] = (
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple hexagon",
    "orange cross",
    "red square",
    "blue circle",
)


def concept_id(concept: str) -> int:
    """Index of a noun phrase in :data:`CONCEPTS` (raises ``ValueError`` for an unknown phrase)."""
    try:
        return CONCEPTS.index(concept)
    except ValueError:
        raise ValueError(f"unknown concept {concept!r}; known: {', '.join(CONCEPTS)}") from None


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices [K, 2] of a shape with circumradius 1 centred on the origin."""
    if shape == "circle":
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape in ("square", "triangle", "hexagon"):
        k = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
        t = np.linspace(0.0, 2 * np.pi, k, endpoint=False) + np.pi / k - np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = np.linspace(0.0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a = 0.32 / math.sqrt(
            1 + 0.32**2
        )  # half arm width, so that the arm tips' corners sit on the unit circle
        b = 1.0 / math.sqrt(1 + 0.32**2)
        return np.array(
            [
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
                (-a, -b),
            ]
        )
    raise ValueError(f"unknown shape {shape!r}")


_TEMPLATES: dict[str, np.ndarray] = {s: _unit_polygon(s) for s in SHAPES}
_COLOUR_TABLE = np.array([COLOURS[c.split(" ", 1)[0]] for c in CONCEPTS], dtype=np.float32)
_SHAPE_OF = [c.split(" ", 1)[1] for c in CONCEPTS]

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. Lengths are fractions of ``min(width, height)`` so they hold at any resolution."""

    width: int = 320
    height: int = 240
    #: concepts the target objects are drawn from (repeats allowed: several instances of one concept)
    concepts: tuple[str, ...] = DEFAULT_CONCEPTS
    #: distractor pool; ``None`` means every concept not in ``concepts``
    distractor_concepts: tuple[str, ...] | None = None
    #: inclusive range of target objects in the first frame
    num_objects: tuple[int, int] = (2, 4)
    #: inclusive range of distractor objects in the first frame
    num_distractors: tuple[int, int] = (1, 3)
    #: no object enters while this many are alive
    max_objects: int = 10
    #: circumradius range, fraction of min(width, height)
    scale_range: tuple[float, float] = (0.07, 0.17)
    #: mean speed, fraction of min(width, height) per frame
    speed: float = 0.012
    #: largest rotation speed, radians per frame
    rotation_speed: float = 0.06
    #: largest relative scale change per frame
    scale_speed: float = 0.01
    #: per frame: chance that a new object enters from an edge
    p_enter: float = 0.04
    #: per frame and object: chance that it stops bouncing and heads out of the frame
    p_leave: float = 0.015
    #: chance that an entering object is a distractor
    p_distractor: float = 0.35
    #: sensor noise, largest absolute per-channel offset (uniform), 0 for clean images
    noise: int = 3
    #: objects with fewer visible pixels are left out of the ground truth (they are still drawn)
    min_visible_area: int = 1

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image must be at least 16x16, got {self.width}x{self.height}")
        if not self.concepts:
            raise ValueError("concepts must not be empty")
        for c in (*self.concepts, *(self.distractor_concepts or ())):
            concept_id(c)
        for name in ("num_objects", "num_distractors", "scale_range"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if not self.scale_range[1] <= 1:  # a circumradius over the short side cannot spawn inside (or NaN)
            raise ValueError(f"scale_range must lie in [0, 1] (of the short side), got {self.scale_range}")
        if not 0 < self.max_objects < 255:
            raise ValueError("max_objects must be in [1, 254]")
        if not 0 <= self.noise <= 127:  # the per-pixel offsets are drawn as int8
            raise ValueError(f"noise must be in [0, 127], got {self.noise}")
        for name in ("p_enter", "p_leave", "p_distractor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    @property
    def distractor_pool(self) -> tuple[str, ...]:
        """Concepts distractors are drawn from (may be empty: then no distractors appear)."""
        if self.distractor_concepts is not None:
            return tuple(self.distractor_concepts)
        return tuple(c for c in CONCEPTS if c not in self.concepts)

    def with_size(self, width: int, height: int) -> WorldConfig:
        """Copy at another resolution (the scene statistics scale with it)."""
        return replace(self, width=width, height=height)


# --------------------------------------------------------------------------- ground truth


@dataclass
class GTObject:
    """Exact ground truth of one visible object in one frame."""

    track_id: int  #: stable for the object across a video, starts at 1, never reused
    concept: str  #: the noun phrase, an entry of CONCEPTS
    concept_id: int  #: index of ``concept`` in CONCEPTS (COCO category id = concept_id + 1)
    mask: np.ndarray  #: bool [H, W], the visible pixels only
    box: np.ndarray  #: float32 [4] xyxy in pixel-edge coordinates: x2 = last column + 1 (w = x2 - x1)
    area: int  #: visible pixels
    visibility: (
        float  #: visible area / whole (amodal, unclipped) area: < 1 when occluded or cut by the border
    )
    distractor: bool  #: drawn from the distractor pool rather than the scene's target concepts
    depth: int  #: drawing order; a larger depth is nearer the camera and hides smaller ones

    @property
    def bbox_xywh(self) -> list[float]:
        """COCO box [x, y, w, h], equal to pycocotools' ``toBbox`` of the mask's RLE."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return [x1, y1, x2 - x1, y2 - y1]

    def interior_point(self) -> tuple[float, float]:
        """A pixel centre inside the visible mask near its centroid: a valid point prompt even for a ring-like mask."""
        ys, xs = np.nonzero(self.mask)
        cy, cx = ys.mean(), xs.mean()
        i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        return float(xs[i]), float(ys[i])


@dataclass
class Frame:
    """One rendered image and its ground truth."""

    index: int  #: frame number in its video (0 for a single scene)
    image: np.ndarray  #: uint8 [H, W, 3] RGB
    objects: list[GTObject]  #: visible objects, back to front (ascending depth)
    track_map: np.ndarray = field(repr=False)  #: int32 [H, W], track id of the visible object, 0 = background

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def masks(self) -> np.ndarray:
        """bool [N, H, W] stack of the objects' masks (N may be 0)."""
        if not self.objects:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([o.mask for o in self.objects])

    def boxes(self) -> np.ndarray:
        """float32 [N, 4] xyxy boxes."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    def of_concept(self, concept: str) -> list[GTObject]:
        """The instances of one noun phrase: the answer a concept-segmenter should give for that prompt."""
        return [o for o in self.objects if o.concept == concept]


# --------------------------------------------------------------------------- simulation state


@dataclass
class _Body:
    """Mutable physical state of one object while a video runs."""

    track_id: int
    concept_id: int
    distractor: bool
    depth_key: float
    colour: np.ndarray  # float32 [3]
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    omega: float
    radius: float
    growth: float
    leaving: bool = False

    def polygon(self) -> np.ndarray:
        """Vertices [K, 2] in pixel coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, s], [-s, c]]) * self.radius
        return _TEMPLATES[_SHAPE_OF[self.concept_id]] @ rot + (self.x, self.y)


def _seed_rng(seed: int | Sequence[int]) -> np.random.Generator:
    """A numpy integer (``for seed in np.arange(n)``) is the same seed as the Python int."""
    if isinstance(seed, int | np.integer):
        return np.random.default_rng(int(seed))
    return np.random.default_rng(list(seed))


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled bicubically (cheap, deterministic)."""
    gh = max(2, round(cells * height / max(height, width)))
    gw = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured, low-saturation background (float32 [H, W, 3]) and a lighting field (float32 [H, W]).

    Low saturation keeps the colour words meaningful; the texture (blotches, stripes or
    checks, fine grain) keeps a model from segmenting "anything that is not flat".
    """
    hue = rng.random()
    base = (
        np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.03, 0.22), rng.uniform(0.35, 0.75)), np.float32) * 255
    )
    alt = np.array(
        colorsys.hsv_to_rgb(
            (hue + rng.uniform(0.2, 0.8)) % 1.0, rng.uniform(0.03, 0.2), rng.uniform(0.3, 0.8)
        ),
        np.float32,
    )
    alt *= 255
    coarse = _value_noise(rng, height, width, int(rng.integers(3, 7)))
    fine = _value_noise(rng, height, width, int(rng.integers(16, 40)))
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(8.0, 40.0)
    kind = int(rng.integers(3))
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy = np.arange(height, dtype=np.float32)[:, None]
    u = xx * np.float32(math.cos(theta)) + yy * np.float32(math.sin(theta))
    if kind == 0:  # stripes
        pattern = np.sin(u * np.float32(2 * np.pi / period)) * np.float32(0.5) + np.float32(0.5)
    elif kind == 1:  # checks
        v = yy * np.float32(math.cos(theta)) - xx * np.float32(math.sin(theta))
        pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:  # blotches
        pattern = (coarse > 0.1).astype(np.float32)
    mix = (pattern * np.float32(0.35))[..., None]
    light = coarse * np.float32(0.12) + fine * np.float32(0.04) + np.float32(1.0)
    shade = coarse * np.float32(0.18) + fine * np.float32(0.07) + np.float32(1.0)
    bg = np.empty(
        (height, width, 3), dtype=np.float32
    )  # in place: fresh temporaries cost more than the maths
    np.multiply(mix, alt - base, out=bg)
    bg += base
    bg *= shade[..., None]
    return bg.astype(np.float32, copy=False), light.astype(np.float32, copy=False)


class _World:
    """Owns the RNG, the bodies and the static background of one video."""

    def __init__(self, seed: int | Sequence[int], config: WorldConfig) -> None:
        self.cfg = config
        self.rng = _seed_rng(seed)
        h, w = config.height, config.width
        self.side = float(min(h, w))
        self.background, self.light = _background(self.rng, h, w)
        self.pool = [concept_id(c) for c in config.concepts]
        self.distractors = [concept_id(c) for c in config.distractor_pool]
        self.next_track_id = 1
        self.bodies: list[_Body] = []
        n_obj = int(self.rng.integers(config.num_objects[0], config.num_objects[1] + 1))
        n_dis = int(self.rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))
        n_dis = n_dis if self.distractors else 0
        flags = [False] * n_obj + [True] * n_dis
        for distractor in flags[: config.max_objects]:
            self.bodies.append(self._spawn(distractor, inside=True))

    # -- bodies -------------------------------------------------------------------------
    def _spawn(self, distractor: bool, inside: bool) -> _Body:
        cfg, rng = self.cfg, self.rng
        cid = int(rng.choice(self.distractors if distractor else self.pool))
        radius = float(rng.uniform(*cfg.scale_range)) * self.side
        speed = cfg.speed * self.side * float(rng.uniform(0.5, 1.5))
        if inside:
            x = float(rng.uniform(radius * 0.5, cfg.width - radius * 0.5))
            y = float(rng.uniform(radius * 0.5, cfg.height - radius * 0.5))
            heading = float(rng.uniform(0, 2 * np.pi))
        else:  # just outside a random edge, heading inwards within +-50 degrees of the normal
            edge = int(rng.integers(4))
            spread = float(rng.uniform(-0.87, 0.87))
            if edge == 0:
                x, y, normal = -radius, float(rng.uniform(0, cfg.height)), 0.0
            elif edge == 1:
                x, y, normal = cfg.width + radius, float(rng.uniform(0, cfg.height)), np.pi
            elif edge == 2:
                x, y, normal = float(rng.uniform(0, cfg.width)), -radius, np.pi / 2
            else:
                x, y, normal = float(rng.uniform(0, cfg.width)), cfg.height + radius, -np.pi / 2
            heading = normal + spread
            speed = max(speed, 0.6 * cfg.speed * self.side)
        jitter = rng.integers(-12, 13, size=3).astype(np.float32)
        body = _Body(
            track_id=self.next_track_id,
            concept_id=cid,
            distractor=distractor,
            depth_key=float(rng.random()),
            colour=np.clip(_COLOUR_TABLE[cid] + jitter, 0, 255),
            x=x,
            y=y,
            vx=speed * math.cos(heading),
            vy=speed * math.sin(heading),
            angle=float(rng.uniform(0, 2 * np.pi)),
            omega=float(rng.uniform(-1, 1)) * cfg.rotation_speed,
            radius=radius,
            growth=float(rng.uniform(-1, 1)) * cfg.scale_speed,
        )
        self.next_track_id += 1
        return body

    def step(self) -> None:
        """Advance one frame: move, spin, scale, bounce, leave, enter."""
        cfg, rng = self.cfg, self.rng
        lo, hi = (s * self.side for s in cfg.scale_range)
        w, h = cfg.width, cfg.height
        alive: list[_Body] = []
        for b in self.bodies:
            # draw every random number unconditionally, so a body's fate never shifts another's stream
            turn, leave_draw = rng.normal(0.0, 0.08), rng.random()
            c, s = math.cos(turn), math.sin(turn)
            b.vx, b.vy = c * b.vx - s * b.vy, s * b.vx + c * b.vy
            b.x += b.vx
            b.y += b.vy
            b.angle += b.omega
            b.radius *= math.exp(b.growth)
            if not lo <= b.radius <= hi:
                b.radius = min(max(b.radius, lo), hi)
                b.growth = -b.growth
            if leave_draw < cfg.p_leave:
                b.leaving = True
            if not b.leaving:  # bounce once the centre is half a radius past an edge and still heading out
                m = 0.5 * b.radius
                if (b.x < m and b.vx < 0) or (b.x > w - m and b.vx > 0):
                    b.vx = -b.vx
                if (b.y < m and b.vy < 0) or (b.y > h - m and b.vy > 0):
                    b.vy = -b.vy
            gone = b.x + b.radius < 0 or b.x - b.radius > w or b.y + b.radius < 0 or b.y - b.radius > h
            if not (gone and b.leaving):
                alive.append(b)
        self.bodies = alive
        enter_draw, distractor_draw = rng.random(), rng.random()
        if enter_draw < cfg.p_enter and len(self.bodies) < cfg.max_objects:
            distractor = distractor_draw < cfg.p_distractor and bool(self.distractors)
            self.bodies.append(self._spawn(distractor, inside=False))

    # -- rendering ----------------------------------------------------------------------
    def render(self, index: int) -> Frame:
        """Paint the current state and cut the exact ground truth from the same label map."""
        cfg, rng = self.cfg, self.rng
        h, w = cfg.height, cfg.width
        order = sorted(self.bodies, key=lambda b: b.depth_key)  # back to front
        slots = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(slots)
        polys = [b.polygon() for b in order]
        for k, poly in enumerate(polys, start=1):
            draw.polygon([tuple(p) for p in poly.tolist()], fill=k)
        slot_map = np.asarray(slots)

        table = np.zeros((len(order) + 1, 3), dtype=np.float32)
        for k, b in enumerate(order, start=1):
            table[k] = b.colour
        img = self.background.copy()
        fg = slot_map > 0
        img[fg] = table[slot_map[fg]] * self.light[fg][:, None]
        if cfg.noise > 0:
            img += rng.integers(-cfg.noise, cfg.noise + 1, size=img.shape, dtype=np.int8)
        np.clip(img, 0, 255, out=img)
        image = img.astype(np.uint8)

        ids = np.zeros(len(order) + 1, dtype=np.int32)
        ids[1:] = [b.track_id for b in order]
        track_map = ids[slot_map]

        objects: list[GTObject] = []
        for k, (b, poly) in enumerate(zip(order, polys), start=1):
            mask = slot_map == k
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                continue
            area = int(np.count_nonzero(mask[rows[0] : rows[-1] + 1]))
            if area < max(1, cfg.min_visible_area):
                continue
            cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
            box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
            objects.append(
                GTObject(
                    track_id=b.track_id,
                    concept=CONCEPTS[b.concept_id],
                    concept_id=b.concept_id,
                    mask=mask,
                    box=box,
                    area=area,
                    visibility=min(1.0, area / max(1, _polygon_area(poly))),
                    distractor=b.distractor,
                    depth=k,
                )
            )
        return Frame(index=index, image=image, objects=objects, track_map=track_map)


def _polygon_area(poly: np.ndarray) -> int:
    """Pixels PIL fills for the whole (unclipped, unoccluded) polygon: the amodal area."""
    x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 2
    img = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in (poly - (x0, y0)).tolist()], fill=1)
    return int(np.count_nonzero(np.asarray(img)))


# --------------------------------------------------------------------------- public entry points


def iter_video(
    seed: int | Sequence[int], num_frames: int, config: WorldConfig | None = None
) -> Iterator[Frame]:
    """Yield ``num_frames`` frames of one video lazily (for long videos and bags).

    ``seed`` may be an int or a sequence of ints (e.g. ``(dataset_seed, video_index)``).
    """
    world = _World(seed, config or WorldConfig())
    for t in range(num_frames):
        if t:
            world.step()
        yield world.render(t)


def render_video(
    seed: int | Sequence[int], num_frames: int, config: WorldConfig | None = None
) -> list[Frame]:
    """Render a whole video: objects keep their track id while they move, rotate, scale, occlude, enter and leave."""
    return list(iter_video(seed, num_frames, config))


def render_scene(seed: int | Sequence[int], config: WorldConfig | None = None) -> Frame:
    """Render one still scene (the first frame of the video with the same seed)."""
    return next(iter_video(seed, 1, config))
