"""Regional compilation: `torch.compile` of each decoder layer rather than of the whole model.

The layers share one code path, so the backend compiles a graph once and every layer reuses it;
the loss, peft's wrappers and the engines stay eager. `CompileCounter` counts the graphs the backend
is handed: the first ones, then every recompile (a new shape, a failed guard), which the loop prints.
"""
from __future__ import annotations

import torch
from torch import nn


class CompileCounter:
    """A `torch.compile` backend that counts the graphs it compiles and hands them to `backend`."""

    def __init__(self, backend: str = "inductor"):
        self.graphs = 0
        self._reported = 0
        self._backend = torch._dynamo.lookup_backend(backend)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return self._backend(graph, example_inputs)

    def new_graphs(self) -> int:
        """Graphs compiled since the last call."""
        new, self._reported = self.graphs - self._reported, self.graphs
        return new


def decoder_layers(model: nn.Module, setting: str = "train.compile=true") -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes transformers never splits across devices
    (`_no_split_modules`, e.g. `LlamaDecoderLayer`), found through peft's wrapper. `setting` names what
    needs them in the error."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{setting}: found no decoder layers in {type(base).__name__} "
                         f"(no _no_split_modules); drop {setting}")
    return layers


def compile_decoder_layers(model: nn.Module, backend: str = "inductor") -> CompileCounter:
    """Compile every decoder layer in place (static shapes: rows must all have one length)."""
    counter = CompileCounter(backend)
    layers = decoder_layers(model)
    # Every layer is its own module instance: let each keep its graph without hitting the cache limit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(layers))
    for layer in layers:
        layer.compile(backend=counter, dynamic=False)
    return counter
