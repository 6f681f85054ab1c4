"""Parsing of the NDJSON body of `POST /api/models/{repo}/commit/{rev}`, line by line.

The body is read one line at a time from its spooled file, and inline base64 contents larger than
`_INLINE_MAX` are decoded in slices straight into a staging file: a big file's line is held in
memory once (as the parsed JSON string), never the whole body and never the decoded bytes too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pdo_hub.serve._http import Body, HubHTTPError
from pdo_hub.serve._records import validate_path

_INLINE_MAX = 1024 * 1024  # decoded contents up to this size stay in memory
_SLICE = 4 * 1024 * 1024  # base64 characters decoded at a time (a multiple of 4)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass
class CommitPlan:
    """What one commit request asks for."""

    header: dict = field(default_factory=dict)
    add: dict[str, bytes | Path] = field(default_factory=dict)
    lfs: dict[str, str] = field(default_factory=dict)  # path -> sha256 of an already stored blob
    delete: list[str] = field(default_factory=list)
    delete_folders: list[str] = field(default_factory=list)


def parse_commit(body: Body, staging: Path) -> CommitPlan:
    """Read every line of a commit body; large inline files are decoded into files under `staging`.

    Raises:
        HubHTTPError: 400 for a line that is not a `{key, value}` object, an unknown key, a bad path,
            bad base64 or a malformed header.
    """
    plan = CommitPlan()
    for number, line in enumerate(body.lines(), start=1):
        if not line.strip():
            continue
        key, value = _parse_line(line, number)
        del line  # drop the raw bytes before decoding: only the parsed string stays in memory
        if key == "header":
            _check_header(value, number)
            plan.header = value
        elif key == "file":
            plan.add[_path(value, number)] = _decode_content(value, staging / f"line-{number}", number)
        elif key == "lfsFile":
            oid = value.get("oid")
            if not isinstance(oid, str) or not _SHA256_HEX.match(oid):
                raise _bad(number, "an lfsFile needs a lowercase hex sha256 'oid'")
            plan.lfs[_path(value, number)] = oid
        elif key == "deletedFile":
            plan.delete.append(_path(value, number))
        elif key == "deletedFolder":
            value = {**value, "path": str(value.get("path", "")).rstrip("/")}
            plan.delete_folders.append(_path(value, number))
        else:
            raise _bad(number, f"unsupported key {key!r}")
    return plan


def _parse_line(line: bytes, number: int) -> tuple[str, dict]:
    try:
        item = json.loads(line)
    except (ValueError, RecursionError) as err:  # also UnicodeDecodeError; RecursionError: nested too deep
        raise _bad(number, "not valid JSON") from err
    if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("value"), dict):
        raise _bad(number, "not a {key, value} JSON object")
    return item["key"], item["value"]


def _check_header(value: dict, number: int) -> None:
    for name in ("summary", "description", "parentCommit"):
        if value.get(name) is not None and not isinstance(value[name], str):
            raise _bad(number, f"header field {name!r} must be a string")


def _path(value: dict, number: int) -> str:
    try:
        return validate_path(value.get("path"))
    except ValueError as err:
        raise _bad(number, str(err)) from err


def _decode_content(value: dict, target: Path, number: int) -> bytes | Path:
    content = value.get("content", "")
    if not isinstance(content, str):
        raise _bad(number, "'content' must be a string")
    if value.get("encoding", "base64") != "base64":
        try:
            return content.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate escaped in the JSON
            raise _bad(number, f"the content of {value.get('path')!r} is not valid Unicode text") from err
    # b64decode(validate=True) checks the alphabet and the padding of one slice; a '=' anywhere but
    # in the last two characters would otherwise be accepted between slices.
    if len(content) % 4 or content.find("=", 0, max(len(content) - 2, 0)) >= 0:
        raise _bad(number, f"the content of {value.get('path')!r} is not valid base64")
    try:
        if len(content) <= _INLINE_MAX // 3 * 4:
            return base64.b64decode(content, validate=True)
        with open(target, "wb") as out:
            for start in range(0, len(content), _SLICE):
                out.write(base64.b64decode(content[start:start + _SLICE], validate=True))
        return target
    except (binascii.Error, ValueError) as err:  # ValueError: non-ASCII characters
        raise _bad(number, f"the content of {value.get('path')!r} is not valid base64") from err


def _bad(number: int, what: str) -> HubHTTPError:
    return HubHTTPError(400, "BadRequest", f"Commit line {number}: {what}.")
