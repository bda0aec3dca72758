"""The glyph world the ``glyphs`` micro model is trained on: letters and digits drawn with the DejaVu
fonts (Debian's ``fonts-dejavu-core``; matplotlib's wheel ships them too) in a colour on a coloured
background, thin or bold, with small random scale, rotation and position jitter, captioned
compositionally: "a bold red letter K on a white background".

Example:
    >>> caption(Glyph("K", "red", "white", True))
    'a bold red letter K on a white background'
    >>> images, glyphs = dataset(1000, seed=0)      # (1000, 32, 32, 3) uint8, and what each shows
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIGITS",
    "GLYPHS",
    "INKS",
    "LETTERS",
    "Glyph",
    "caption",
    "combos",
    "dataset",
    "font_dir",
    "render",
]

# glyphs whose shapes stay apart at 32 px (no O/0, I/1, S/5, B/8, Z/2, Q, J)
LETTERS = tuple("ACDEFGHKLMNPRTUVWXY")
DIGITS = {"3": "three", "4": "four", "6": "six", "7": "seven", "9": "nine"}
GLYPHS = (*LETTERS, *DIGITS)
COLOURS = {
    "red": (215, 30, 35),
    "green": (20, 150, 60),
    "blue": (30, 70, 215),
    "yellow": (245, 205, 25),
    "orange": (245, 125, 20),
    "purple": (135, 45, 175),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (140, 140, 140),
}
INKS = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white")  # glyph colours
BACKGROUNDS = ("white", "black", "gray", "red", "blue", "green", "yellow")
_THIN = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf")
_BOLD = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansCondensed-Bold.ttf")
SIZE = 32
_DRAW = 128  # drawn at this size, then downsampled with antialiasing


@dataclass(frozen=True)
class Glyph:
    char: str  # "K" or "7"
    ink: str
    background: str
    bold: bool


def caption(g: Glyph) -> str:
    """ "a bold red letter K on a white background", "a thin blue digit three on a black background"."""
    what = f"digit {DIGITS[g.char]}" if g.char in DIGITS else f"letter {g.char}"
    return f"a {'bold' if g.bold else 'thin'} {g.ink} {what} on a {g.background} background"


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance."""
    linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (c / 255 for c in COLOURS[colour])]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def readable(ink: str, background: str) -> bool:
    """Ink and background apart enough to read: a WCAG contrast ratio of 2 or more."""
    a, b = sorted((_luminance(ink), _luminance(background)))
    return (b + 0.05) / (a + 0.05) >= 2.0


def combos() -> list[Glyph]:
    """Every glyph the world draws, in a fixed order (what the CLIP is trained to tell apart)."""
    return [
        Glyph(ch, ink, bg, bold)
        for ch in GLYPHS
        for ink in INKS
        for bg in BACKGROUNDS
        for bold in (False, True)
        if readable(ink, bg)
    ]


def font_dir() -> Path:
    """The folder holding the DejaVu fonts: Debian's package, else matplotlib's copy."""
    for folder in (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu")):
        if (folder / "DejaVuSans.ttf").exists():
            return folder
    try:
        import matplotlib

        return Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    except ImportError:
        raise FileNotFoundError("the DejaVu fonts: install Debian's fonts-dejavu-core or matplotlib") from None


@functools.cache
def _font(name: str) -> object:
    from PIL import ImageFont

    return ImageFont.truetype(str(font_dir() / name), size=int(_DRAW * 0.72))


def render(g: Glyph, rng: random.Random) -> np.ndarray:
    """One 32x32 RGB image (uint8) of ``g``: a random face of its weight, scale, rotation and shift."""
    from PIL import Image, ImageDraw

    font = _font(rng.choice(_BOLD if g.bold else _THIN))
    layer = Image.new("L", (_DRAW, _DRAW), 0)
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), g.char, font=font)  # type: ignore[arg-type]
    draw.text(((_DRAW - (right - left)) / 2 - left, (_DRAW - (bottom - top)) / 2 - top), g.char, fill=255, font=font)  # type: ignore[arg-type]
    scale = rng.uniform(0.8, 1.0)
    layer = layer.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC, center=(_DRAW / 2, _DRAW / 2))
    side = round(_DRAW * scale)
    glyph = layer.resize((side, side), Image.Resampling.LANCZOS)
    mask = Image.new("L", (_DRAW, _DRAW), 0)
    offset = (_DRAW - side) // 2
    dx, dy = (rng.randint(-8, 8) for _ in range(2))
    mask.paste(glyph, (offset + dx, offset + dy))
    mask = mask.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    ink, bg = (np.array(COLOURS[c], dtype=np.float32) for c in (g.ink, g.background))
    return np.clip(np.round(bg + alpha * (ink - bg)), 0, 255).astype(np.uint8)


def dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[Glyph]]:
    """``n`` random glyphs (uniform over :func:`combos`) and their images, (n, 32, 32, 3) uint8."""
    rng = random.Random(seed)
    every = combos()
    picked = [rng.choice(every) for _ in range(n)]
    return np.stack([render(g, rng) for g in picked]), picked
