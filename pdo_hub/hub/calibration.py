"""User calibration data for fetched models: sentences for text models, images for vision models.

The optimizer calibrates, recovers and judges candidates on its inputs, so real inputs from the user's
domain beat pdo-hub's built-in sentences and seeded tensors. Given as a text file (one example per line),
a folder of images, or a list of sentences. Its content hash goes into the cache key: other calibration
data gives another stored variant.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pdo_hub.core.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: More examples than this are not needed to calibrate and would only slow the search down.
MAX_EXAMPLES = 512

CalibrationLike = "Calibration | str | os.PathLike[str] | Sequence[str] | None"


@dataclass(frozen=True)
class Calibration:
    """Calibration examples: `texts` (for text models) or `images` (paths, for vision models).

    Attributes:
        texts: Sentences, in file order.
        images: Image files, sorted by name.
        origin: Where they came from, for reports and errors.
    """

    texts: tuple[str, ...] = ()
    images: tuple[Path, ...] = ()
    origin: str = "user data"

    @property
    def kind(self) -> str:
        return "text" if self.texts else "images"

    def digest(self) -> str:
        """sha256 of the examples' content (what the cache key depends on, not where they live)."""
        digest = hashlib.sha256()
        if self.texts:
            digest.update(json.dumps(list(self.texts), ensure_ascii=False).encode("utf-8"))
        for path in self.images:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the cache key and the source record say about the data (no local paths: records get pushed)."""
        return {"kind": self.kind, "examples": len(self.texts or self.images), "sha256": self.digest()}


def read_calibration(value: Any) -> Calibration | None:
    """Turn what a user passes as calibration data into a `Calibration`.

    Args:
        value: None, a `Calibration`, a text file (one example per line), a folder of PNG/JPEG images, or a
            sequence of sentences.

    Raises:
        ConfigError: a missing path, an empty file or folder, or an unsupported value.
    """
    if value is None or isinstance(value, Calibration):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if path.is_dir():
            images = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
            if not images:
                raise ConfigError(f"Calibration folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} images.")
            return Calibration(images=images[:MAX_EXAMPLES], origin=f"{len(images[:MAX_EXAMPLES])} images")
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"Cannot read calibration file {path} as UTF-8 text: {err}.") from err
            return _texts([line for line in lines if line.strip()], str(path))
        raise ConfigError(f"Calibration path {path} does not exist: pass a text file (one example per line) or a folder of images.")
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return _texts([item for item in value if item.strip()], "sentences")
    raise ConfigError(
        f"calibration={type(value).__name__}: pass a text file, a folder of images, or a list of sentences."
    )


def _texts(lines: list[str], origin: str) -> Calibration:
    if not lines:
        raise ConfigError(f"Calibration data from {origin} has no non-empty line: write one example per line.")
    kept = tuple(line.strip() for line in lines[:MAX_EXAMPLES])
    return Calibration(texts=kept, origin=f"{len(kept)} sentences")


def load_images(calibration: Calibration, transform: Any) -> list:
    """The calibration images as batch-1 tensors, through the model's own preprocessing `transform`."""
    from torchvision.io import ImageReadMode, decode_image

    tensors = []
    for path in calibration.images:
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"Cannot decode calibration image {path}: {err}.") from err
        tensors.append(transform(image).unsqueeze(0))
    return tensors
