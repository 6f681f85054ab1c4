"""Writing safetensors files whose bytes depend on their content only.

safetensors keeps a file's string metadata in a Rust `HashMap`, whose iteration order changes from
one map to the next: the same tensors and the same metadata (pdo-hub stores three keys: `format`,
`pdo_recipe`, `pdo_state_spec`) came out as different bytes from one save to the next, in the same
process too. A variant must be byte-reproducible (same inputs, config and machine: same sha256), so
the header is rewritten with its metadata keys sorted; the tensor data is copied unchanged, since
its offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

from safetensors.torch import save_file

_ALIGNMENT = 8  # the format pads its header with spaces to a multiple of 8 bytes


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with a canonical header: metadata keys sorted, tensors by offset."""
    save_file(tensors, path, metadata=metadata)
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        raw = handle.read(length)
    header = json.loads(raw)
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _ALIGNMENT)
    if text == raw:
        return
    canonical = f"{os.fspath(path)}.canonical"
    try:
        with open(path, "rb") as source, open(canonical, "wb") as target:
            source.seek(8 + length)
            target.write(struct.pack("<Q", len(text)))
            target.write(text)
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)
        os.replace(canonical, path)
    finally:
        if os.path.exists(canonical):
            os.unlink(canonical)
