"""One lock around pdo-hub's first uses of transformers' lazily imported names.

transformers imports a module the first time one of its names is used (`transformers.AutoModel`, the model
class `from_config` picks). Threads doing that at once can get a module another thread is still importing,
and then an AttributeError ("AutoModel is not an Auto model class" in 8 threads asking for a first model).
pdo-hub takes this lock for those first uses; once a name is imported, it is not needed any more.
"""

from __future__ import annotations

import threading

#: Held while resolving a transformers name or building the first model of a class.
LAZY_IMPORTS = threading.RLock()
