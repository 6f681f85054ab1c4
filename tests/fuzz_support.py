"""What the hostile-input tests (`test_fuzz_*.py`) share: example counts and strategies for junk.

Each property runs a share of `PDO_HUB_FUZZ_EXAMPLES` examples (default 100, small enough for a shared 2-core
machine: cheap properties run up to 3 times as many, slow ones a third); set it higher for a long local run,
e.g. `PDO_HUB_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("PDO_HUB_FUZZ_EXAMPLES", "100"))


def fuzz_settings(share: float = 1.0) -> settings:
    """Settings for one property: `share` of `EXAMPLES` examples (at least 10), no deadline (CI is slow), and
    no example database (it would be written into the working directory; a failure prints its example).

    Function-scoped fixtures (tmp_path, the autouse cache fixture) are shared by the examples on purpose:
    each example overwrites the files it reads, so what an earlier one left cannot change the outcome.
    """
    return settings(max_examples=max(10, int(EXAMPLES * share)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# Names that would be dangerous if anything treated them as code or paths to follow.
NASTY_WORDS = [
    "", ".", "..", "../..", "/", "//", "/etc/passwd", "..\\..", "\x00", "a\x00b", "\n", "main\n", "~", "$HOME",
    "__class__", "__init__", "__import__", "__builtins__", "os.system", "subprocess:run", "builtins.eval",
    "pdo_hub_fuzz_canary", "torch.load", "pickle.loads", "x" * 300, "é", "\ud800", "AutoModel", "Linear",
    "refs/pr/1", "a" * 40, "A" * 64, "-", "--", "models--a--b", "con", "NUL", "1e400", "nan", "inf",
]

nasty_text = st.one_of(st.sampled_from(NASTY_WORDS), st.text(max_size=40),
                       st.text(alphabet="./\\-_:@%~aZ09\x00\n ", max_size=30))
numbers = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 10**30, 10**400, 2**63, -2**63]))
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy, junk: st.SearchStrategy = json_values) -> st.SearchStrategy:
    """`good` three times in four: hostile input must also get past the first check to reach the code behind it."""
    return st.integers(min_value=0, max_value=3).flatmap(lambda pick: good if pick else junk)


def mapping_like(keys, values=json_values) -> st.SearchStrategy[dict]:
    """Dicts whose keys are mostly the expected ones (so validation gets past the first check) plus junk."""
    return st.dictionaries(st.one_of(st.sampled_from(list(keys)), nasty_text), values, max_size=len(keys) + 2)


@contextlib.contextmanager
def canary_module(folder: Path, name: str) -> Iterator[None]:
    """Within the block a module `name` can be imported, and importing it fails loudly (SystemExit, which no
    `except Exception` swallows); afterwards, checks that nothing did."""
    (folder / f"{name}.py").write_text("raise SystemExit('pdo-hub imported a module named by a downloaded file')\n")
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
    assert name not in sys.modules, f"{name} was imported"


def result_or_refusal(call, *args, refusal: type[Exception] | tuple[type[Exception], ...], **kwargs):
    """`(result, None)`, or `(None, error)` when `call` refuses with `refusal`; any other exception fails the
    property. A refusal must say what is wrong: an error without a message fails it too."""
    try:
        return call(*args, **kwargs), None
    except refusal as err:
        assert str(err).strip(), f"{type(err).__name__} raised without a message"
        return None, err
