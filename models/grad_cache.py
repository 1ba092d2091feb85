"""Gradient accumulation that keeps the whole batch's in-batch negatives (an embedding cache).

In-batch contrastive and ranking losses couple every row of a batch: splitting a batch into
micro-batches and summing their gradients (Lightning's `accumulate_grad_batches`) would give
each micro-batch fewer negatives, i.e. a different loss. The embedding cache (GradCache: Gao,
Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", 2021) computes the whole batch's gradient with one micro-batch of activations alive:

1. embed every micro-batch without a graph, recording the random-number state before each,
   so dropout draws the same masks when the micro-batch is replayed;
2. compute the whole batch's loss on the concatenated embeddings, made leaf tensors that
   require grad, and backpropagate it: this yields d loss / d embeddings, and the complete
   gradient of any parameter the loss uses directly (a learnable temperature);
3. replay each micro-batch with a graph under its recorded random state and backpropagate
   its embeddings with their rows of the cached gradients.

By the chain rule the accumulated parameter gradient equals the whole batch's, provided each
output row depends on its own input row only. Batch statistics (BatchNorm in training mode)
break that, so such models are refused (`batch_coupled_modules`).

A model writes its training loss once, for the whole batch, and routes every per-row encoder
call through an embedder: `DirectEmbedder` (no accumulation) just calls the function with
autograd; `EmbeddingCache` does steps 1-3. A gradient of the loss with respect to an encoder
*input* (input-gradient saliency) goes through the embedder too: the cache gets it by
replaying the micro-batches against the cached output gradients, with no parameter touched.

Under DDP the loss gathers the other processes' embeddings with gradient
(losses.distributed): its backward sums the gradients of the gathered rows over processes,
so each process's cached gradients already hold its rows' share of the global loss. The
replays have no collectives; the parameter gradients are then averaged over processes once
per batch (`average_gradients`), with DDP's own per-backward reduction switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

Outputs = dict[str, torch.Tensor]
EmbedFn = Callable[[dict[str, Any]], Outputs]


def batch_rows(batch: dict[str, Any]) -> int:
    """Rows of a batch: the leading dimension of `video`, else of its first tensor."""
    value = batch.get("video")
    if not isinstance(value, torch.Tensor):
        value = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return int(value.shape[0])


def split_rows(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cut a batch into at most `parts` consecutive, near-equal micro-batches.

    Tensors and lists with one entry per row are sliced; anything else (a scalar, a
    differently sized tensor) goes to every micro-batch unchanged. Empty pieces (fewer rows
    than `parts`) are left out.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    n = batch_rows(batch)
    out, start = [], 0
    for chunk in torch.arange(n).tensor_split(parts):
        if len(chunk):
            out.append({k: _slice(v, start, start + len(chunk), n) for k, v in batch.items()})
            start += len(chunk)
    return out


def _slice(value: Any, start: int, stop: int, n: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[start:stop]
    if isinstance(value, (list, tuple)) and len(value) == n:
        return value[start:stop]
    return value


class RandomState:
    """The CPU and accelerator random states at one moment, to replay a forward pass."""

    def __init__(self, batch: dict[str, Any]):
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        one_per_device = {t.device: t for t in tensors if t.device.type not in ("cpu", "meta")}
        self.device_type = next(iter(one_per_device), torch.device("cuda")).type
        self.cpu = torch.get_rng_state()
        self.devices, self.states = get_device_states(*one_per_device.values())

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the recorded state; the global state is left as it was."""
        with torch.random.fork_rng(devices=self.devices, device_type=self.device_type):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.states, device_type=self.device_type)
            yield


class DirectEmbedder:
    """No accumulation: `embed(fn, batch)` is `fn(batch)` with its autograd graph."""

    def __init__(self) -> None:
        self._inputs: list[tuple[Outputs, torch.Tensor]] = []

    def __call__(self, fn: EmbedFn, batch: dict[str, Any], input_grad: str | None = None
                 ) -> Outputs:
        """`input_grad`: a batch key whose gradient `input_gradient` may be asked for."""
        if input_grad is None:
            return fn(batch)
        leaf = batch[input_grad].detach().requires_grad_(True)
        out = fn({**batch, input_grad: leaf})
        self._inputs.append((out, leaf))
        return out

    def input_gradient(self, loss: torch.Tensor, outputs: Outputs) -> torch.Tensor:
        """d loss / d (the `input_grad` input of the call that returned `outputs`); the graph
        is kept and no parameter's `.grad` changes."""
        leaf = next(x for out, x in self._inputs if out is outputs)
        (grad,) = torch.autograd.grad(loss, leaf, retain_graph=True)
        return grad

    def backward(self, loss: torch.Tensor,
                 backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> None:
        backward(loss)


@dataclass
class _CachedCall:
    fn: EmbedFn
    micro: list[dict[str, Any]]
    states: list[RandomState]
    leaves: Outputs
    input_grad: str | None


class EmbeddingCache:
    """Accumulation over `parts` micro-batches with the whole batch's gradient (steps 1-3)."""

    def __init__(self, parts: int):
        self.parts = parts
        self.calls: list[_CachedCall] = []

    def __call__(self, fn: EmbedFn, batch: dict[str, Any], input_grad: str | None = None
                 ) -> Outputs:
        """Step 1: the whole batch's outputs, computed per micro-batch without a graph and
        returned as leaves that require grad."""
        micro = split_rows(batch, self.parts)
        states, outs = [], []
        with torch.no_grad():
            for piece in micro:
                states.append(RandomState(piece))
                outs.append(fn(piece))
        leaves = {k: torch.cat([o[k] for o in outs]).detach() for k in outs[0]}
        for value in leaves.values():
            if value.is_floating_point():
                value.requires_grad_(True)
        self.calls.append(_CachedCall(fn, micro, states, leaves, input_grad))
        return leaves

    def _replays(self, call: _CachedCall, grads: Outputs, input_grad: bool = False
                 ) -> Iterator[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]:
        """Per micro-batch: (its batch, its outputs with a graph, their cached gradients)."""
        start = 0
        for piece, state in zip(call.micro, call.states):
            rows = batch_rows(piece)
            if input_grad:
                key = call.input_grad
                piece = {**piece, key: piece[key].detach().requires_grad_(True)}
            with state.replay():
                out = call.fn(piece)
            names = [k for k in grads if out[k].requires_grad]
            yield piece, [out[k] for k in names], [grads[k][start:start + rows] for k in names]
            start += rows

    def input_gradient(self, loss: torch.Tensor, outputs: Outputs) -> torch.Tensor:
        """d loss / d input, as `DirectEmbedder.input_gradient`: the loss's gradient with
        respect to the cached outputs, pulled back through each micro-batch's replay."""
        call = next(c for c in self.calls if c.leaves is outputs)
        if call.input_grad is None:
            raise ValueError("input_gradient needs the embed call made with input_grad=KEY")
        names = [k for k, v in outputs.items() if v.requires_grad]
        got = torch.autograd.grad(loss, [outputs[k] for k in names], retain_graph=True,
                                  allow_unused=True)
        grads = {k: g for k, g in zip(names, got) if g is not None}
        pieces = []
        for piece, tensors, grad_rows in self._replays(call, grads, input_grad=True):
            x = piece[call.input_grad]
            if tensors:
                (g,) = torch.autograd.grad(tensors, x, grad_rows, allow_unused=True)
            else:
                g = None
            pieces.append(torch.zeros_like(x) if g is None else g)
        return torch.cat(pieces)

    def backward(self, loss: torch.Tensor,
                 backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> None:
        """Steps 2 and 3. `backward` backpropagates the loss (e.g. manual_backward, which
        applies mixed-precision loss scaling; the cached gradients then carry that scale and
        the replays pass them on unchanged)."""
        backward(loss)
        for call in self.calls:
            grads = {k: v.grad for k, v in call.leaves.items()
                     if v.requires_grad and v.grad is not None}
            if not grads:
                continue
            for _, tensors, grad_rows in self._replays(call, grads):
                if tensors:
                    torch.autograd.backward(tensors, grad_rows)


Embedder = DirectEmbedder | EmbeddingCache


def batch_coupled_modules(model: nn.Module) -> list[str]:
    """Names of submodules that mix the rows of a training batch (BatchNorm's statistics)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average `.grad` over the processes of torch.distributed (no-op with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
