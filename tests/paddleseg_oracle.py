"""PaddleSeg's own transforms and inference helpers (paddleseg 2.8 wheel), loaded without
``paddleseg/__init__`` (which imports the training stack). The setup script installs the wheel
with --no-deps: a test oracle, never a runtime dependency."""
from __future__ import annotations

import importlib.util
import sys
import types


def load():
    """(paddleseg.transforms.transforms, paddleseg.core.infer), or None when paddleseg is not installed."""
    if "paddleseg.core.infer" not in sys.modules:
        spec = importlib.util.find_spec("paddleseg")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = list(spec.submodule_search_locations)[0]
        for name in ("paddleseg", "paddleseg.cvlibs", "paddleseg.transforms", "paddleseg.utils", "paddleseg.core"):
            if name not in sys.modules:
                module = types.ModuleType(name)
                module.__path__ = [root + name[len("paddleseg"):].replace(".", "/")]
                sys.modules[name] = module
    import paddleseg.core.infer as infer
    import paddleseg.transforms.transforms as T

    return T, infer
