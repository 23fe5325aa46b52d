"""negdiff: find Wasserstein neurons in causal LMs and test what their negative pre-activations do.

The public API, in pipeline order: load a model and its activation sites, read (``capture``) or edit
(``intervene``) pre-activations, select neurons as a ``NeuronSet``.
"""

from negdiff.errors import NegdiffError
from negdiff.hooks import MODES, capture, intervene
from negdiff.models import LoadedModel, ModelInfo, load_model
from negdiff.neuronset import NeuronSet
from negdiff.sites import Site, neuron_name, resolve

__all__ = [
    "MODES",
    "LoadedModel",
    "ModelInfo",
    "NegdiffError",
    "NeuronSet",
    "Site",
    "capture",
    "intervene",
    "load_model",
    "neuron_name",
    "resolve",
]
__version__ = "0.1.0"
