"""negdiff: find Wasserstein neurons in causal LMs and test what their negative pre-activations do.

The public API, in pipeline order: load a model and its activation sites, read (``capture``) or edit
(``intervene``) pre-activations, select neurons as a ``NeuronSet``, score tasks (``evaluate``, which
records the ``intervene`` blocks it runs inside) and write them (``write_results``). docs/api.md is the
reference. The names are imported on first use (PEP 562), so ``import negdiff`` and ``negdiff --help``
do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from negdiff.errors import NegdiffError

#: public name -> the module that defines it
_API = {
    "MODES": "negdiff.choices",
    "Intervention": "negdiff.hooks",
    "active_interventions": "negdiff.hooks",
    "capture": "negdiff.hooks",
    "intervene": "negdiff.hooks",
    "EvalConfig": "negdiff.tasks",
    "evaluate": "negdiff.evaluate",
    "write_results": "negdiff.evaluate",
    "random_like": "negdiff.select",
    "select_lowest": "negdiff.select",
    "select_wasserstein": "negdiff.select",
    "LoadedModel": "negdiff.models",
    "ModelInfo": "negdiff.models",
    "load_model": "negdiff.models",
    "NeuronSet": "negdiff.neuronset",
    "Site": "negdiff.sites",
    "neuron_name": "negdiff.sites",
    "resolve": "negdiff.sites",
}

__all__ = ["MODES", "EvalConfig", "Intervention", "LoadedModel", "ModelInfo", "NegdiffError", "NeuronSet", "Site",
           "active_interventions", "capture", "evaluate", "intervene", "load_model", "neuron_name", "random_like",
           "resolve", "select_lowest", "select_wasserstein", "write_results"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'negdiff' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
