"""NIR (Neuromorphic Intermediate Representation) export and import.

``to_nir(net)`` writes a :class:`~delgrad.network.Network` (TTFS) or a
:class:`~delgrad.multi.MultiNetwork` (multi-spike, optional recurrent layers, leaky-integrator
readout) as a ``nir.NIRGraph``; ``from_nir(graph)`` reads such a graph back, or one written by
another library, as long as it is a chain ``Input -> [projection] -> CubaLIF -> ... -> CubaLIF
or CubaLI -> Output`` (a projection is any sequence of ``Linear``, ``Affine`` with zero bias,
``Delay``, ``Scale``; a ``CubaLIF`` may also feed a projection back into itself: a recurrent
layer). ``save_nir`` / ``load_nir`` go through ``nir.write`` / ``nir.read`` (HDF5).

The parameter mapping. NIR's CubaLIF is

    tau_syn dI/dt = -I + w_in S          tau_mem dV/dt = (v_leak - V) + r I

with ``S`` a sum of Dirac pulses, one per incoming spike, each of area ``w`` (the Linear's
weight). A pulse makes ``I`` jump by ``w_in w / tau_syn``, and ``J = r I / tau_mem`` obeys
delgrad's ``dV/dt = -V/tau_m + J``, ``dJ/dt = -J/tau_s`` with a jump of
``w r w_in / (tau_mem tau_syn)``. So a NIR weight ``w`` into neuron ``j`` is the delgrad weight
``w * r_j w_in_j / (tau_mem tau_syn)``, and delgrad exports with ``r = tau_m``, ``w_in = tau_s``
(factor exactly 1: weights are written as they are), ``v_leak = v_reset = 0``,
``v_threshold = theta``. CubaLI is the same without threshold: the readout's ``V`` is NIR's
``v``. NIR resets to ``v_reset``; delgrad's multi-spike reset is to 0, so ``v_reset`` must be 0
(for a crossing in continuous time this is also NIR's subtractive reset ``v - v_threshold``).

Delays, one ``Delay`` node per delayed projection: axonal (per source) before the ``Linear``,
dendritic (per target) after it, synaptic ``(n_out, n_in)`` by fanning out every source to one
channel per synapse: ``Linear`` of 0/1 (``(n_out n_in, n_in)``, channel ``j n_in + i`` carries
source ``i``), ``Delay`` of ``D.ravel()``, then a ``Linear`` ``(n_out, n_out n_in)`` holding
``W[j, i]`` at column ``j n_in + i``. Exact, but the two matrices hold
``n_out n_in (n_in + n_out)`` numbers (dense, as NIR's Linear is).

What NIR cannot say (the time-to-first-spike mode, ``t_ref``, ``t_end``, the readout's kind,
window and ``tau_w``, the readout neuron's unused ``theta``) travels as JSON in the graph's
``metadata["delgrad"]``, so a graph written here loads back as the same network; other
simulators ignore it (see the README's table).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:
    import nir
except ImportError as e:  # an optional extra; the rest of delgrad works without it
    raise ImportError("delgrad.nir needs the 'nir' package: pip install 'delgrad[nir]'") from e

from delgrad._core import Neuron, ParameterError, ShapeError
from delgrad.multi import READOUT_KINDS, MultiNetwork, Readout
from delgrad.network import Layer, Network, neuron_meta

__all__ = ["from_nir", "load_nir", "save_nir", "to_nir"]

META_KEY = "delgrad"
META_FORMAT = 1


# --- export ----------------------------------------------------------------------------------


def to_nir(net: Network | MultiNetwork) -> nir.NIRGraph:
    """The network as a NIR graph (see the module docstring for the mapping).

    Node names: ``input``, per layer ``l`` a projection ``layer{l}_*`` into the neurons
    ``layer{l}`` (``CubaLIF``), recurrent projections ``layer{l}_rec_*``, for a
    :class:`MultiNetwork` the readout ``readout_*`` into ``readout`` (``CubaLI``), and ``output``.
    """
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    meta: dict[str, Any] = {"format": META_FORMAT, "neuron": neuron_meta(net.neuron)}
    n_in = net.layers[0].shape[1]
    nodes["input"] = nir.Input(input_type={"input": np.array([n_in])})
    if isinstance(net, MultiNetwork):
        meta["network"] = "MultiNetwork"
        rec: list[Layer | None] = net.recurrent
    elif isinstance(net, Network):
        meta["network"] = "Network"
        rec = [None] * len(net.layers)
    else:
        raise TypeError(f"to_nir: expected a delgrad Network or MultiNetwork, got {type(net).__name__}")
    if net.neuron.t_ref > 0:
        warnings.warn(
            f"to_nir: NIR's CubaLIF has no refractory time; t_ref = {net.neuron.t_ref} is kept only in "
            "the graph's delgrad metadata, and other simulators will run the neurons without it",
            stacklevel=2,
        )
    src, width = "input", n_in
    for index, layer in enumerate(net.layers):
        name = f"layer{index}"
        nodes[name] = _cuba_lif(net.neuron, layer.shape[0])
        _projection(nodes, edges, name, layer, src, name)
        if rec[index] is not None:
            _projection(nodes, edges, f"{name}_rec", rec[index], name, name)
        src, width = name, layer.shape[0]
    if isinstance(net, MultiNetwork):
        r = net.readout
        meta["readout_neuron"] = neuron_meta(r.neuron)
        meta["readout"] = {"kind": r.kind, "t_end": r.t_end, "tau_w": r.tau_w}
        n = r.layer.shape[0]
        nodes["readout"] = nir.CubaLI(
            tau_syn=np.full(n, r.neuron.tau_s),
            tau_mem=np.full(n, r.neuron.tau_m),
            r=np.full(n, r.neuron.tau_m),
            v_leak=np.zeros(n),
            w_in=np.full(n, r.neuron.tau_s),
        )
        _projection(nodes, edges, "readout", r.layer, src, "readout")
        src, width = "readout", n
    nodes["output"] = nir.Output(output_type={"output": np.array([width])})
    edges.append((src, "output"))
    # JSON in one string: h5py cannot store None (tau_w) and this keeps the types exact.
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={META_KEY: json.dumps(meta)})


def _cuba_lif(n: Neuron, size: int) -> nir.CubaLIF:
    return nir.CubaLIF(
        tau_syn=np.full(size, n.tau_s),
        tau_mem=np.full(size, n.tau_m),
        r=np.full(size, n.tau_m),
        v_leak=np.zeros(size),
        v_threshold=np.full(size, n.theta),
        v_reset=np.zeros(size),
        w_in=np.full(size, n.tau_s),
    )


def _projection(
    nodes: dict[str, Any], edges: list[tuple[str, str]], name: str, layer: Layer, src: str, dst: str
) -> None:
    """Adds the nodes of one weight matrix with its delays, from ``src`` to ``dst``."""
    w = np.array(layer.weights, dtype=np.float64)
    n_out, n_in = w.shape
    kind, d = layer.delay_kind, np.array(layer.delays, dtype=np.float64)
    if kind == "none":
        chain = [(f"{name}_linear", nir.Linear(weight=w))]
    elif kind == "axonal":
        chain = [(f"{name}_delay", nir.Delay(delay=d)), (f"{name}_linear", nir.Linear(weight=w))]
    elif kind == "dendritic":
        chain = [(f"{name}_linear", nir.Linear(weight=w)), (f"{name}_delay", nir.Delay(delay=d))]
    else:  # synaptic
        k = np.arange(n_out * n_in)
        fan = np.zeros((n_out * n_in, n_in))
        fan[k, k % n_in] = 1.0
        block = np.zeros((n_out, n_out * n_in))
        block[k // n_in, k] = w.ravel()
        chain = [
            (f"{name}_fanout", nir.Linear(weight=fan)),
            (f"{name}_delay", nir.Delay(delay=d.ravel())),
            (f"{name}_linear", nir.Linear(weight=block)),
        ]
    prev = src
    for key, node in chain:
        nodes[key] = node
        edges.append((prev, key))
        prev = key
    edges.append((prev, dst))


def save_nir(net: Network | MultiNetwork, path: str | Path) -> None:
    """Writes ``to_nir(net)`` to an HDF5 file with ``nir.write``."""
    nir.write(path, to_nir(net))


def load_nir(path: str | Path, **kwargs: Any) -> Network | MultiNetwork:
    """``from_nir`` of the graph in a NIR (HDF5) file."""
    return from_nir(nir.read(path), **kwargs)


# --- import ----------------------------------------------------------------------------------

# Nodes that only relabel channels: NIR's Flatten (delgrad channels are C-order flat indices)
# and the Input/Output nodes of a nested subgraph once it is spliced into its parent.
_PASS_TYPES = ("Flatten",)
_PROJECTION_TYPES = ("Linear", "Affine", "Delay", "Scale")
_NEURON_TYPES = ("CubaLIF", "CubaLI")

_NO_FORM = {
    "LIF": "it has no synaptic current (an input spike makes V jump), while every delgrad neuron "
    "integrates a current with tau_s > 0; there is no exact delgrad form (CubaLIF is)",
    "LI": "it has no synaptic current (an input spike makes V jump), while delgrad's readout "
    "integrates a current with tau_s > 0; there is no exact delgrad form (CubaLI is)",
    "IF": "it has neither leak nor synaptic current; delgrad's neurons have both (CubaLIF)",
    "I": "it has neither leak nor synaptic current; delgrad's neurons have both (CubaLI)",
    "Threshold": "a bare threshold has no delgrad form (thresholds belong to CubaLIF)",
    "Conv1d": "delgrad layers are fully connected (write the convolution as a Linear)",
    "Conv2d": "delgrad layers are fully connected (write the convolution as a Linear)",
    "SumPool2d": "delgrad layers are fully connected (write the pooling as a Linear)",
    "AvgPool2d": "delgrad layers are fully connected (write the pooling as a Linear)",
}


@dataclass
class _Pass:
    """A spliced subgraph's Input or Output: passes channels through unchanged."""

    of: str


@dataclass
class _Stage:
    """One neuron node and the projections into it (from the layer below and from itself)."""

    name: str
    node: Any
    ff: list[str] = field(default_factory=list)
    rec: list[str] | None = None


def from_nir(
    graph: nir.NIRGraph | str | Path,
    *,
    mode: str | None = None,
    t_end: float | None = None,
    readout_kind: str | None = None,
    tau_w: float | None = None,
) -> Network | MultiNetwork:
    """A delgrad network from a NIR graph (a ``nir.NIRGraph`` or the path of a NIR file).

    A graph written by :func:`to_nir` comes back as the network it was made from. Any other
    graph is read by its nodes: ending in a ``CubaLI`` it is a :class:`MultiNetwork`, whose
    readout needs the window ``t_end`` (NIR has none) and takes ``readout_kind`` (``"max"`` by
    default) and ``tau_w``; ending in a ``CubaLIF`` it has no readout and loads only as a
    time-to-first-spike :class:`Network` with ``mode="ttfs"`` (each neuron's first spike only).
    These keywords override the graph's delgrad metadata.

    Raises ``ValueError`` (``ParameterError``, ``ShapeError``) naming the node and the field for
    anything delgrad cannot represent exactly.
    """
    if isinstance(graph, (str, Path)):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"from_nir: expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    if mode not in (None, "ttfs", "multi"):
        raise ParameterError(f"from_nir: mode must be 'ttfs', 'multi' or None, got {mode!r}")
    if readout_kind is not None and readout_kind not in READOUT_KINDS:
        raise ParameterError(f"from_nir: readout_kind must be one of {READOUT_KINDS}, got {readout_kind!r}")
    meta = _read_meta(graph)
    nodes, edges = _flatten(graph)
    n_in, stages = _stages(nodes, edges)

    ends_in_readout = type(stages[-1].node).__name__ == "CubaLI"
    if mode is None:
        if "network" in meta:
            mode = "ttfs" if meta["network"] == "Network" else "multi"
        elif ends_in_readout:
            mode = "multi"
        else:
            raise ShapeError(
                f"nir: the graph ends in the spiking node {stages[-1].name!r} (CubaLIF) and has no "
                "readout (CubaLI): a MultiNetwork needs one; pass mode='ttfs' to load it as a "
                "time-to-first-spike Network (each neuron's first spike only)"
            )
    hidden = stages[:-1] if ends_in_readout else stages
    if not hidden:
        raise ShapeError("nir: the graph has no spiking layer (CubaLIF) before its readout")
    if mode == "ttfs":
        if ends_in_readout:
            raise ShapeError(
                f"nir: mode='ttfs' but the graph ends in the readout {stages[-1].name!r} "
                "(CubaLI); a TTFS Network's output is its last spiking layer"
            )
        for st in hidden:
            if st.rec is not None:
                raise ShapeError(
                    f"nir: node {st.name!r} has a recurrent projection; a TTFS Network "
                    "is feed-forward (load it with mode='multi')"
                )
    elif not ends_in_readout:
        raise ShapeError(
            f"nir: mode='multi' needs a readout (CubaLI) before the output; the graph "
            f"ends in {stages[-1].name!r} (CubaLIF)"
        )

    layers: list[Layer] = []
    rec: list[Layer | None] = []
    src_width = n_in
    for st in hidden:
        layer = _compose(st.ff, nodes, src_width)
        (tm, ts, th), scale = _neuron_params(st, layer.shape[0])
        if not layers:
            tau_m, tau_s, theta = tm, ts, th
        # One neuron model for every spiking layer: the first layer's.
        for field_name, a, b in (("tau_mem", tm, tau_m), ("tau_syn", ts, tau_s), ("v_threshold", th, theta)):
            if a != b:
                raise ParameterError(
                    f"nir: node {st.name!r} (CubaLIF): {field_name} = {a} but node {hidden[0].name!r} has "
                    f"{b}; delgrad has one neuron model for all spiking layers of a network"
                )
        layers.append(_scaled(layer, scale))
        rec.append(None if st.rec is None else _scaled(_compose(st.rec, nodes, layer.shape[0]), scale))
        src_width = layer.shape[0]

    if mode == "ttfs":
        return Network(layers, Neuron(tau_m, tau_s, theta))

    ro_stage = stages[-1]
    ro = meta.get("readout", {})
    t_win = t_end if t_end is not None else ro.get("t_end")
    if t_win is None:
        raise ParameterError(
            "nir: the readout's window t_end has no NIR form and the graph carries no "
            "delgrad metadata; pass t_end=... (the trial length)"
        )
    kind = readout_kind or ro.get("kind", "max")
    tw = tau_w if tau_w is not None else (ro.get("tau_w") if kind == ro.get("kind") else None)
    # The graph's values for what it holds; the metadata (or defaults) for what it cannot.
    nm = {
        "t_ref": 0.0,
        "t_end": math.inf,
        **meta.get("neuron", {}),
        "tau_m": tau_m,
        "tau_s": tau_s,
        "theta": theta,
        "mode": "multi",
    }
    ro_layer = _compose(ro_stage.ff, nodes, src_width)
    (rtm, rts, _), rscale = _neuron_params(ro_stage, ro_layer.shape[0])
    rm = {
        "theta": 1.0,
        "mode": "multi",
        "t_ref": 0.0,
        "t_end": nm["t_end"],
        **meta.get("readout_neuron", {}),
        "tau_m": rtm,
        "tau_s": rts,
    }
    if t_end is not None:
        nm["t_end"] = t_end
        if rm["mode"] == "multi":
            rm["t_end"] = t_end
    readout = Readout(_scaled(ro_layer, rscale), Neuron(**rm), kind, float(t_win), tw)
    return MultiNetwork(layers, Neuron(**nm), readout, rec)


def _read_meta(graph: Any) -> dict[str, Any]:
    raw = (getattr(graph, "metadata", None) or {}).get(META_KEY)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise ParameterError(f"nir: the graph's metadata[{META_KEY!r}] is not delgrad's JSON ({e})") from None
    if meta.get("format") != META_FORMAT:
        raise ParameterError(f"nir: delgrad metadata format {meta.get('format')!r} is not {META_FORMAT}")
    return meta


def _flatten(graph: Any, prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Nodes and edges with nested subgraphs spliced in (snnTorch writes a recurrent layer as
    one): a subgraph's own Input and Output become pass-through nodes ``name.input`` etc."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, str] = {}
    exit_: dict[str, str] = {}
    for name, node in graph.nodes.items():
        key = prefix + name
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _flatten(node, key + ".")
            ins = [k for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise ShapeError(
                    f"nir: subgraph {key!r} has {len(ins)} Input and {len(outs)} Output "
                    "nodes; delgrad reads subgraphs with one of each"
                )
            for k in (ins[0], outs[0]):
                sub_nodes[f"{key}.{k}"] = _Pass(key)
            entry[key], exit_[key] = f"{key}.{ins[0]}", f"{key}.{outs[0]}"
            nodes.update(sub_nodes)
            edges.extend(sub_edges)
        else:
            nodes[key] = node
    for a, b in graph.edges:
        a, b = prefix + a, prefix + b
        edges.append((exit_.get(a, a), entry.get(b, b)))
    return nodes, edges


def _kind(node: Any) -> str:
    return f"Input/Output of subgraph {node.of!r}" if isinstance(node, _Pass) else type(node).__name__


def _passes(node: Any) -> bool:
    return isinstance(node, _Pass) or _kind(node) in _PASS_TYPES


def _stages(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> tuple[int, list[_Stage]]:
    """The neuron nodes from the input to the output, with the projections into each; refuses
    every graph that is not such a chain."""
    for name, node in nodes.items():
        t = _kind(node)
        if _passes(node) or t in ("Input", "Output", *_PROJECTION_TYPES, *_NEURON_TYPES):
            continue
        why = _NO_FORM.get(t, "delgrad has no equivalent of this node type")
        raise ParameterError(f"nir: node {name!r} ({t}) is not supported: {why}")
    preds: dict[str, list[str]] = {k: [] for k in nodes}
    succs: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise ShapeError(f"nir: edge ({a!r}, {b!r}) names a node that is not in the graph")
        preds[b].append(a)
        succs[a].append(b)
    inputs = [k for k, v in nodes.items() if _kind(v) == "Input"]
    outputs = [k for k, v in nodes.items() if _kind(v) == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ShapeError(
            f"nir: delgrad reads graphs with one Input and one Output, got inputs {inputs} and outputs {outputs}"
        )
    inp, out = inputs[0], outputs[0]
    n_in = int(np.prod(nodes[inp].input_type["input"]))

    def is_neuron(k: str) -> bool:
        return _kind(nodes[k]) in _NEURON_TYPES

    def walk_back(k: str, target: str) -> tuple[str, list[str]]:
        """From the node feeding ``target`` back to the neuron node or Input it starts at."""
        chain: list[str] = []
        while not (is_neuron(k) or k == inp):
            if len(preds[k]) != 1:
                raise ShapeError(
                    f"nir: node {k!r} ({_kind(nodes[k])}) on the way into {target!r} has "
                    f"{len(preds[k])} inputs; delgrad reads one chain of nodes per projection"
                )
            if len(succs[k]) != 1:
                raise ShapeError(
                    f"nir: node {k!r} ({_kind(nodes[k])}) feeds {len(succs[k])} nodes; "
                    "delgrad reads one chain of nodes per projection"
                )
            if k in chain:
                raise ShapeError(f"nir: nodes {chain} form a cycle without a neuron node")
            chain.append(k)
            k = preds[k][0]
        return k, chain[::-1]

    if len(preds[out]) != 1:
        raise ShapeError(f"nir: the Output node {out!r} has {len(preds[out])} inputs, expected 1")
    last, tail = walk_back(preds[out][0], out)
    feeder = next((k for k in reversed(tail) if not _passes(nodes[k])), last)
    if feeder != last or not is_neuron(last):
        raise ShapeError(
            f"nir: the Output node {out!r} must be fed by a neuron node (CubaLIF or CubaLI), "
            f"not by {feeder!r} ({_kind(nodes[feeder])})"
        )
    stages: list[_Stage] = []
    seen = {out, inp, *tail}
    k = last
    while k != inp:
        st = _Stage(k, nodes[k])
        seen.add(k)
        sources: list[str] = []
        for p in preds[k]:
            src, chain = walk_back(p, k)
            seen.update(chain)
            if src == k:
                if st.rec is not None:
                    raise ShapeError(f"nir: node {k!r} has two recurrent projections into itself")
                st.rec = chain
            elif sources:
                raise ShapeError(
                    f"nir: node {k!r} has inputs from {sources[0]!r} and {src!r}; delgrad "
                    "layers have one source (plus an optional recurrent projection)"
                )
            else:
                sources.append(src)
                st.ff = chain
        if not sources:
            raise ShapeError(f"nir: node {k!r} has no input from the Input or a layer below")
        if st.rec is not None and _kind(st.node) != "CubaLIF":
            raise ShapeError(
                f"nir: node {k!r} ({_kind(st.node)}) has a recurrent projection; only spiking layers (CubaLIF) can"
            )
        stages.append(st)
        if sources[0] in seen and sources[0] != inp:
            raise ShapeError(f"nir: node {sources[0]!r} feeds more than one layer; delgrad networks are chains")
        k = sources[0]
    stages.reverse()
    for st in stages[:-1]:
        if _kind(st.node) != "CubaLIF":
            raise ShapeError(
                f"nir: node {st.name!r} ({_kind(st.node)}) does not spike but feeds another "
                "layer; only the last node before the Output may be a CubaLI readout"
            )
    extra = sorted(set(nodes) - seen)
    if extra:
        raise ShapeError(
            f"nir: nodes {extra} are not on the chain from {inp!r} to {out!r}; delgrad reads layered chains only"
        )
    return n_in, stages


def _per_neuron(st: _Stage, field_name: str, n: int) -> NDArray[np.float64]:
    v = getattr(st.node, field_name)
    a = np.asarray(1.0 if v is None else v, dtype=np.float64).ravel()
    if a.size == 1:
        a = np.full(n, a[0])
    if a.size != n:
        raise ShapeError(f"nir: node {st.name!r} ({_kind(st.node)}): {field_name} has {a.size} entries for {n} neurons")
    if not np.all(np.isfinite(a)):
        raise ParameterError(f"nir: node {st.name!r} ({_kind(st.node)}): {field_name} must be finite, got {a}")
    return a


def _uniform(st: _Stage, field_name: str, n: int) -> float:
    a = _per_neuron(st, field_name, n)
    if np.any(a != a[0]):
        raise ParameterError(
            f"nir: node {st.name!r} ({_kind(st.node)}): {field_name} differs across neurons "
            f"(from {a.min()} to {a.max()}); delgrad has one neuron model per network"
        )
    return float(a[0])


def _neuron_params(st: _Stage, n: int) -> tuple[tuple[float, float, float], NDArray[np.float64]]:
    """``(tau_m, tau_s, theta)`` of a neuron node and the per-neuron factor that turns NIR weights
    into delgrad's, ``r w_in / (tau_mem tau_syn)``."""
    t = _kind(st.node)
    tau_m, tau_s = _uniform(st, "tau_mem", n), _uniform(st, "tau_syn", n)
    for field_name, v in (("tau_mem", tau_m), ("tau_syn", tau_s)):
        if not v > 0:
            raise ParameterError(f"nir: node {st.name!r} ({t}): {field_name} must be > 0, got {v}")
    zero = ("v_leak", "v_reset") if t == "CubaLIF" else ("v_leak",)
    for field_name in zero:
        a = _per_neuron(st, field_name, n)
        if np.any(a != 0):
            raise ParameterError(
                f"nir: node {st.name!r} ({t}): {field_name} must be 0 (delgrad's neurons rest at and reset "
                f"to 0), got values from {a.min()} to {a.max()}"
            )
    theta = 1.0
    if t == "CubaLIF":
        theta = _uniform(st, "v_threshold", n)
        if not theta > 0:
            raise ParameterError(f"nir: node {st.name!r} ({t}): v_threshold must be > 0, got {theta}")
    r, w_in = _per_neuron(st, "r", n), _per_neuron(st, "w_in", n)
    # Same operand order as the export's r = tau_m, w_in = tau_s, so that factor is exactly 1.
    scale = (r * w_in) / (tau_m * tau_s)
    if np.any(scale == 0):
        raise ParameterError(
            f"nir: node {st.name!r} ({t}): r * w_in is 0 for some neuron: its input has "
            "no effect, which delgrad cannot represent"
        )
    return (tau_m, tau_s, theta), scale


@dataclass
class _Synapses:
    """A projection as parallel arrays: target channel, source channel, weight, delay."""

    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    vals: NDArray[np.float64]
    dels: NDArray[np.float64]
    width: int


def _mix(s: _Synapses, w: NDArray[np.float64], n_src: int, name: str) -> _Synapses:
    """Applies a weight matrix ``w`` (``(p, s.width)``); the synapses reaching one target from one
    source through several channels merge, and must then have one delay."""
    order = np.argsort(s.rows, kind="stable")
    rows, cols, vals, dels = s.rows[order], s.cols[order], s.vals[order], s.dels[order]
    counts = np.bincount(rows, minlength=s.width)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    j, k = np.nonzero(w)
    rep = counts[k]
    total = int(rep.sum())
    if total == 0:
        e = np.zeros(0, np.int64)
        return _Synapses(e, e, np.zeros(0), np.zeros(0), w.shape[0])
    offsets = np.concatenate([[0], np.cumsum(rep)[:-1]])
    src = np.repeat(starts[k] - offsets, rep) + np.arange(total)
    new_rows = np.repeat(j, rep).astype(np.int64)
    new_cols = cols[src]
    new_vals = np.repeat(w[j, k], rep) * vals[src]
    new_dels = dels[src]
    key = new_rows * n_src + new_cols
    o = np.argsort(key, kind="stable")
    key, new_rows, new_cols, new_vals, new_dels = key[o], new_rows[o], new_cols[o], new_vals[o], new_dels[o]
    first = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    dmin, dmax = np.minimum.reduceat(new_dels, first), np.maximum.reduceat(new_dels, first)
    bad = np.flatnonzero(dmin != dmax)
    if bad.size:
        b = first[bad[0]]
        raise ParameterError(
            f"nir: node {name!r}: source {new_cols[b]} reaches target {new_rows[b]} through channels with "
            f"different delays ({dmin[bad[0]]} and {dmax[bad[0]]}); a delgrad synapse has one delay"
        )
    return _Synapses(new_rows[first], new_cols[first], np.add.reduceat(new_vals, first), new_dels[first], w.shape[0])


def _compose(chain: list[str], nodes: dict[str, Any], n_src: int) -> Layer:
    """The delgrad layer of one projection: its weights (NIR units) and delays, the delay kind
    read off where the Delay nodes sit (before every mixing: axonal; after every mixing:
    dendritic; otherwise synaptic)."""
    ar = np.arange(n_src, dtype=np.int64)
    s = _Synapses(ar, ar.copy(), np.ones(n_src), np.zeros(n_src), n_src)
    n_mix = 0
    delays: list[tuple[int, NDArray[np.float64]]] = []
    for k in chain:
        node = nodes[k]
        t = _kind(node)
        if _passes(node):
            continue
        if t in ("Linear", "Affine"):
            w = np.asarray(node.weight, dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != s.width:
                raise ShapeError(
                    f"nir: node {k!r} ({t}): weight of shape {w.shape} does not take the {s.width} channels before it"
                )
            if t == "Affine" and np.any(np.asarray(node.bias) != 0):
                bias = np.asarray(node.bias)
                raise ParameterError(
                    f"nir: node {k!r} (Affine): bias must be 0 (delgrad's neurons have no bias current), "
                    f"{np.count_nonzero(bias)} of its {bias.size} entries are not"
                )
            if not np.all(np.isfinite(w)):
                raise ParameterError(f"nir: node {k!r} ({t}): weight must be finite")
            s = _mix(s, w, n_src, k)
            n_mix += 1
            continue
        v = np.asarray(node.scale if t == "Scale" else node.delay, dtype=np.float64).ravel()
        if v.size != s.width:
            raise ShapeError(f"nir: node {k!r} ({t}): {v.size} entries for the {s.width} channels before it")
        if not np.all(np.isfinite(v)):
            raise ParameterError(f"nir: node {k!r} ({t}): values must be finite")
        if t == "Scale":
            s.vals = s.vals * v[s.rows]
            continue
        if np.any(v < 0):
            raise ParameterError(f"nir: node {k!r} (Delay): delays must be >= 0, got {v.min()}")
        s.dels = s.dels + v[s.rows]
        delays.append((n_mix, v))
    w = np.zeros((s.width, n_src))
    w[s.rows, s.cols] = s.vals
    if not delays:
        return Layer(w, np.zeros(0), "none")
    if all(m == 0 for m, _ in delays):
        return Layer(w, _sum_delays(delays), "axonal")
    if all(m == n_mix for m, _ in delays):
        return Layer(w, _sum_delays(delays), "dendritic")
    d = np.zeros((s.width, n_src))
    d[s.rows, s.cols] = s.dels
    return Layer(w, d, "synaptic")


def _sum_delays(delays: list[tuple[int, NDArray[np.float64]]]) -> NDArray[np.float64]:
    # Starts from 0.0 and adds in order, as the synapse arrays do, so both agree bit for bit.
    total = np.zeros_like(delays[0][1])
    for _, v in delays:
        total = total + v
    return total


def _scaled(layer: Layer, scale: NDArray[np.float64]) -> Layer:
    w = layer.weights * scale[:, None]
    return Layer(w, layer.delays, layer.delay_kind)
