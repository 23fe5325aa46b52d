"""negdiff: find Wasserstein neurons in causal LMs and test what their negative pre-activations do.

The public API, in pipeline order: load a model and its activation sites, read (``capture``) or edit
(``intervene``) pre-activations, select neurons as a ``NeuronSet``. The names are imported on first use
(PEP 562), so ``import negdiff`` and ``negdiff --help`` do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from negdiff.errors import NegdiffError

#: public name -> the module that defines it
_API = {
    "MODES": "negdiff.choices",
    "capture": "negdiff.hooks",
    "intervene": "negdiff.hooks",
    "LoadedModel": "negdiff.models",
    "ModelInfo": "negdiff.models",
    "load_model": "negdiff.models",
    "NeuronSet": "negdiff.neuronset",
    "Site": "negdiff.sites",
    "neuron_name": "negdiff.sites",
    "resolve": "negdiff.sites",
}

__all__ = ["MODES", "LoadedModel", "ModelInfo", "NegdiffError", "NeuronSet", "Site", "capture", "intervene",
           "load_model", "neuron_name", "resolve"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'negdiff' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
