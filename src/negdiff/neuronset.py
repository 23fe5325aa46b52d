"""NeuronSet: which neurons an intervention touches, as plain data.

A set maps layer -> sorted unique indices and carries the rule that made it (e.g. "top 1% WD per layer,
scan <hash>"), so every result file says exactly what was ablated. It round-trips through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from negdiff.errors import NegdiffError
from negdiff.sites import Site, neuron_name

FORMAT = "negdiff.neuronset/1"


def _integer(value: Any) -> int:
    """An integral value as int; floats with a fraction, bools and strings are refused (ValueError/TypeError)."""
    if isinstance(value, (bool, str)):
        raise TypeError(value)
    if hasattr(value, "item") and not isinstance(value, int):
        value = value.item()
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _as_index(values: Iterable[int] | torch.Tensor) -> torch.Tensor:
    idx = torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values, dtype=torch.long)
    return torch.unique(idx.flatten().cpu())  # sorted, unique


@dataclass
class NeuronSet:
    """A set of neurons: ``{layer: LongTensor of indices}`` plus the rule that selected them."""

    neurons: dict[int, torch.Tensor] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    #: the model it was selected on (LoadedModel.key(): spec, revision, weights_hash, n_layers, widths); None: unknown
    model: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        clean = {}
        for layer, idx in self.neurons.items():
            idx = _as_index(idx)
            if len(idx):
                clean[int(layer)] = idx
        self.neurons = dict(sorted(clean.items()))

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls) -> NeuronSet:
        """The empty set: an intervention with it is the baseline, bit for bit."""
        return cls({})

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], rule: dict | None = None) -> NeuronSet:
        """Build from ``(layer, index)`` pairs, e.g. ``[(3, 1021), (0, 2)]`` (what iterating a set gives back)."""
        by_layer: dict[int, list[int]] = {}
        for pair in pairs:
            try:
                layer, index = pair
                by_layer.setdefault(_integer(layer), []).append(_integer(index))
            except (TypeError, ValueError):
                raise NegdiffError(f"bad neuron {pair!r}: expected a (layer, index) pair of integers") from None
        return cls({k: torch.tensor(v, dtype=torch.long) for k, v in by_layer.items()}, rule or {})

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, Iterable[int]], rule: dict | None = None) -> NeuronSet:
        """Build from ``{layer: indices}`` (lists, ranges, tensors or arrays), the shape a notebook writes by hand.

        Unlike the bare constructor it checks that layers and indices are integers, so ``{"3": [1.5]}`` is
        a one-line error rather than a silently truncated index.
        """
        neurons = {}
        for layer, idx in mapping.items():
            try:
                values = idx.tolist() if hasattr(idx, "tolist") else list(idx)
                neurons[_integer(layer)] = torch.tensor([_integer(i) for i in values], dtype=torch.long)
            except (TypeError, ValueError):
                raise NegdiffError(f"bad neuron mapping at layer {layer!r}: expected {{layer: [indices]}} of "
                                   "integers") from None
        return cls(neurons, rule or {})

    @classmethod
    def coerce(cls, neurons: NeuronSetLike) -> NeuronSet:
        """Whatever names a set of neurons, as a NeuronSet: where the API expects one, any of these is taken.

        A NeuronSet (returned as is); ``{layer: indices}``; a neuron-set JSON dict (with ``"neurons"``);
        a path to a neuron-set JSON file; ``(layer, index)`` pairs; printed names like ``"L3.N1021"``.
        """
        if isinstance(neurons, NeuronSet):
            return neurons
        if isinstance(neurons, Mapping):
            if "neurons" in neurons and isinstance(neurons["neurons"], Mapping):
                return cls.from_dict(dict(neurons))
            return cls.from_mapping(neurons)
        if isinstance(neurons, (str, Path)):
            return cls.from_json(neurons)
        if isinstance(neurons, Iterable):
            items = list(neurons)
            if items and all(isinstance(x, str) for x in items):
                return cls.from_names(items)
            return cls.from_pairs(items)
        raise NegdiffError(f"cannot read a neuron set from {type(neurons).__name__}: give a NeuronSet, "
                           "{layer: indices}, (layer, index) pairs, names like 'L3.N1021' or a wn.json path")

    @classmethod
    def from_names(cls, names: Iterable[str], rule: dict | None = None) -> NeuronSet:
        """Build from printed names like ``L3.N1021``."""
        pairs = []
        for name in names:
            try:
                layer, index = name.strip().split(".")
                assert layer[0] == "L" and index[0] == "N"
                pairs.append((int(layer[1:]), int(index[1:])))
            except (ValueError, AssertionError, IndexError):
                raise NegdiffError(f"bad neuron name '{name}': expected the form L<layer>.N<index>, e.g. L3.N1021") from None
        return cls.from_pairs(pairs, rule)

    # ---------------------------------------------------------------- views
    @property
    def layers(self) -> list[int]:
        return list(self.neurons)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for layer, idx in self.neurons.items():
            for i in idx.tolist():
                yield layer, i

    def __contains__(self, item: tuple[int, int]) -> bool:
        layer, index = item
        idx = self.neurons.get(int(layer))
        return idx is not None and bool((idx == int(index)).any())

    def indices(self, layer: int) -> torch.Tensor:
        """Indices in ``layer`` (an empty tensor when none)."""
        return self.neurons.get(int(layer), torch.empty(0, dtype=torch.long))

    def counts(self) -> dict[int, int]:
        return {layer: len(idx) for layer, idx in self.neurons.items()}

    def names(self) -> list[str]:
        return [neuron_name(layer, i) for layer, i in self]

    # ---------------------------------------------------------------- algebra
    def union(self, other: NeuronSet) -> NeuronSet:
        layers = set(self.neurons) | set(other.neurons)
        return NeuronSet({k: torch.cat([self.indices(k), other.indices(k)]) for k in layers})

    def difference(self, other: NeuronSet) -> NeuronSet:
        out = {}
        for k, idx in self.neurons.items():
            keep = ~torch.isin(idx, other.indices(k))
            out[k] = idx[keep]
        return NeuronSet(out)

    def jaccard(self, other: NeuronSet) -> float:
        """|a & b| / |a | b| over (layer, neuron) pairs; NaN when both are empty (nothing to compare)."""
        sa, sb = set(self), set(other)
        union = len(sa | sb)
        return float("nan") if union == 0 else len(sa & sb) / union

    def restrict(self, layers: Iterable[int]) -> NeuronSet:
        """Only the given layers (layer-group ablations)."""
        keep = {int(x) for x in layers}
        return NeuronSet({k: v for k, v in self.neurons.items() if k in keep}, dict(self.rule, layers=sorted(keep)))

    def validate(self, sites: list[Site]) -> None:
        """Raise a clear error if a layer or index does not exist in the model."""
        by_layer = {s.layer: s for s in sites}
        for layer, idx in self.neurons.items():
            if layer not in by_layer:
                raise NegdiffError(f"neuron set names layer {layer}, but the model has layers 0..{len(sites) - 1}")
            width = by_layer[layer].width
            bad = idx[(idx < 0) | (idx >= width)]
            if len(bad):
                raise NegdiffError(
                    f"neuron {neuron_name(layer, int(bad[0]))} is out of range: layer {layer} has {width} neurons (0..{width - 1})"
                )

    def check_model(self, key: dict[str, Any], source: str) -> None:
        """Refuse a set made on another model (other weights, layers or widths), naming both; sets without a
        recorded model (older files) are only checked by :meth:`validate`."""
        made = self.model
        if not made:
            return
        same_shape = made.get("n_layers") == key.get("n_layers") and list(made.get("widths") or []) == list(key.get("widths") or [])
        hashes = made.get("weights_hash"), key.get("weights_hash")
        same_weights = None in hashes or hashes[0] == hashes[1]
        if not (same_shape and same_weights):
            raise NegdiffError(f"{source} was made on {describe_model(made)}, not on {describe_model(key)}; rerun "
                               "`negdiff scan` on this model, or use the model the file was made on")

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": FORMAT,
            "size": self.size,
            "rule": self.rule,
            "neurons": {str(k): v.tolist() for k, v in self.neurons.items()},
        }
        if self.model is not None:
            out["model"] = self.model
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            from negdiff.results import atomic_write_bytes

            atomic_write_bytes(path, text.encode())
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> NeuronSet:
        if not isinstance(data, dict) or "neurons" not in data or not isinstance(data["neurons"], dict):
            raise NegdiffError(f"{source}: not a negdiff neuron set (expected an object with a 'neurons' mapping)")
        try:
            neurons = {int(k): torch.tensor([int(i) for i in v], dtype=torch.long) for k, v in data["neurons"].items()}
        except (TypeError, ValueError):
            raise NegdiffError(f"{source}: neuron indices must be integers grouped by integer layer") from None
        model = data.get("model")
        return cls(neurons, data.get("rule", {}), model if isinstance(model, dict) else None)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> NeuronSet:
        """Load from a JSON file path or JSON text."""
        source = "<json>"
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise NegdiffError(f"neuron set file not found: {path}")
            source, text = str(path), path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NegdiffError(f"{source}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, source)


def describe_model(key: dict[str, Any]) -> str:
    """A model key in words: spec@revision (weights abc123...), L layers x widths."""
    widths = sorted(set(key.get("widths") or []))
    w = "x".join(map(str, widths)) if len(widths) == 1 else "/".join(map(str, widths)) or "?"
    rev = f"@{key['revision']}" if key.get("revision") else ""
    h = f", weights {str(key['weights_hash'])[:12]}" if key.get("weights_hash") else ""
    return f"'{key.get('spec')}{rev}' ({key.get('n_layers')} layers x {w} neurons{h})"


#: What :meth:`NeuronSet.coerce` accepts wherever the API expects a neuron set.
NeuronSetLike = NeuronSet | Mapping[int, Iterable[int]] | Iterable[tuple[int, int]] | Iterable[str] | str | Path
