"""Small file helpers of the repo store: atomic JSON writes, chunked reads, folder listing, two locks held as one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

_CHUNK = 1024 * 1024
FileSource = Mapping[str, bytes | Path] | Path | str


class BothLocks:
    """Hold a thread lock and a file lock together (the file lock alone is per-process on some platforms)."""

    def __init__(self, *locks) -> None:
        self._locks = locks

    def __enter__(self) -> None:
        for lock in self._locks:
            lock.acquire()

    def __exit__(self, *exc) -> None:
        for lock in reversed(self._locks):
            lock.release()


def as_mapping(files: FileSource) -> Mapping[str, bytes | Path]:
    if isinstance(files, Mapping):
        return files
    folder = Path(files)
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot publish {folder}: not a folder (pass a folder or a {{path: bytes}} dict).")
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts}


def chunks(source: bytes | Path):
    if isinstance(source, (bytes, bytearray)):
        yield bytes(source)
        return
    with open(source, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
