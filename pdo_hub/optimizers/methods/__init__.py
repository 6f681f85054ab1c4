"""Built-in methods; importing this package registers them."""

from . import dynamic, svd  # noqa: F401
