"""Real photos that ship inside packages: labelled ImageNet photos (foolbox) for evaluation and
unrelated photos (scikit-image, scikit-learn) for calibration, so the two sets never overlap."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def _package_dir(name: str, hint: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the photos need the package {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def preprocess(img: Image.Image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform: resize shorter side, centre crop, normalise."""
    img = img.convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - MEAN) / STD


def imagenet_photos() -> list[tuple[Image.Image, int]]:
    """The 20 labelled ImageNet photos in foolbox's data folder (labels are torchvision class indices)."""
    folder = _package_dir("foolbox", "foolbox==3.3.4 (pip install --no-deps foolbox==3.3.4)") / "data"
    out = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        label = int(re.match(r"imagenet_\d+_(\d+)\.jpg", path.name)[1])
        out.append((Image.open(path).copy(), label))
    return out


def views(img: Image.Image) -> list[Image.Image]:
    """Five views of a photo: itself, its mirror image, and three crops."""
    w, h = img.size
    return [
        img,
        img.transpose(Image.FLIP_LEFT_RIGHT),
        img.crop((0, 0, int(w * 0.8), int(h * 0.8))),
        img.crop((int(w * 0.2), int(h * 0.2), w, h)),
        img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))),
    ]


def evaluation_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(100 views [N,3,224,224], the view's label, the index of the 20 original photos among the views)."""
    xs, labels, originals = [], [], []
    for img, label in imagenet_photos():
        originals.append(len(xs))
        for v in views(img):
            xs.append(preprocess(v))
            labels.append(label)
    return torch.stack(xs), torch.tensor(labels), torch.tensor(originals)


def calibration_photos() -> list[Image.Image]:
    """Natural colour photos from scikit-image and scikit-learn: none of them is in the evaluation set."""
    skimage_dir = _package_dir("skimage", "scikit-image") / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "color.png", "ihc.png"]
    photos = [Image.open(skimage_dir / n).copy() for n in names if (skimage_dir / n).exists()]
    from sklearn.datasets import load_sample_images

    photos += [Image.fromarray(a) for a in load_sample_images().images]
    return photos


def calibration_set(crops_per_photo: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Batches of 1 image: each calibration photo and random crops of it."""
    rng = np.random.default_rng(seed)
    out = []
    for img in calibration_photos():
        img = img.convert("RGB")
        out.append(preprocess(img).unsqueeze(0))
        w, h = img.size
        for _ in range(crops_per_photo):
            cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
            left, top = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
            out.append(preprocess(img.crop((left, top, left + cw, top + ch))).unsqueeze(0))
    return out


# ---------------------------------------------------------------- a held-out protocol
# The sets above are where qcompile's methods and defaults were chosen. Accuracy is reported on a second
# protocol that shares no image with them: calibration on crops of half of the labelled photos, evaluation on
# other views (rotated, rescaled, recoloured) of the other half.
HELD_OUT_CALIBRATION_PHOTOS = range(10, 20)
HELD_OUT_EVALUATION_PHOTOS = range(0, 10)


def other_views(img: Image.Image) -> list[Image.Image]:
    """Twelve views of a photo, none of them one of views(): rotations, zooms, recolourings and their mirrors."""
    from PIL import ImageEnhance

    w, h = img.size
    img = img.convert("RGB")
    zoom = img.crop((int(w * 0.15), int(h * 0.05), int(w * 0.95), int(h * 0.85)))
    out = [
        img.rotate(8, resample=Image.BILINEAR), img.rotate(-8, resample=Image.BILINEAR), zoom,
        img.crop((int(w * 0.05), int(h * 0.15), int(w * 0.75), int(h * 0.95))),
        ImageEnhance.Brightness(img).enhance(0.75), ImageEnhance.Contrast(img).enhance(1.3),
    ]
    return out + [v.transpose(Image.FLIP_LEFT_RIGHT) for v in out]


def held_out_calibration(batch: int = 4, images: int = 32, seed: int = 7) -> list[torch.Tensor]:
    """`images` crops of the labelled photos HELD_OUT_CALIBRATION_PHOTOS, as batches of `batch`."""
    rng = np.random.default_rng(seed)
    photos = [img.convert("RGB") for i, (img, _) in enumerate(imagenet_photos()) if i in HELD_OUT_CALIBRATION_PHOTOS]
    crops = []
    while len(crops) < images:
        img = photos[len(crops) % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 0.95)), int(h * rng.uniform(0.5, 0.95))
        left, top = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
        crops.append(preprocess(img.crop((left, top, left + cw, top + ch))))
    return [torch.stack(crops[i:i + batch]) for i in range(0, images, batch)]


def held_out_evaluation() -> tuple[torch.Tensor, torch.Tensor]:
    """(120 views [N, 3, 224, 224] of the photos HELD_OUT_EVALUATION_PHOTOS, their labels)."""
    xs, labels = [], []
    for i, (img, label) in enumerate(imagenet_photos()):
        if i in HELD_OUT_EVALUATION_PHOTOS:
            for v in other_views(img):
                xs.append(preprocess(v))
                labels.append(label)
    return torch.stack(xs), torch.tensor(labels)
