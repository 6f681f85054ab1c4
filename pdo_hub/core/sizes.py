"""Byte sizes as people write them (`500MB`, `2GiB`, `1.5G`, `1048576`) and as pdo-hub prints them.

Units are powers of 1024 whatever the spelling (`MB` = `MiB` = 2^20 bytes): pdo-hub prints every size
that way (reports, `pdo-hub cache ls`), so a limit typed from a printed size means the same bytes.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[KMGT])(?:I(?=B))?)?B?", re.IGNORECASE)


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from a size such as `500MB`, `2GiB`, `1.5G`, `800k` or a plain number of bytes.

    Args:
        text: The size; an int is taken as bytes.
        what: What the size is for, named in the error (e.g. `PDO_HUB_CACHE_MAX_SIZE`, `--max-size`).

    Returns:
        The size in bytes (fractions of a byte are dropped).

    Raises:
        ConfigError: for anything that is not a non-negative number with an optional unit.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(
            f"{what}={text!r} is not a size: use bytes or a number with a unit K, M, G or T (B and iB optional, "
            "powers of 1024), e.g. 500MB, 2GiB, 1.5G."
        )
    return int(float(match["number"]) * 1024 ** _UNITS[(match["unit"] or "").upper()])


def format_size(size: int) -> str:
    """`1536` -> `1.5 KB` (powers of 1024, one decimal; bytes below 1 KB)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
