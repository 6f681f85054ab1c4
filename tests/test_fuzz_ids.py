"""Hostile repo ids, revisions, ref names and file paths: each is valid or a pdo-hub error, and whatever
passes maps to a folder inside its root (no `..`, no absolute path, no separator smuggled into a name)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from fuzz_support import fuzz_settings, nasty_text, result_or_refusal
from hypothesis import example, given
from hypothesis import strategies as st

from pdo_hub.cache.keys import CacheKey, validate_ref_name, validate_revision, validate_source_id
from pdo_hub.cache.layout import entry_dir, parse_repo_folder, ref_path, repo_folder_name
from pdo_hub.core.errors import ConfigError, InvalidRepoIdError, PdoHubError
from pdo_hub.serve import validate_path, validate_repo_id
from pdo_hub.serve._records import repo_folder
from pdo_hub.serve._records import validate_ref_name as validate_serve_ref_name
from pdo_hub.sources import parse_source

ROOT = PurePosixPath("/cache-root")  # never touched: the checks are on the path strings only
KINDS = ("huggingface", "torchvision", "local")
_part = st.one_of(nasty_text, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True))
ids = st.one_of(nasty_text, st.builds(lambda a, b: f"{a}/{b}", _part, _part), _part)
revisions = st.one_of(nasty_text, st.from_regex(r"[0-9a-fA-F]{38,66}", fullmatch=True),
                      st.builds(lambda a, b: f"{a}/{b}", _part, _part))


def _inside(path: os.PathLike | str, root: PurePosixPath, *, newline_ok: bool = False) -> None:
    """`path` names something strictly below `root`, with no `.`/`..` part and no NUL (nor a newline, for ids:
    git and the Hub allow one in a file name, never in a repo id or ref)."""
    text = str(path)
    assert os.path.normpath(text) == text, f"{text!r} is not normalized ('.', '..' or '//' in it)"
    relative = PurePosixPath(text).relative_to(root)
    assert relative.parts and all(part not in (".", "..") for part in relative.parts), text
    assert "\x00" not in text and (newline_ok or "\n" not in text), text


@fuzz_settings(2)
@given(st.sampled_from(KINDS), ids)
@example("huggingface", "org/name\n")
@example("huggingface", "a" * 97)
def test_source_ids_are_valid_or_refused_and_stay_in_the_cache(kind, source_id):
    try:
        validate_source_id(kind, source_id)
    except InvalidRepoIdError:
        return
    folder = repo_folder_name(kind, source_id)
    assert "/" not in folder and parse_repo_folder(folder) == (kind, source_id)
    revision = "a" * (40 if kind == "huggingface" else 64)
    _inside(entry_dir(ROOT, CacheKey(kind, source_id, revision, "0" * 64)), ROOT)


@fuzz_settings()
@given(st.sampled_from(KINDS), revisions)
def test_revisions_are_immutable_hex_ids_or_refused(kind, revision):
    try:
        value = validate_revision(kind, revision)
    except InvalidRepoIdError:
        return
    assert len(value) == (40 if kind == "huggingface" else 64) and set(value) <= set("0123456789abcdef")


@fuzz_settings()
@given(revisions)
@example("refs/pr/1")
@example("main\n")
def test_ref_names_are_valid_or_refused_and_stay_under_refs(ref_name):
    _, refused = result_or_refusal(validate_ref_name, ref_name, refusal=InvalidRepoIdError)
    if refused is None:
        assert "\n" not in ref_name and ".." not in ref_name.split("/")
        _inside(ref_path(ROOT, "huggingface", "org/name", ref_name), ROOT / "models--org--name" / "refs")


@fuzz_settings(2)
@given(st.one_of(nasty_text, st.builds(lambda p, s, r: f"{p}{s}{r}",
                                       st.sampled_from(["hf:", "huggingface:", "torchvision:", "local:", ""]),
                                       ids, st.one_of(st.just(""), st.builds("@{}".format, revisions),
                                                      st.builds(":{}".format, _part)))),
       st.one_of(st.none(), revisions))
@example("x" * 5000, None)  # too long a name for the file system to look up
@example("hf:org/name.", None)
def test_source_specs_parse_or_raise_config_error(text, revision):
    spec, refused = result_or_refusal(parse_source, text, revision=revision, refusal=ConfigError)
    if refused is not None:
        return
    assert spec.kind in ("huggingface", "torchvision", "local")
    if spec.kind == "huggingface":
        validate_source_id("huggingface", spec.id)  # parse_source applies the cache's id rules itself
        try:
            validate_ref_name(spec.revision or "main")
        except InvalidRepoIdError:
            return  # refused when it would be recorded under refs/
        _inside(ref_path(ROOT, "huggingface", spec.id, spec.revision or "main"), ROOT)


@fuzz_settings(2)
@given(ids)
@example("org/name\n")   # `$` in a pattern matches before a final newline
@example("a" * 5000)     # the part would be a folder name past the file system's limit
def test_served_repo_ids_are_valid_or_refused_and_stay_in_the_store(repo_id):
    try:
        validate_repo_id(repo_id)
    except InvalidRepoIdError:
        return
    folder = repo_folder(ROOT, repo_id)
    _inside(folder, ROOT)
    assert len(folder.relative_to(ROOT).parts) == 2
    assert all(len(part.encode()) <= 255 for part in folder.parts)


@fuzz_settings(2)
@given(st.one_of(nasty_text, st.lists(_part, min_size=1, max_size=4).map("/".join)))
@example("a/\ud800.txt")  # a lone surrogate cannot be encoded: it must not reach the commit hash or a file name
@example("a/../b")
def test_file_paths_are_valid_or_refused_and_stay_in_the_repo(path):
    _, refused = result_or_refusal(validate_path, path, refusal=InvalidRepoIdError)
    if refused is None:
        assert not path.startswith("/") and ".." not in path.split("/")
        _inside(ROOT / path, ROOT, newline_ok=True)
        path.encode("utf-8")


@fuzz_settings()
@given(revisions)
@example("main\n")
def test_served_branch_names_are_valid_or_refused(name):
    try:
        validate_serve_ref_name(name)
    except PdoHubError:
        return
    assert "\n" not in name and ".." not in name and not name.startswith("/")
