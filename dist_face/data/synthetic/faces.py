"""A deterministic generator of synthetic, face-like identities: the embedded default dataset.

Each identity is a parameter vector (face shape, skin tone, eye/brow/nose/mouth geometry, hair
style and colour, accessories, marks) drawn from ``(seed, identity)``. Each sample renders that
identity with a small change of expression and pose, then applies per-sample nuisances that a
recognition network must learn to ignore: random background, affine jitter, illumination
gain, colour cast and gradient, blur, noise, a partial occlusion and JPEG compression.
Background and illumination are drawn per sample, so an untrained network, which mostly sees
colour and brightness, scores near chance on held-out pairs; the identity lives in geometry.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 112
_SS = 2  # supersampling factor for anti-aliased drawing
_HAIR_STYLES = 5


@dataclass(frozen=True)
class Augment:
    """Strength of the per-sample nuisances (1.0 = default)."""

    pose: float = 1.0
    """Scales rotation (±12°), scale (±8%) and translation (±5 px)."""
    light: float = 1.0
    """Scales gain (0.65–1.35), colour cast and the lighting gradient."""
    blur_p: float = 0.3
    """Probability of a Gaussian blur of radius 0.5–1.6 px."""
    noise: float = 1.0
    """Scales additive Gaussian noise (σ up to 10 grey levels)."""
    occlusion_p: float = 0.25
    """Probability of a random rectangle covering 15–35% of the width."""
    jpeg_quality: tuple[int, int] = (70, 95)
    """JPEG quality range."""


def identity_params(seed: int, identity: int) -> np.ndarray:
    """Draw the parameter vector of one identity (deterministic in ``seed``, ``identity``)."""
    rng = np.random.default_rng([seed, identity, 0x1D])
    return rng.random(32)


def render_sample(
    params: np.ndarray, rng: np.random.Generator, aug: Augment = Augment()
) -> Image.Image:
    """Render one augmented 112×112 RGB view of the identity ``params``."""
    face = _draw_face(params, rng)
    face = _pose(face, rng, aug.pose)
    return _photometric(face, rng, aug)


def encode_jpeg(image: Image.Image, rng: np.random.Generator, aug: Augment = Augment()) -> bytes:
    """JPEG-encode ``image`` at a random quality in ``aug.jpeg_quality``."""
    buf = io.BytesIO()
    lo, hi = aug.jpeg_quality
    image.save(buf, format="JPEG", quality=int(rng.integers(lo, hi + 1)))
    return buf.getvalue()


def sample_jpeg(seed: int, identity: int, index: int, aug: Augment = Augment()) -> bytes:
    """The ``index``-th JPEG sample of ``identity``: deterministic in all three numbers."""
    rng = np.random.default_rng([seed, identity, index, 0x5A])
    image = render_sample(identity_params(seed, identity), rng, aug)
    return encode_jpeg(image, rng, aug)


def _lerp(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(u)


def _color(u: float, v: float, w: float, lo: int = 20, hi: int = 235) -> tuple[int, int, int]:
    return (int(_lerp(u, lo, hi)), int(_lerp(v, lo, hi)), int(_lerp(w, lo, hi)))


def _draw_face(p: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Draw the identity in a neutral frame on a transparent background (RGBA, supersampled)."""
    s = SIZE * _SS
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    k = _SS
    cx = 56 + rng.normal(0, 0.8)
    yaw = rng.normal(0, 2.5)  # features slide sideways as the head turns
    expr = rng.normal(0, 1.0)  # expression: mouth curve and brow height

    face_w, face_h = _lerp(p[0], 30, 42), _lerp(p[1], 40, 52)
    # skin tones along one dark-to-light axis with a little hue spread, so skin colour alone
    # does not tell identities apart once per-sample lighting is applied
    tone = float(p[2])
    skin = tuple(
        int(_lerp(tone, dark, light) + _lerp(u, -12, 12))
        for dark, light, u in zip((95, 62, 45), (240, 205, 180), (p[3], p[4], p[3]))
    )
    hair = _color(p[5], p[6] * 0.8 * p[5] + 0.1, p[7] * 0.5 * p[5], 15, 190)
    style = int(p[8] * _HAIR_STYLES)
    top = 58 - face_h

    if style in (1, 3):  # long hair behind the face
        d.ellipse(_box(cx, 58 + 6, face_w + 8, face_h + 12, k), fill=hair)
    ear_r = _lerp(p[9], 5, 9)
    for side in (-1, 1):
        d.ellipse(_box(cx + side * face_w, 60, ear_r * 0.7, ear_r, k), fill=skin)
    jaw = _lerp(p[10], 0.75, 1.0)
    d.ellipse(_box(cx, 56, face_w, face_h * 0.9, k), fill=skin)
    d.polygon(
        [
            ((cx - face_w * jaw) * k, 60 * k),
            ((cx + face_w * jaw) * k, 60 * k),
            ((cx + face_w * 0.35) * k, (56 + face_h) * k),
            ((cx - face_w * 0.35) * k, (56 + face_h) * k),
        ],
        fill=skin,
    )
    if style != 4:  # style 4 is bald
        hairline = _lerp(p[11], 8, 18)
        d.chord(_box(cx, top + hairline, face_w + 2, hairline + 4, k), 180, 360, fill=hair)
        if style == 2:  # side fringe
            d.polygon(
                [
                    ((cx - face_w) * k, (top + hairline) * k),
                    ((cx + 4) * k, (top + 4) * k),
                    ((cx - face_w * 0.2) * k, (top + hairline + 10) * k),
                ],
                fill=hair,
            )

    fx = cx + yaw
    eye_dx, eye_y = _lerp(p[12], 11, 18), _lerp(p[13], 48, 58)
    eye_r, eye_asp = _lerp(p[14], 3.5, 6.5), _lerp(p[15], 0.45, 0.9)
    iris = _color(p[16], p[17], p[18], 10, 160)
    brow_gap, brow_tilt = _lerp(p[19], 5, 10) + expr * 0.8, _lerp(p[20], -0.35, 0.35)
    brow_w = max(1, int(_lerp(p[21], 1.5, 4.5) * k))
    for side in (-1, 1):
        ex = fx + side * eye_dx
        d.ellipse(_box(ex, eye_y, eye_r, eye_r * eye_asp, k), fill=(245, 245, 240))
        d.ellipse(_box(ex, eye_y, eye_r * 0.5, eye_r * 0.5 * min(1.0, eye_asp * 1.3), k), fill=iris)
        by = eye_y - brow_gap
        dy = side * brow_tilt * eye_r
        d.line(
            [((ex - eye_r * 1.2) * k, (by + dy) * k), ((ex + eye_r * 1.2) * k, (by - dy) * k)],
            fill=hair,
            width=brow_w,
        )
    nose_len, nose_w = _lerp(p[22], 8, 16), _lerp(p[23], 3, 7)
    shade = tuple(int(c * 0.75) for c in skin)
    d.polygon(
        [
            (fx * k, (eye_y + 2) * k),
            ((fx - nose_w) * k, (eye_y + nose_len) * k),
            ((fx + nose_w) * k, (eye_y + nose_len) * k),
        ],
        fill=shade,
    )
    mouth_y = eye_y + nose_len + _lerp(p[24], 6, 11)
    mouth_w = _lerp(p[25], 7, 14)
    curve = _lerp(p[26], -3, 4) + expr
    lip = _color(_lerp(p[27], 0.5, 0.9), p[28] * 0.4, p[28] * 0.4, 40, 220)
    d.line(
        [
            ((fx - mouth_w) * k, mouth_y * k),
            (fx * k, (mouth_y + curve) * k),
            ((fx + mouth_w) * k, mouth_y * k),
        ],
        fill=lip,
        width=int(_lerp(p[29], 2, 4) * k),
        joint="curve",
    )
    if p[30] > 0.75:  # glasses
        for side in (-1, 1):
            d.ellipse(
                _box(fx + side * eye_dx, eye_y, eye_r + 3, eye_r + 2, k),
                outline=(20, 20, 20),
                width=k,
            )
        d.line(
            [
                ((fx - eye_dx + eye_r + 3) * k, eye_y * k),
                ((fx + eye_dx - eye_r - 3) * k, eye_y * k),
            ],
            fill=(20, 20, 20),
            width=k,
        )
    if p[31] > 0.8:  # beard
        d.chord(_box(fx, mouth_y + 2, face_w * 0.6, 9, k), 0, 180, fill=hair)
    mole = np.random.default_rng(int(p[31] * 1e9))
    for _ in range(int(p[0] * 3)):
        mx, my = fx + mole.uniform(-face_w * 0.6, face_w * 0.6), mole.uniform(50, 80)
        d.ellipse(_box(mx, my, 1.2, 1.2, k), fill=(60, 40, 30))
    return img


def _box(cx: float, cy: float, rx: float, ry: float, k: int) -> list[float]:
    return [(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k]


def _pose(face: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Rotate, scale and shift the RGBA face about the image centre."""
    angle = rng.normal(0, 6 * strength)
    scale = 1.0 + rng.uniform(-0.08, 0.08) * strength
    tx, ty = rng.uniform(-5, 5, size=2) * strength * _SS
    c = SIZE * _SS / 2
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    # inverse map output -> input, as PIL's affine transform expects
    matrix = (
        cos,
        sin,
        c - cos * (c + tx) - sin * (c + ty),
        -sin,
        cos,
        c + sin * (c + tx) - cos * (c + ty),
    )
    return face.transform(
        face.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR
    )


def _photometric(face: Image.Image, rng: np.random.Generator, aug: Augment) -> Image.Image:
    """Composite on a random background, light, blur, add noise and occlude; return RGB 112²."""
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    t = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(c0 * (1 - t) + c1 * t, (SIZE, SIZE, 3))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    small = face.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    img.paste(small, (0, 0), small)
    if rng.random() < aug.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.6))))
    x = np.asarray(img, dtype=np.float32)
    gain = 1.0 + rng.uniform(-0.35, 0.35) * aug.light
    cast = 1.0 + rng.uniform(-0.15, 0.15, size=3) * aug.light
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-6
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    ramp = 1.0 + 0.5 * aug.light * rng.uniform(0, 1) * (direction[0] * xx + direction[1] * yy)
    x = x * gain * cast * ramp[..., None]
    x += rng.normal(0, rng.uniform(0, 10) * aug.noise, size=x.shape)
    if rng.random() < aug.occlusion_p:
        w = int(SIZE * rng.uniform(0.15, 0.35))
        h = int(SIZE * rng.uniform(0.15, 0.35))
        x0, y0 = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
        x[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), "RGB")
