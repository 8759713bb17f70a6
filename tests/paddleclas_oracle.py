"""PaddleClas's own deploy code (paddleclas==2.6.0, installed with --no-deps) as a test oracle.

``paddleclas/__init__.py`` imports the whole training stack (faiss, visualdl, ...), so the
package objects are created empty and only deploy/python/{preprocess,postprocess}.py load.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def load():
    if "paddleclas.deploy.python" in sys.modules:
        from paddleclas.deploy.python import postprocess, preprocess

        return preprocess, postprocess
    spec = importlib.util.find_spec("paddleclas")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("paddleclas is not installed (the README setup installs it with --no-deps as a test oracle)")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in [("paddleclas", ""), ("paddleclas.deploy", "/deploy"), ("paddleclas.deploy.python", "/deploy/python"),
                      ("paddleclas.deploy.utils", "/deploy/utils")]:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [root + sub]
            sys.modules[name] = module
    from paddleclas.deploy.python import postprocess, preprocess

    return preprocess, postprocess
