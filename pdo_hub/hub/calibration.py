"""User calibration data for fetched models: sentences for text models, images for vision models.

The optimizer calibrates, recovers and judges candidates on its inputs, so real inputs from the user's
domain beat pdo-hub's built-in sentences and distilled images. Given as a text file (one example per
line), a folder of images, a list of sentences, or batches already in memory (tensors, or mappings of
tensors such as a tokenizer's output). Its content hash goes into the cache key: other calibration
data gives another stored variant.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

from pdo_hub.core.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: More examples than this are not needed to calibrate and would only slow the search down.
MAX_EXAMPLES = 512

CalibrationLike = "Calibration | str | os.PathLike[str] | Sequence[str] | torch.Tensor | Sequence[batch] | None"


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
    batches: tuple = ()
    origin: str = "user data"

    @property
    def kind(self) -> str:
        return "text" if self.texts else "images" if self.images else "batches"

    def digest(self) -> str:
        """sha256 of the examples' content (what the cache key depends on, not where they live)."""
        digest = hashlib.sha256()
        if self.texts:
            digest.update(json.dumps(list(self.texts), ensure_ascii=False).encode("utf-8"))
        for path in self.images:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        for batch in self.batches:
            _hash_batch(digest, batch)
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the cache key and the source record say about the data (no local paths: records get pushed)."""
        return {"kind": self.kind, "examples": len(self.texts or self.images or self.batches), "sha256": self.digest()}


def read_calibration(value: Any) -> Calibration | None:
    """Turn what a user passes as calibration data into a `Calibration`.

    Args:
        value: None, a `Calibration`, a text file (one example per line), a folder of PNG/JPEG images, a
            sequence of sentences, a tensor (one batch), or a sequence of batches (tensors, tuples of tensors
            or mappings of tensors such as a tokenizer's `BatchEncoding`).

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
    if isinstance(value, Sequence) and value and all(isinstance(item, str) for item in value):
        return _texts([item for item in value if item.strip()], "sentences")
    if _is_batch(value):
        value = [value]
    if isinstance(value, Sequence) and value and all(_is_batch(item) for item in value):
        from pdo_hub.optimizers.inputs import normalize_inputs

        batches = tuple(normalize_inputs(item) for item in value[:MAX_EXAMPLES])
        return Calibration(batches=batches, origin=f"{len(batches)} batches")
    raise ConfigError(
        f"calibration_data={type(value).__name__}: pass a text file, a folder of images, a list of sentences, a "
        "tensor, or a list of batches (tensors or dicts of tensors)."
    )


def _is_batch(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


def _hash_batch(digest: Any, batch: Any) -> None:
    """Feed a batch's structure, dtypes, shapes and bytes to `digest` (keys in sorted order)."""
    import torch

    if isinstance(batch, torch.Tensor):
        tensor = batch.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(batch, Mapping):
        for key in sorted(batch):
            digest.update(str(key).encode())
            _hash_batch(digest, batch[key])
    else:
        for item in batch:
            _hash_batch(digest, item)


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


def calibration_argument(calibration_data: Any, calibration: Any) -> Any:
    """The one calibration value of an entry point that takes `calibration_data=` (and the older `calibration=`).

    Raises:
        ConfigError: both were given.
    """
    if calibration_data is not None and calibration is not None:
        raise ConfigError("Pass calibration_data= only (calibration= is its older name), not both.")
    return calibration_data if calibration_data is not None else calibration


def eval_fn_record(eval_fn: Any) -> dict[str, str] | None:
    """What the cache key says about a task metric `eval_fn(model) -> accuracy`.

    Its accuracy decides which candidate is stored, so another metric must give another entry. A
    function cannot be hashed by what it computes; its module, name and bytecode stand for it (a
    changed body gives a new key; the same function over other data does not: name it differently).

    Raises:
        ConfigError: `eval_fn` is not callable.
    """
    if eval_fn is None:
        return None
    if not callable(eval_fn):
        raise ConfigError(f"eval_fn={type(eval_fn).__name__} is not callable: pass a function model -> accuracy in [0, 1].")
    code = getattr(eval_fn, "__code__", None) or getattr(getattr(eval_fn, "__call__", None), "__code__", None)
    body = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest() if code is not None else ""
    name = getattr(eval_fn, "__qualname__", type(eval_fn).__qualname__)
    return {"module": str(getattr(eval_fn, "__module__", "")), "name": str(name), "code_sha256": body}
