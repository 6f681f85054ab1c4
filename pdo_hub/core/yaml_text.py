"""YAML from files and request bodies pdo-hub does not control, with one failure type.

PyYAML's safe loader never builds objects from tags, but besides `yaml.YAMLError` it also fails with
ValueError (a timestamp such as `2020-13-45`, an integer past Python's 4300-digit limit) and
RecursionError (deeply nested flow collections). Callers turn `yaml.YAMLError` into their own error or
answer; these two would otherwise escape as tracebacks (or a 500 from `pdo-hub serve`).
"""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: str) -> Any:
    """`yaml.safe_load(text)`, failing only with `yaml.YAMLError`.

    Raises:
        yaml.YAMLError: the text is not valid YAML, or a value in it cannot be constructed.
    """
    try:
        return yaml.safe_load(text)
    except (ValueError, RecursionError) as err:
        raise yaml.YAMLError(f"{type(err).__name__}: {err}") from err
