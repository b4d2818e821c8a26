"""The pocket world: procedural images of coloured shapes in several rendering styles.

Classes are colour x shape ("red circle"). Every image is drawn from a seed, so the same
(world, style, split, index) gives the same pixels on every machine. Styles shift the image
distribution the way the 11 real benchmarks differ from CLIP's web photos: a *pretraining* style
(``photo``) and downstream styles (sketch, noisy, dark, pixelated, blurry, cluttered, faded) that
the tiny CLIP sees only mildly during pretraining and in a stronger form downstream.

Two versions of the world exist (``World.version``; config ``pocket.world``; docs/pocket_world.md):

- ``v1`` (``pocket_v1``): 8 colours x 8 shapes on plain pale backgrounds, the world of the first
  shipped pocket CLIP. Its drawing code is frozen: every v1 image keeps its pixels.
- ``v2``: 12 colours x 12 shapes; backgrounds keep a contrast with the object (white and grey shapes
  stay visible) and carry a texture (plain, striped, dotted, checkered, wavy) that captions mention
  in pretraining only sometimes. Its options are the mechanisms that the literature names as causes
  of base-class overfitting: new classes that differ from base classes in kind
  (``label_order="disjoint"``: colours and shapes no base class has, and compositions that the v2
  pocket CLIP never saw in pretraining) and spurious cues among base classes (``spurious``: a
  background texture or a position tied to the class in the few-shot training images only).

A pocket dataset is written in the same on-disk form as a prepared real dataset:
``<root>/images/<style>/<split>/<label>_<index>.png`` plus ``split_zhou_<Name>.json`` holding
``{"train"|"val"|"test": [[relpath, label, classname], ...]}``, CoOp's split-file format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlprompt.io import atomic_write_text, require_space, space_errors

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 50),
    "cyan": (35, 200, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 125, 185),
    # extra colours for larger worlds (n_colours > 8)
    "brown": (125, 80, 35),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "diamond",
    "hexagon",
    "ring",
    # extra shapes for larger worlds (n_shapes > 8)
    "crescent",
    "arrow",
    "bar",
    "heart",
)

#: style -> (adjective used in captions and templates, CoOp-style hand-crafted template)
STYLES: dict[str, tuple[str, str]] = {
    "photo": ("", "a photo of a {}."),
    "sketch": ("sketch", "a sketch of a {}."),
    "noisy": ("noisy", "a noisy photo of a {}."),
    "dark": ("dark", "a dark photo of a {}."),
    "pixelated": ("pixelated", "a pixelated photo of a {}."),
    "blurry": ("blurry", "a blurry photo of a {}."),
    "cluttered": ("cluttered", "a cluttered photo of a {}."),
    "faded": ("faded", "a faded photo of a {}."),
}

#: v2 background textures ("plain" first); v2 pretraining captions name them sometimes
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "wavy")
#: v2 position cue: the object's centre moves towards one quadrant (x, y offsets in units of the image)
QUADRANTS: tuple[tuple[float, float], ...] = ((-1, -1), (1, -1), (-1, 1), (1, 1))
SPURIOUS_CUES = ("none", "texture", "position")
LABEL_ORDERS = ("alphabetical", "shuffled", "disjoint")

SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter, for anti-aliased edges
# Versions of the drawing code: a change that alters pixels bumps the world's number (and with it the
# datasets' folder key). FORMAT is v1's (frozen), FORMAT_V2 the v2 world's.
FORMAT = 2
FORMAT_V2 = 1


@dataclasses.dataclass(frozen=True)
class World:
    """Which classes exist, how they are numbered, and how their images are drawn.

    ``label_order`` numbers the classes, and CoCoOp's split makes the first half of the labels base
    classes and the rest new, so it also says how new classes differ from base classes:

    - ``"alphabetical"`` (v1's default) numbers the colour x shape grid by sorted class name, as the real
      benchmarks do (Dassl's labels are the indices of the sorted class folders). Names are
      "<colour> <shape>", so the base half holds the first colours and the new classes have colours
      never seen in few-shot training: new concepts, not new combinations of trained ones.
    - ``"shuffled"`` numbers the grid by a permutation drawn from ``seed``: base and new both mix
      every colour and shape.
    - ``"disjoint"`` (v2's default) keeps two blocks of the grid: base classes are the colours and
      shapes of even index (``COLOURS``, ``SHAPES`` order), new classes those of odd index, each block
      sorted by name. New classes share neither colour nor shape with any base class, and half of them
      (:func:`held_out_in_pretraining`) are compositions the v2 pocket CLIP never saw in pretraining.

    ``version`` is the drawing code (1: ``pocket_v1``, frozen; 2: textured, contrast-keeping
    backgrounds). ``spurious`` (v2) ties a cue to each base class in the *training* split only: the
    background texture (``"texture"``) or the quadrant the object sits in (``"position"``), shown with
    probability ``spurious_p`` (otherwise a random one, as in every val and test image and in the new
    classes' training images). Soft prompts fitted to few-shot training images can latch onto it;
    hand-crafted prompts never name it.
    """

    n_colours: int = 8
    n_shapes: int = 8
    image_size: int = 32
    seed: int = 0
    label_order: str = "alphabetical"
    version: int = 1
    spurious: str = "none"
    spurious_p: float = 1.0

    def __post_init__(self):
        if not 2 <= self.n_colours <= len(COLOURS):
            raise ValueError(f"n_colours must be in [2, {len(COLOURS)}], got {self.n_colours}")
        if not 2 <= self.n_shapes <= len(SHAPES):
            raise ValueError(f"n_shapes must be in [2, {len(SHAPES)}], got {self.n_shapes}")
        if self.label_order not in LABEL_ORDERS:
            raise ValueError(f"label_order must be one of {LABEL_ORDERS}, got {self.label_order!r}")
        if self.version not in (1, 2):
            raise ValueError(f"world version must be 1 or 2 (pocket.world: v1 or v2), got {self.version!r}")
        if self.spurious not in SPURIOUS_CUES:
            raise ValueError(f"spurious must be one of {SPURIOUS_CUES}, got {self.spurious!r}")
        if self.spurious != "none" and self.version < 2:
            raise ValueError(
                f"spurious cues ({self.spurious!r}) need the v2 world's drawing code: set "
                "pocket.world: v2, or spurious: none"
            )
        if not 0.0 <= self.spurious_p <= 1.0:
            raise ValueError(f"spurious_p must be in [0, 1], got {self.spurious_p}")

    @property
    def grid(self) -> list[tuple[str, str]]:
        """Every colour x shape pair of the world, colour-major in ``COLOURS``/``SHAPES`` order."""
        return [(c, s) for c in list(COLOURS)[: self.n_colours] for s in SHAPES[: self.n_shapes]]

    @property
    def classes(self) -> list[tuple[str, str]]:
        def by_name(pairs):
            return sorted(pairs, key=lambda cs: f"{cs[0]} {cs[1]}")

        if self.label_order == "alphabetical":
            return by_name(self.grid)
        if self.label_order == "disjoint":
            colours, shapes = list(COLOURS)[: self.n_colours], SHAPES[: self.n_shapes]
            block = [by_name((c, s) for c in colours[i::2] for s in shapes[i::2]) for i in (0, 1)]
            return block[0] + block[1]
        grid = self.grid
        order = np.random.default_rng(self.seed).permutation(len(grid))
        return [grid[i] for i in order]

    @property
    def classnames(self) -> list[str]:
        return [f"{c} {s}" for c, s in self.classes]

    @property
    def n_base(self) -> int:
        """Base classes are the first ceil(n / 2) labels (CoCoOp's split, ``splits.base_new_labels``)."""
        return math.ceil(len(self.classes) / 2)

    def nuisance(self, label: int, split: str, rng: np.random.Generator) -> tuple[str, int | None]:
        """(texture, quadrant) of one v2 image: random, or the base class's cue in its training images.

        Draws from ``rng`` (the image's own generator) before anything else is drawn. The cue of base
        label ``k``: texture ``TEXTURES[k % 5]``, quadrant ``k % 4``.
        """
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        quadrant = int(rng.integers(len(QUADRANTS))) if self.spurious == "position" else None
        if self.spurious != "none" and split == "train" and label < self.n_base and rng.random() < self.spurious_p:
            if self.spurious == "texture":
                texture = TEXTURES[label % len(TEXTURES)]
            else:
                quadrant = label % len(QUADRANTS)
        return texture, quadrant


def held_out_in_pretraining(colour: str, shape: str) -> bool:
    """Whether the v2 pocket CLIP's pretraining captions never show this composition.

    Half of the odd-colour x odd-shape block (the new classes of ``label_order="disjoint"``), in a
    checkerboard: 18 of the 144 compositions. Every colour and every shape word still appears in
    pretraining, with other partners.
    """
    ci, si = list(COLOURS).index(colour), SHAPES.index(shape)
    return ci % 2 == 1 and si % 2 == 1 and (ci // 2 + si // 2) % 2 == 0


WORLD_PRESETS: dict[str, dict] = {
    "v1": {"version": 1, "n_colours": 8, "n_shapes": 8, "label_order": "alphabetical"},
    "v2": {"version": 2, "n_colours": 12, "n_shapes": 12, "label_order": "disjoint"},
}


def world(name: str = "v1", **overrides) -> World:
    """The world named ``name`` (``v1``, ``v2``) with some fields overridden (``None`` keeps the preset's)."""
    if name not in WORLD_PRESETS:
        raise ValueError(f"unknown pocket world {name!r}; available: {sorted(WORLD_PRESETS)}")
    return World(**{**WORLD_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


def _shape_polygon(shape: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons in unit coordinates (centre 0, radius about 1); several for composite shapes."""

    def ngon(n, r=1.0, phase=0.0):
        t = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.sin(t), -r * np.cos(t)], 1)

    if shape == "circle":
        return [ngon(48)]
    if shape == "square":
        return [ngon(4, 1.15, np.pi / 4)]
    if shape == "triangle":
        return [ngon(3, 1.15) + [0, 0.2]]
    if shape == "star":
        outer, inner = ngon(5, 1.15), ngon(5, 0.45, np.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)]
    if shape == "cross":
        a, b = 0.33, 1.0
        return [
            np.array(
                [
                    [-a, -b],
                    [a, -b],
                    [a, -a],
                    [b, -a],
                    [b, a],
                    [a, a],
                    [a, b],
                    [-a, b],
                    [-a, a],
                    [-b, a],
                    [-b, -a],
                    [-a, -a],
                ]
            )
        ]
    if shape == "diamond":
        return [np.array([[0, -1.2], [0.65, 0], [0, 1.2], [-0.65, 0]])]
    if shape == "hexagon":
        return [ngon(6, 1.05, np.pi / 6)]
    if shape == "ring":
        return [ngon(48), ngon(48, 0.55)]  # second polygon is a hole
    if shape == "crescent":
        return [ngon(48), ngon(48, 0.85) + [0.45, -0.1]]
    if shape == "arrow":
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.75], [1.05, 0], [0.2, 0.75], [0.2, 0.3], [-1, 0.3]])]
    if shape == "bar":
        return [np.array([[-1.1, -0.35], [1.1, -0.35], [1.1, 0.35], [-1.1, 0.35]])]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 64)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [np.stack([x, -y], 1) / 15.0]
    raise ValueError(f"unknown shape {shape!r}; available: {SHAPES}")


def _jitter(colour: Sequence[int], rng: np.random.Generator, amount: int = 18) -> tuple:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A pale, desaturated background with a gentle gradient (never a saturated class colour)."""
    base = rng.uniform(150, 245)
    tint = rng.uniform(-12, 12, size=3)
    grad = rng.uniform(-25, 25, size=2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img = base + tint[None, None, :] + (grad[0] * xx + grad[1] * yy)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    colour,
    bg_colour,
    centre,
    radius,
    angle,
    rng,
    outline_width: int | None = None,
    silhouette: ImageDraw.ImageDraw | None = None,
):
    """Draw the shape; ``silhouette`` (an "L" image's draw, optional) gets the object's filled outline (255 on the
    object, holes 0), whatever the style draws, without touching ``rng`` or the image."""
    polys = _shape_polygon(shape, rng)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for i, poly in enumerate(polys):
        pts = (poly @ rot.T) * radius + centre
        pts = [tuple(p) for p in pts]
        hole = i > 0
        if silhouette is not None:
            silhouette.polygon(pts, fill=0 if hole else 255)
        if outline_width is None:
            draw.polygon(pts, fill=bg_colour if hole else colour)
        else:
            draw.line(pts + [pts[0]], fill=colour, width=outline_width, joint="curve")


def render(
    colour: str,
    shape: str,
    style: str,
    rng: np.random.Generator,
    size: int = 32,
    strength: float = 1.0,
    *,
    version: int = 1,
    texture: str = "plain",
    quadrant: int | None = None,
    silhouette: list[np.ndarray] | None = None,
) -> Image.Image:
    """Draw one image of a ``colour shape`` in ``style``; ``strength`` scales the style's shift.

    ``version`` 2 draws the v2 world: a background that keeps a contrast with the object, with
    ``texture``, and the object near ``quadrant`` (an index of ``QUADRANTS``) when one is given.
    ``silhouette`` (a list, optional) gets the object's mask appended: a (4·size, 4·size) float array, 1 on the
    object, at the drawing's supersampled resolution (the pixels and the draws are the same with or without it).
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; available: {sorted(STYLES)}")
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0) if silhouette is not None else None
    outline = ImageDraw.Draw(mask) if mask is not None else None
    if version == 2:
        img = _render_v2(colour, shape, style, rng, size, strength, texture, quadrant, outline)
    elif version != 1 or texture != "plain" or quadrant is not None:
        raise ValueError("textures and quadrants are v2 drawing (version=2); v1 draws plain, centred images")
    else:
        img = _render_v1(colour, shape, style, rng, size, strength, outline)
    if silhouette is not None and mask is not None:
        silhouette.append(np.asarray(mask, dtype=np.float32) / 255.0)
    return img


def _render_v1(colour, shape, style, rng, size, strength, outline) -> Image.Image:
    big = size * SUPERSAMPLE
    rgb = _jitter(COLOURS[colour], rng)
    radius = big * rng.uniform(0.26, 0.38)
    centre = big / 2 + rng.uniform(-0.12, 0.12, size=2) * big
    angle = rng.uniform(-0.35, 0.35)
    if style == "sketch":
        img = Image.new("RGB", (big, big), _jitter((240, 238, 230), rng, 8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 6)):  # stray pencil strokes
            p = rng.uniform(0, big, size=4)
            draw.line(list(p), fill=_jitter((150, 150, 150), rng, 30), width=SUPERSAMPLE)
        width = int(SUPERSAMPLE * rng.uniform(1.2, 2.2))
        _draw_shape(draw, shape, rgb, None, centre, radius, angle, rng, outline_width=width, silhouette=outline)
    else:
        img = _background(rng, big)
        draw = ImageDraw.Draw(img)
        bg = tuple(int(v) for v in np.asarray(img)[int(centre[1]), int(centre[0])])
        if style == "cluttered":
            _draw_distractors(draw, rng, big, strength)
        _draw_shape(draw, shape, rgb, bg, centre, radius, angle, rng, silhouette=outline)
    img = img.resize((size, size), Image.Resampling.BOX)
    return _apply_style(img, style, rng, strength)


def _draw_distractors(draw, rng: np.random.Generator, big: int, strength: float) -> None:
    """The cluttered style's small distractor blobs of random colours (both worlds draw them alike)."""
    n = int(round(rng.integers(3, 7) * strength))
    for _ in range(n):
        c = _jitter(list(COLOURS.values())[rng.integers(0, len(COLOURS))], rng)
        r = big * rng.uniform(0.04, 0.09)
        x, y = rng.uniform(0, big, size=2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c)


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _texture_mask(texture: str, rng: np.random.Generator, big: int) -> np.ndarray:
    """A (big, big) 0/1 pattern of ``texture`` with a random phase; periods of 5-8 output pixels."""
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    period = big / rng.uniform(4.5, 6.0)
    px, py = rng.uniform(0, period, size=2)
    if texture == "plain":
        return np.zeros((big, big), np.float32)
    if texture == "striped":  # diagonal stripes
        return (((xx + yy + px) % period) < period / 2).astype(np.float32)
    if texture == "dotted":
        dx = (xx + px) % period - period / 2
        dy = (yy + py) % period - period / 2
        return (dx**2 + dy**2 < (period * 0.28) ** 2).astype(np.float32)
    if texture == "checkered":
        return ((np.floor((xx + px) / period) + np.floor((yy + py) / period)) % 2).astype(np.float32)
    if texture == "wavy":  # horizontal waves
        wave = yy + 0.3 * period * np.sin(2 * np.pi * (xx + px) / period)
        return (((wave + py) % period) < period * 0.4).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}; available: {TEXTURES}")


def _background_v2(rng: np.random.Generator, size: int, object_luminance: float, texture: str) -> Image.Image:
    """v1's pale gradient, with a brightness at least 55 levels from the object's and a texture.

    The brightness is drawn from [60, 245] until it is far enough from the object's luminance, so
    white, grey and black shapes stay visible; the texture is a shade 30 levels lighter or darker.
    """
    base = rng.uniform(60, 245)
    while abs(base - object_luminance) < 55:
        base = rng.uniform(60, 245)
    tint = rng.uniform(-12, 12, size=3)
    grad = rng.uniform(-25, 25, size=2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img = base + tint[None, None, :] + (grad[0] * xx + grad[1] * yy)[..., None]
    shade = -30.0 if base > 150 else 30.0
    img = img + shade * _texture_mask(texture, rng, size)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _render_v2(
    colour: str,
    shape: str,
    style: str,
    rng: np.random.Generator,
    size: int,
    strength: float,
    texture: str,
    quadrant: int | None,
    outline: ImageDraw.ImageDraw | None = None,
) -> Image.Image:
    big = size * SUPERSAMPLE
    rgb = _jitter(COLOURS[colour], rng)
    radius = big * rng.uniform(0.26, 0.38)
    if quadrant is None:
        centre = big / 2 + rng.uniform(-0.12, 0.12, size=2) * big
    else:  # near one quadrant, slightly smaller so that the shape stays in the picture
        radius *= 0.8
        centre = big / 2 + (0.14 * np.asarray(QUADRANTS[quadrant]) + rng.uniform(-0.04, 0.04, size=2)) * big
    angle = rng.uniform(-0.35, 0.35)
    if style == "sketch":  # paper with a pencil texture, stray strokes, the outline in colour
        paper = np.asarray(_jitter((240, 238, 230), rng, 8), np.float32)
        pencil = paper - 40.0 * _texture_mask(texture, rng, big)[..., None]
        img = Image.fromarray(np.broadcast_to(pencil, (big, big, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 6)):
            p = rng.uniform(0, big, size=4)
            draw.line(list(p), fill=_jitter((150, 150, 150), rng, 30), width=SUPERSAMPLE)
        width = int(SUPERSAMPLE * rng.uniform(1.2, 2.2))
        _draw_shape(draw, shape, rgb, None, centre, radius, angle, rng, outline_width=width, silhouette=outline)
    else:
        img = _background_v2(rng, big, _luminance(rgb), texture)
        draw = ImageDraw.Draw(img)
        cy, cx = np.clip(centre.astype(int), 0, big - 1)[::-1]
        bg = tuple(int(v) for v in np.asarray(img)[cy, cx])
        if style == "cluttered":
            _draw_distractors(draw, rng, big, strength)
        _draw_shape(draw, shape, rgb, bg, centre, radius, angle, rng, silhouette=outline)
    img = img.resize((size, size), Image.Resampling.BOX)
    return _apply_style(img, style, rng, strength)


def _apply_style(img: Image.Image, style: str, rng: np.random.Generator, strength: float):
    if style == "blurry":
        img = img.filter(ImageFilter.GaussianBlur(radius=1.4 * strength))
    if style == "pixelated":
        cells = max(4, int(round(img.size[0] / (4 * strength))))
        img = img.resize((cells, cells), Image.Resampling.BOX).resize(img.size, Image.Resampling.NEAREST)
    x = np.asarray(img, dtype=np.float32) / 255.0
    if style == "noisy":
        x = x + rng.normal(0, 0.22 * strength, size=x.shape)
    elif style == "dark":
        x = x * (1 - 0.72 * strength) + rng.normal(0, 0.025, size=x.shape)
    elif style == "faded":
        grey = x.mean(axis=2, keepdims=True)
        x = 0.55 + (x * (1 - 0.6 * strength) + grey * 0.6 * strength - 0.55) * (1 - 0.5 * strength)
    else:
        x = x + rng.normal(0, 0.015, size=x.shape)
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded from a tuple of keys (stable across processes, unlike ``hash``)."""
    words = [
        k if isinstance(k, int) else int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "little") for k in keys
    ]
    return np.random.default_rng(np.random.SeedSequence(words))


def sample_batch(world: World, styles: Sequence[str], n: int, seed: int, strength: float = 0.5):
    """``n`` random (image uint8 HxWx3, label, style) triples for pretraining."""
    rng = _rng(world.seed, "pretrain", seed)
    classes = world.classes
    out = []
    for _ in range(n):
        label = int(rng.integers(len(classes)))
        style = styles[int(rng.integers(len(styles)))]
        c, s = classes[label]
        out.append((np.asarray(render(c, s, style, rng, world.image_size, strength)), label, style))
    return out


@dataclasses.dataclass(frozen=True)
class PocketDataset:
    """One downstream pocket dataset: one style at full strength."""

    name: str
    style: str
    per_class: dict  # split -> images per class

    def template(self) -> str:
        return STYLES[self.style][1]


def png_bytes_bound(image_size: int, block: int = 4096) -> int:
    """An upper bound of the disk space one image takes: its raw RGB bytes and PNG's overhead, in whole filesystem
    blocks (a small file takes at least one)."""
    raw = image_size * image_size * 3 + 1024
    return -(-raw // block) * block


def generate(dataset: PocketDataset, world: World, root: Path, strength: float = 1.0, progress: bool = True) -> Path:
    """Write the dataset's images under ``root`` and its split file; return the split file path.

    Images live in one folder per class (``images/<split>/<colour>_<shape>/<i>.png``, like the real
    datasets' class folders) and every pixel depends only on (world seed, style, split, class name,
    index), never on label order (except, in a v2 world with spurious cues, whether a training image's
    class is a base class and which cue its label gets). Idempotent: existing images are kept when
    ``pocket.json`` says they were drawn with the same settings (otherwise they are all redrawn), and the
    split file is written last and atomically, so its presence marks a complete dataset.
    """
    import shutil

    from tqdm import tqdm

    root = Path(root)
    classes = world.classes
    manifest = {
        "style": dataset.style,
        "strength": strength,
        "seed": world.seed,
        "image_size": world.image_size,
        "format": FORMAT,
    }
    if world.version > 1:  # v2 pixels of base-class training images depend on the cue, hence on the labels
        manifest.update(
            format=FORMAT_V2,
            version=world.version,
            spurious=world.spurious,
            spurious_p=world.spurious_p,
            label_order=world.label_order,
            n_colours=world.n_colours,
            n_shapes=world.n_shapes,
        )
    manifest_path = root / "pocket.json"
    if (root / "images").exists() and (not manifest_path.exists() or json.loads(manifest_path.read_text()) != manifest):
        shutil.rmtree(root / "images")  # drawn with other settings: redraw rather than mix
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_path, json.dumps(manifest, sort_keys=True))
    split: dict[str, list] = {}
    total = sum(dataset.per_class.values()) * len(classes)
    drawn = sum(1 for _ in (root / "images").rglob("*.png")) if (root / "images").exists() else 0
    require_space(root / "images", (total - drawn) * png_bytes_bound(world.image_size))
    bar = tqdm(total=total, desc=f"generate {dataset.name}", disable=not progress, unit="img")
    for split_name, n in dataset.per_class.items():
        rows = []
        for label, (c, s) in enumerate(classes):
            folder = root / "images" / split_name / f"{c}_{s}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{i:03d}.png"
                if not path.exists():
                    img = draw_image(world, dataset.style, split_name, label, i, strength)
                    tmp = path.with_suffix(".tmp.png")
                    with space_errors(path, png_bytes_bound(world.image_size)):
                        img.save(tmp)
                    tmp.replace(path)
                rows.append([str(path.relative_to(root)), label, f"{c} {s}"])
                bar.update()
        split[split_name] = rows
    bar.close()
    out = root / f"split_zhou_{dataset.name}.json"
    atomic_write_text(out, json.dumps(split, indent=1))
    return out


def draw_image(
    world: World,
    style: str,
    split: str,
    label: int,
    index: int,
    strength: float = 1.0,
    silhouette: list[np.ndarray] | None = None,
) -> Image.Image:
    """Image ``index`` of class ``label`` in ``split`` of a ``style`` dataset, as :func:`generate` writes it (from its
    own generator, seeded by world seed, style, split, class and index); ``silhouette`` as :func:`render`'s."""
    c, s = world.classes[label]
    rng = _rng(world.seed, style, split, c, s, index)
    if world.version == 1:
        return render(c, s, style, rng, world.image_size, strength, silhouette=silhouette)
    texture, quadrant = world.nuisance(label, split, rng)
    return render(
        c,
        s,
        style,
        rng,
        world.image_size,
        strength,
        version=world.version,
        texture=texture,
        quadrant=quadrant,
        silhouette=silhouette,
    )


def object_mask(root: Path, world: World, relpath: str, label: int) -> np.ndarray:
    """The silhouette of the object in the generated image ``relpath`` (``images/<split>/<colour>_<shape>/<i>.png``
    under ``root``, of class ``label``): a (4·size, 4·size) float array, 1 on the object (:func:`render`'s
    ``silhouette``), from the image's rendering record replayed with the style and strength of ``root/pocket.json``."""
    manifest = json.loads((Path(root) / "pocket.json").read_text())
    parts = Path(relpath).parts
    if len(parts) < 4 or parts[-4] != "images" or f"{world.classes[label][0]}_{world.classes[label][1]}" != parts[-2]:
        raise ValueError(f"{relpath} is not an image of class {label} of a generated pocket dataset")
    silhouette: list[np.ndarray] = []
    draw_image(world, manifest["style"], parts[-3], label, int(Path(parts[-1]).stem), manifest["strength"], silhouette)
    return silhouette[0]


def close_classes(world: World, colour: str, shape: str) -> list[tuple[str, str]]:
    """The world's classes that share exactly one of colour and shape with ``colour shape``: the visually close
    classes an image-variation model may drift to."""
    return [(c, s) for c, s in world.classes if (c == colour) != (s == shape)]


def render_variation(
    world: World, style: str, classname: str, relpath: str, view: int, wrong_class_rate: float = 0.0
) -> tuple[Image.Image, str]:
    """An *idealised image-variation model* of the pocket world: view ``view`` of the image ``relpath`` of class
    ``classname``, re-drawn with fresh nuisance factors (pose, position, size, colour jitter, background and its
    texture) in the dataset's ``style``, from a generator seeded by (world seed, style, relpath, view). With
    probability ``wrong_class_rate`` the object is replaced by a visually close class (:func:`close_classes`), as a
    diffusion model's variation sometimes drifts. Returns the image and the class actually drawn.

    It reads the image's rendering record (its class), which a real image-variation model never sees: the content
    of every other view is kept exactly, an upper bound on what Stable Diffusion's variations keep."""
    if not 0.0 <= wrong_class_rate <= 1.0:
        raise ValueError(f"wrong_class_rate must be in [0, 1], got {wrong_class_rate}")
    colour, shape = classname.split(" ", 1)
    rng = _rng(world.seed, style, "variation", relpath, view)
    if rng.random() < wrong_class_rate:
        near = close_classes(world, colour, shape)
        colour, shape = near[int(rng.integers(len(near)))]
    if world.version == 1:
        img = render(colour, shape, style, rng, world.image_size)
    else:
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        quadrant = int(rng.integers(len(QUADRANTS))) if world.spurious == "position" else None
        img = render(colour, shape, style, rng, world.image_size, version=2, texture=texture, quadrant=quadrant)
    return img, f"{colour} {shape}"
