"""SynthFaces people: demographic attributes and the stable appearance of each identity.

An :class:`Identity` is everything about a synthetic person that does not change between
photographs: face shape, feature geometry and sizes, skin tone (drawn from the skin-tone group
with within-group variation), eye colour, hair style and colour, eyebrows, beard, glasses habit,
moles and freckles, and the effects of age (lines, grey hair, receding hairline). Traits that
correlate with gender (jaw shape, brow thickness, lip fullness, hair length, beards) are drawn
from overlapping distributions, so no single cue decides gender.

Geometry is in *face units*: the face's half-width is about 1, x grows to the image's right and
y downwards, the origin lies between the eyes and the nose tip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from visage_ml.config import GENDERS, GROUPS, SynthParams

# Skin base colours (sRGB) of the skin-tone groups g1 (light) .. g4 (dark).
SKIN_BASE: tuple[tuple[float, float, float], ...] = (
    (236.0, 204.0, 182.0),
    (216.0, 170.0, 132.0),
    (170.0, 118.0, 82.0),
    (104.0, 68.0, 48.0),
)

HAIR_COLOURS: tuple[tuple[float, float, float], ...] = (
    (24.0, 21.0, 21.0),  # black
    (52.0, 36.0, 27.0),  # dark brown
    (92.0, 62.0, 40.0),  # brown
    (138.0, 102.0, 68.0),  # light brown
    (196.0, 164.0, 106.0),  # blonde
    (150.0, 68.0, 38.0),  # red
    (104.0, 48.0, 34.0),  # auburn
)
# Probability of each hair colour per group (rows follow GROUPS).
HAIR_COLOUR_P = np.array(
    [
        [0.10, 0.24, 0.24, 0.15, 0.16, 0.05, 0.06],
        [0.36, 0.34, 0.20, 0.05, 0.03, 0.00, 0.02],
        [0.62, 0.30, 0.07, 0.01, 0.00, 0.00, 0.00],
        [0.82, 0.15, 0.03, 0.00, 0.00, 0.00, 0.00],
    ]
)

IRIS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (52.0, 30.0, 18.0),  # dark brown
    (96.0, 58.0, 30.0),  # brown
    (118.0, 98.0, 52.0),  # hazel
    (78.0, 110.0, 72.0),  # green
    (74.0, 116.0, 160.0),  # blue
    (108.0, 118.0, 128.0),  # grey
)
IRIS_COLOUR_P = np.array(
    [
        [0.12, 0.22, 0.16, 0.12, 0.28, 0.10],
        [0.45, 0.40, 0.10, 0.03, 0.02, 0.00],
        [0.70, 0.28, 0.02, 0.00, 0.00, 0.00],
        [0.85, 0.15, 0.00, 0.00, 0.00, 0.00],
    ]
)

HAIR_STYLES: tuple[str, ...] = (
    "buzz",
    "short",
    "side_part",
    "bob",
    "long",
    "curly",
    "bun",
    "bald",
)
_STYLE_P = {
    "female": np.array([0.02, 0.10, 0.10, 0.25, 0.35, 0.10, 0.08, 0.00]),
    "male": np.array([0.20, 0.33, 0.22, 0.03, 0.05, 0.10, 0.02, 0.05]),
}
BEARDS: tuple[str, ...] = ("none", "stubble", "moustache", "goatee", "full")
_BEARD_P_MALE = np.array([0.52, 0.2, 0.09, 0.09, 0.1])

GLASSES_STYLES: tuple[str, ...] = ("round", "rect")
FRAME_COLOURS: tuple[tuple[float, float, float], ...] = (
    (20.0, 20.0, 22.0),
    (70.0, 42.0, 24.0),
    (176.0, 150.0, 90.0),
    (160.0, 164.0, 170.0),
    (120.0, 30.0, 40.0),
)


@dataclass(frozen=True)
class Appearance:
    """Stable look of one synthetic person (face units; colours are sRGB floats 0..255)."""

    skin: tuple[float, float, float]
    face_w: float  # half-width of the face
    face_top: float  # top of the skull above the origin
    chin: float  # chin below the origin
    jaw_n: float  # superellipse exponent of the jaw: 2 = round, >2 = square
    chin_taper: float
    depth: float  # how far the face surface stands out (perspective, pose)
    eye_y: float
    eye_sep: float  # half the inter-ocular distance
    eye_w: float  # half-width of an eye
    eye_h: float  # half-opening of an eye
    eye_tilt: float
    iris: tuple[float, float, float]
    iris_r: float
    brow_gap: float
    brow_thick: float
    brow_arch: float
    brow_len: float
    brow_tilt: float
    brow_colour: tuple[float, float, float]
    nose_y: float  # nose tip below the eye line
    nose_w: float  # half-width of the nostril wings
    nose_proj: float  # how far the tip stands out
    mouth_y: float  # mouth line below the eye line
    mouth_w: float  # half-width of the mouth
    lip_upper: float
    lip_lower: float
    lip_colour: tuple[float, float, float]
    ear_size: float
    neck_w: float
    hair_style: str
    hair_colour: tuple[float, float, float]
    hair_volume: float
    hair_length: float
    hair_part: float  # -1 .. 1, side of the parting / fringe sweep
    fringe: float  # 0 = forehead free, 1 = full fringe
    hairline: float  # y of the hairline (receding = more negative)
    grey: float  # 0..1 share of grey hair
    beard: str
    beard_density: float
    glasses_p: float  # chance of wearing glasses in a photograph
    glasses_style: str
    glasses_colour: tuple[float, float, float]
    glasses_size: float
    wrinkles: float  # 0..1 depth of age lines
    blush: float
    makeup_p: float  # chance of visible make-up (eyeliner, lip colour) in a photograph
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius)
    freckles: tuple[tuple[float, float], ...]  # (x, y)


@dataclass(frozen=True)
class Identity:
    """One synthetic person: pseudonymous id, demographic attributes and stable appearance.

    ``pid`` is empty for scene "passers-by", who are not members of the population.
    """

    pid: str
    age: int
    gender: str
    group: str
    appearance: Appearance

    @property
    def group_index(self) -> int:
        return GROUPS.index(self.group)


def derive_hex(*parts: object, n_hex: int) -> str:
    """Deterministic lowercase hex string of ``n_hex`` characters from ``parts`` (BLAKE2b)."""
    text = "/".join(str(p) for p in parts).encode("utf-8")
    return hashlib.blake2b(text, digest_size=(n_hex + 1) // 2).hexdigest()[:n_hex]


def _clip(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def _mix(
    a: tuple[float, float, float], b: tuple[float, float, float], t: float
) -> tuple[float, float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _jitter(
    c: tuple[float, float, float], rng: np.random.Generator, sd: float
) -> tuple[float, float, float]:
    k = rng.normal(0.0, 0.35 * sd, 3) + rng.normal(0.0, sd)  # mostly lighter/darker, little hue
    return tuple(float(np.clip(v * (1.0 + d), 0.0, 255.0)) for v, d in zip(c, k, strict=True))  # type: ignore[return-value]


def sample_appearance(
    rng: np.random.Generator, *, age: int, gender: str, group_index: int
) -> Appearance:
    """Draw the stable look of a person of the given age, gender and skin-tone group.

    Parameters
    ----------
    rng
        Source of randomness (the identity's own stream, so a population is reproducible).
    age, gender, group_index
        Demographic attributes; ``gender`` is one of :data:`GENDERS`, ``group_index`` indexes
        :data:`GROUPS`.

    Returns
    -------
    Appearance
        Geometry, colours and habits of the face.
    """
    male = gender == "male"
    n = rng.normal
    u = rng.uniform

    # Skin: the group's base colour, lighter/darker and warmer/cooler within the group.
    base = SKIN_BASE[group_index]
    light = _clip(n(1.0, 0.05), 0.88, 1.12)
    warm = _clip(n(0.0, 0.035), -0.08, 0.08)
    skin = (
        _clip(base[0] * light * (1 + warm), 0, 255),
        _clip(base[1] * light, 0, 255),
        _clip(base[2] * light * (1 - warm), 0, 255),
    )

    sex = 1.0 if male else -1.0  # shifts of overlapping, gender-correlated traits
    face_w = _clip(n(1.0 + 0.025 * sex, 0.05), 0.86, 1.14)
    jaw_n = _clip(n(2.55 + 0.25 * sex, 0.3), 1.9, 3.6)
    chin = _clip(n(1.38 + 0.04 * sex, 0.07), 1.18, 1.6)
    face_top = _clip(n(1.55, 0.05), 1.4, 1.7)
    eye_y = _clip(n(-0.2, 0.035), -0.3, -0.1)
    eye_sep = _clip(n(0.42, 0.025), 0.35, 0.49)
    eye_w = _clip(n(0.182 - 0.005 * sex, 0.013), 0.145, 0.22)
    eye_h = _clip(n(0.066 - 0.003 * sex, 0.009), 0.045, 0.09)
    eye_tilt = _clip(n(0.04, 0.08), -0.15, 0.25)
    iris = _jitter(
        IRIS_COLOURS[int(rng.choice(len(IRIS_COLOURS), p=IRIS_COLOUR_P[group_index]))], rng, 0.08
    )

    hair_idx = int(rng.choice(len(HAIR_COLOURS), p=HAIR_COLOUR_P[group_index]))
    hair = _jitter(HAIR_COLOURS[hair_idx], rng, 0.1)
    grey = _clip((age - 44 - n(0, 8)) / 30.0, 0.0, 1.0)
    lum = 0.3 * hair[0] + 0.59 * hair[1] + 0.11 * hair[2]
    hair_grey = _mix(_mix(hair, (lum, lum, lum), grey), (205.0, 203.0, 200.0), 0.85 * grey)

    style_p = _STYLE_P[gender].copy()
    if group_index >= 2:  # more curly / afro-textured hair
        style_p[5] += 0.15
        style_p /= style_p.sum()
    if male and age > 40:  # baldness with age
        style_p[7] += 0.004 * (age - 40)
        style_p /= style_p.sum()
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=style_p))]
    recede = _clip((age - 30) / 50.0 * u(0.0, 1.0), 0, 0.45) * (1.0 if male else 0.3)

    beard = BEARDS[int(rng.choice(len(BEARDS), p=_BEARD_P_MALE))] if male else "none"

    glasses_habit = rng.random()
    glasses_p = 0.0
    older = _clip((age - 40) / 40.0, 0.0, 1.0)
    if glasses_habit < 0.22 + 0.25 * older:
        glasses_p = float(rng.choice([0.35, 0.9]))

    wrinkles = _clip((age - 26) / 50.0 * n(1.0, 0.2), 0.0, 1.0)
    n_moles = int(rng.choice([0, 0, 1, 1, 2, 3]))
    moles = tuple(
        (float(u(-0.75, 0.75)), float(u(-0.1, 1.0)), float(u(0.018, 0.035))) for _ in range(n_moles)
    )
    freckles: tuple[tuple[float, float], ...] = ()
    if group_index <= 1 and rng.random() < (0.3 if group_index == 0 else 0.1):
        k = int(rng.integers(18, 40))
        fx = rng.normal(0.0, 0.38, k)
        fy = rng.normal(0.18, 0.1, k)
        freckles = tuple((float(x), float(y)) for x, y in zip(fx, fy, strict=True))

    lip_base = (skin[0] * 0.84 + 26.0, skin[1] * 0.6, skin[2] * 0.62)
    lip_colour = _jitter(lip_base, rng, 0.05)

    return Appearance(
        skin=skin,
        face_w=face_w,
        face_top=face_top,
        chin=chin,
        jaw_n=jaw_n,
        chin_taper=_clip(n(0.22 - 0.05 * sex, 0.08), 0.0, 0.45),
        depth=_clip(n(0.85, 0.06), 0.7, 1.0),
        eye_y=eye_y,
        eye_sep=eye_sep,
        eye_w=eye_w,
        eye_h=eye_h,
        eye_tilt=eye_tilt,
        iris=iris,
        iris_r=_clip(n(0.074, 0.005), 0.06, 0.088),
        brow_gap=_clip(n(0.21 - 0.012 * sex, 0.025), 0.15, 0.29),
        brow_thick=_clip(n(0.043 + 0.007 * sex, 0.01), 0.022, 0.08),
        brow_arch=_clip(n(0.045 - 0.01 * sex, 0.02), 0.0, 0.1),
        brow_len=_clip(n(1.0, 0.08), 0.8, 1.2),
        brow_tilt=_clip(n(0.0, 0.04), -0.1, 0.1),
        brow_colour=_mix(_jitter(hair, rng, 0.05), (20.0, 16.0, 14.0), 0.25),
        nose_y=_clip(n(0.53 + 0.02 * sex, 0.04), 0.42, 0.64),
        nose_w=_clip(n(0.18 + 0.01 * sex + 0.012 * group_index, 0.018), 0.13, 0.26),
        nose_proj=_clip(n(0.3, 0.05), 0.18, 0.42),
        mouth_y=_clip(n(0.98 + 0.02 * sex, 0.045), 0.86, 1.12),
        mouth_w=_clip(n(0.33, 0.03), 0.25, 0.42),
        lip_upper=_clip(n(0.042 - 0.006 * sex, 0.008), 0.022, 0.065) * (1.0 - 0.25 * wrinkles),
        lip_lower=_clip(n(0.058 - 0.008 * sex, 0.01), 0.03, 0.085) * (1.0 - 0.2 * wrinkles),
        lip_colour=lip_colour,
        ear_size=_clip(n(1.0 + 0.04 * sex, 0.08), 0.8, 1.25),
        neck_w=_clip(n(0.55 + 0.07 * sex, 0.05), 0.42, 0.72),
        hair_style=style,
        hair_colour=hair_grey,
        hair_volume=_clip(n(0.16, 0.05), 0.06, 0.3),
        hair_length=_clip(n(2.1, 0.35), 1.4, 3.0),
        hair_part=float(u(-1.0, 1.0)),
        fringe=float(rng.choice([0.0, 0.0, 0.4, 1.0])),
        hairline=_clip(n(-0.98, 0.05), -1.1, -0.84) - recede,
        grey=grey,
        beard=beard,
        beard_density=_clip(n(0.8, 0.12), 0.5, 1.0),
        glasses_p=glasses_p,
        glasses_style=GLASSES_STYLES[int(rng.integers(len(GLASSES_STYLES)))],
        glasses_colour=FRAME_COLOURS[int(rng.integers(len(FRAME_COLOURS)))],
        glasses_size=_clip(n(1.0, 0.08), 0.85, 1.2),
        wrinkles=wrinkles,
        blush=_clip(n(0.1 - 0.07 * sex, 0.05), 0.0, 0.25),
        makeup_p=_clip(n(0.3 - 0.28 * sex, 0.15), 0.0, 0.8),
        moles=moles,
        freckles=freckles,
    )


def sample_identity(rng: np.random.Generator, params: SynthParams, *, pid: str = "") -> Identity:
    """Draw one person: group by ``params.group_shares``, gender, age, then appearance."""
    group_index = int(rng.choice(len(GROUPS), p=np.asarray(params.group_shares, dtype=float)))
    gender = GENDERS[1] if rng.random() >= params.female_share else GENDERS[0]
    lo, hi = params.age_range
    age = int(rng.integers(lo, hi + 1))
    appearance = sample_appearance(rng, age=age, gender=gender, group_index=group_index)
    return Identity(
        pid=pid, age=age, gender=gender, group=GROUPS[group_index], appearance=appearance
    )
