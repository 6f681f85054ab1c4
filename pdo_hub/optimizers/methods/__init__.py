"""Built-in methods; importing this package registers them."""

from . import dynamic, svd  # noqa: F401
from . import fx, qat, quanto, static  # noqa: F401  (quantization, issue 4)
from . import hlrtf, prune, tucker  # noqa: F401  (factorization and pruning, issue 5)
