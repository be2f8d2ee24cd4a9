"""The images of the caption corpora, made here, deterministically, from nothing downloaded:
procedural shape scenes with compositional captions, and the photographs and digits that ship
with scikit-image and scikit-learn. Rows only; corpora.py writes, versions and reads them.

Images are uint8 RGB with sides a multiple of 16. The scene set's `test` split holds
colour-shape combinations never seen in training, so captioning generalisation can be measured.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

# --------------------------------------------------------------------------- scenes

SCENE_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 9, "large": 15}  # half-extent in pixels
POSITIONS = {
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "centre": (32, 32),
}
# Colour-shape pairs never shown in training: the `test` split is made only of scenes
# containing at least one of them, so it measures compositional generalisation.
HELD_OUT = {("red", "triangle"), ("blue", "circle"), ("yellow", "square"), ("purple", "triangle")}


def _draw_scene(objects: list[dict]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SCENE_SIZE, SCENE_SIZE), (20, 20, 24))
    draw = ImageDraw.Draw(img)
    for o in objects:
        cx, cy = POSITIONS[o["position"]]
        r = SIZES[o["size"]]
        box = (cx - r, cy - r, cx + r, cy + r)
        color = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse(box, fill=color)
        elif o["shape"] == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return np.asarray(img, np.uint8)


def _describe(o: dict) -> str:
    where = "in the centre" if o["position"] == "centre" else f"at the {o['position']}"
    return f"a {o['size']} {o['color']} {o['shape']} {where}"


def make_scenes(n: int, seed: int = 0) -> list[dict]:
    """`n` random scenes of one or two objects (distinct positions). Each row: image bytes
    (64x64x3), caption, attributes (JSON list of objects), split ("train", "valid" or
    "test" for scenes with a held-out colour-shape pair)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        count = 1 if rng.random() < 0.5 else 2
        positions = rng.choice(list(POSITIONS), size=count, replace=False)
        objects = [
            {
                "shape": str(rng.choice(SHAPES)),
                "color": str(rng.choice(list(COLORS))),
                "size": str(rng.choice(list(SIZES))),
                "position": str(p),
            }
            for p in positions
        ]
        held = any((o["color"], o["shape"]) in HELD_OUT for o in objects)
        image = _draw_scene(objects)
        # valid by the image itself: a scene drawn twice (one object: 180 possible scenes) is in
        # one split, never trained on as `train` and validated as `valid`
        split = "test" if held else ("valid" if zlib.crc32(image.tobytes()) % 20 == 0 else "train")
        rows.append(
            {
                "image": image.tobytes(),
                "height": image.shape[0],
                "width": image.shape[1],
                "caption": " and ".join(_describe(o) for o in objects),
                "attributes": json.dumps(objects),
                "source": "scenes",
                "split": split,
            }
        )
    return rows


# --------------------------------------------------------------------------- photos

PHOTO_CAPTIONS = {
    "astronaut": "a photograph of an astronaut in a spacesuit in front of a flag",
    "brick": "a close-up photograph of a grey brick wall",
    "camera": "a black and white photograph of a man with a camera on a tripod",
    "cat": "a photograph of a ginger tabby cat looking at the camera",
    "chelsea": "a photograph of a ginger tabby cat looking at the camera",
    "clock": "a motion-blurred photograph of a wall clock",
    "coffee": "a photograph of a cup of coffee on a saucer",
    "coins": "a black and white photograph of old coins on a table",
    "colorwheel": "a colour wheel with every hue",
    "grass": "a close-up photograph of grass",
    "gravel": "a close-up photograph of gravel",
    "horse": "a black silhouette of a horse",
    "hubble_deep_field": "a telescope image of many distant galaxies",
    "immunohistochemistry": "a microscope image of stained tissue",
    "logo": "the scikit-image logo, a snake on a grid",
    "moon": "a black and white photograph of the surface of the moon",
    "page": "a scanned page of printed text",
    "retina": "a photograph of the retina of a human eye",
    "rocket": "a photograph of a rocket on a launch pad",
    "text": "a photograph of handwritten and printed text",
}
PHOTO_SIZE = 64
DIGIT_SIZE = 32
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def _to_rgb_u8(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    side = min(arr.shape[:2])  # centre crop to a square, then resize
    top, left = (arr.shape[0] - side) // 2, (arr.shape[1] - side) // 2
    arr = arr[top : top + side, left : left + side]
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR), np.uint8)


def make_photos() -> list[dict]:
    """skimage photographs (one row each, split "train") and sklearn's 1,797 digits
    upscaled to 32x32 RGB (every tenth digit in "valid": held out of training, validated on)."""
    import skimage.data
    from sklearn.datasets import load_digits

    rows = []
    for name, caption in PHOTO_CAPTIONS.items():
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            image = _to_rgb_u8(loader(), PHOTO_SIZE)
        except Exception:  # a photo needing an optional download (pooch) is skipped
            continue
        rows.append(_image_row(image, caption, {"name": name}, "photos", "train"))
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = (img / 16.0 * 255).astype(np.uint8)
        image = _to_rgb_u8(gray, DIGIT_SIZE)
        caption = f"a handwritten digit {DIGIT_WORDS[int(label)]}"
        split = "valid" if i % 10 == 0 else "train"
        rows.append(_image_row(image, caption, {"digit": int(label)}, "digits", split))
    return rows


def _image_row(image: np.ndarray, caption: str, attrs: dict, source: str, split: str) -> dict:
    return {
        "image": image.tobytes(),
        "height": image.shape[0],
        "width": image.shape[1],
        "caption": caption,
        "attributes": json.dumps(attrs),
        "source": source,
        "split": split,
    }
