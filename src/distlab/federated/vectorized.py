"""Vectorized executor: every sampled client of a round trains at once in one process.

The clients' parameters are one flat tensor laid out parameter by parameter, each block a
(clients, *shape) array, so every parameter of every client is a free view. Each local step
gathers one padded batch per client and runs a grouped twin of the model: convolutions with
groups = clients on channels-last input (B, clients * C, H, W), linear layers as batched
matmuls; the clients' losses are summed and one backward pass gives every client's gradient.
Models with other layers fall back to torch.func.vmap of functional_call. SGD (momentum,
weight decay), Adam and FedProx's proximal term are applied as tensor arithmetic on the
stacked state. Clients whose local steps are done (fewer samples) or whose batch is short are
handled by masks: a padded sample has weight 0, and a finished client's parameters and
optimizer state are left unchanged, so nothing is truncated.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from distlab.federated.clients import ClientData, LocalSpec, client_batches
from distlab.federated.types import Layout, Updates

# Clients trained together; bounds the stacked state (chunk x P x a few copies).
CHUNK = 128

# Layers without parameters that act per sample and channel, so the grouped layout passes.
PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Flatten, nn.Sequential)


class GroupedConv2d(nn.Module):
    """A Conv2d for many clients at once: input (B, clients * C_in, H, W), weight
    (clients, C_out, C_in / groups, k, k). One convolution with groups * clients groups;
    channels-last input, where oneDNN's grouped kernels run 2-4x faster than NCHW. The
    weight and bias are plain tensors the trainer sets before each call."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clients = self.weight.shape[0]
        bias = None if self.bias is None else self.bias.flatten()
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(
            x,
            self.weight.flatten(0, 1),
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * clients,
        )


class GroupedLinear(nn.Module):
    """A Linear for many clients at once: input (B, clients * in) or (B, clients, in), weight
    (clients, out, in); returns (B, clients, out). The matmul runs on (clients, in, B)
    activations, so the weight's gradient comes out contiguous, ready for the update."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clients, _, features = self.weight.shape
        x = x.reshape(x.shape[0], clients, features).permute(1, 2, 0)
        if self.bias is None:
            return torch.bmm(self.weight, x).permute(2, 0, 1)
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight, x).permute(2, 0, 1)


def grouped_twin(model: nn.Module) -> nn.Module | None:
    """A copy of `model` whose Conv2d and Linear layers serve many clients at once, their
    weights plain attributes at the model's parameter names; None when a layer has no
    grouped form or a parameter sits outside those layers."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if not name or isinstance(module, PASS_THROUGH):
            continue
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            grouped: nn.Module = GroupedConv2d(module)
        elif isinstance(module, nn.Linear):
            grouped = GroupedLinear()
        else:
            return None
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent), child, grouped)
    return None if any(True for _ in twin.parameters()) else twin


class VectorTrainer:
    """Trains many clients of one model from the same start, with a functional optimizer."""

    def __init__(self, model: nn.Module, spec: LocalSpec, x: torch.Tensor, y: torch.Tensor):
        if spec.optimizer.name not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam (got {spec.optimizer.name!r})")
        self.model, self.spec, self.x, self.y = model, spec, x, y
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]
        self.twin = grouped_twin(model)
        self.slots = {}
        for name in self.names if self.twin is not None else []:
            owner, _, attr = name.rpartition(".")
            self.slots[name] = (self.twin.get_submodule(owner), attr)
        if self.twin is not None and not self.twin_agrees():
            self.twin = None

    def client_logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """(clients, B, classes) logits of each client's parameters on its own (B, ...)
        inputs; params maps each parameter name to a (clients, *shape) tensor."""
        if self.twin is None:
            return vmap(self.one_client_logits, randomness="different")(params, x)
        self.twin.train(self.model.training)
        clients, batch = x.shape[:2]
        grouped = x.transpose(0, 1).reshape(batch, clients * x.shape[2], *x.shape[3:])
        # set the twin's weights directly: functional_call costs 0.1 ms a call here
        for name, value in params.items():
            module, attr = self.slots[name]
            setattr(module, attr, value)
        out = self.twin(grouped)
        return out.reshape(batch, clients, -1).transpose(0, 1)

    def one_client_logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    @torch.no_grad()
    def twin_agrees(self) -> bool:
        """Whether the grouped twin gives vmap's logits on two clients: a model whose forward
        reshapes or reorders across features would not, and keeps the vmap path."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.compare_twin()
        except RuntimeError:  # a reshape across the clients' features
            return False
        finally:
            self.model.train(was_training)

    def compare_twin(self) -> bool:
        gen = torch.Generator().manual_seed(0)
        params = self.unstack(0.1 * torch.randn(2 * sum(self.sizes), generator=gen), 2)
        x = torch.randn(2, 2, *self.x.shape[1:], generator=gen, dtype=self.x.dtype)
        grouped = self.client_logits(params, x)
        twin, self.twin = self.twin, None
        plain = self.client_logits(params, x)
        self.twin = twin
        return grouped.shape == plain.shape and torch.allclose(grouped, plain, rtol=1e-4, atol=1e-4)

    def step_grad(self, params: torch.Tensor, clients: int, x, y, w):
        """Every client's gradient and loss for one step. The clients' losses are independent,
        so the gradient of their sum with respect to the stacked parameters holds each
        client's own gradient: one backward pass for all of them. Returns one (clients,
        *shape) gradient per parameter. (Plain autograd rather than torch.func.grad, which
        would import torch._dynamo: 2 s of start-up.)"""
        leaves = {n: v.requires_grad_() for n, v in self.unstack(params.detach(), clients).items()}
        logits = self.client_logits(leaves, x)
        # log_softmax + gather is cross_entropy; under vmap, cross_entropy goes through a
        # decomposition that imports sympy (about a second of start-up).
        picked = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        losses = -(picked * w).sum(1)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return list(grads), losses.detach()

    def unstack(self, flat: torch.Tensor, clients: int) -> dict[str, torch.Tensor]:
        """Views of the parameter-major flat tensor: name -> (clients, *shape)."""
        views = torch.split(flat, [clients * n for n in self.sizes])
        return {
            n: v.view(clients, *s) for n, v, s in zip(self.names, views, self.shapes, strict=True)
        }

    def stack(self, rows: torch.Tensor) -> torch.Tensor:
        """(clients, P) rows -> the parameter-major flat layout."""
        flat = rows.new_empty(rows.numel())
        blocks = self.unstack(flat, len(rows)).values()
        for block, part in zip(blocks, torch.split(rows, self.sizes, dim=1), strict=True):
            block.view(len(rows), -1).copy_(part)
        return flat

    def rows(self, flat: torch.Tensor, clients: int) -> torch.Tensor:
        """The parameter-major flat layout -> (clients, P) rows."""
        out = flat.new_empty(clients, flat.numel() // max(clients, 1))
        blocks = self.unstack(flat, clients).values()
        for part, block in zip(torch.split(out, self.sizes, dim=1), blocks, strict=True):
            part.copy_(block.view(clients, -1))
        return out

    @torch.no_grad()
    def count_correct(self, params: torch.Tensor, tests: list[np.ndarray]) -> np.ndarray:
        """Per client, how many of its own test samples its own parameters classify right."""
        index, weight = pad_schedules([[t] for t in tests])
        x, y, real = self.x[index[0]], self.y[index[0]], torch.from_numpy(weight[0] > 0)
        clients = len(tests)
        logits = self.client_logits(self.unstack(self.stack(params), clients), x)
        return ((logits.argmax(-1) == y) & real).sum(1).numpy()

    def train(
        self, start: torch.Tensor, schedules: list[list[np.ndarray]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Each schedule is one client's list of batch indices; returns (clients, P) final
        parameters and each client's mean step loss (NaN for a client with no steps)."""
        self.model.train()
        params, losses = [], []
        for lo in range(0, len(schedules), CHUNK):
            p, loss = self.train_chunk(start, schedules[lo : lo + CHUNK])
            params.append(p)
            losses.append(loss)
        if not params:
            return start.new_zeros(0, start.numel()), np.zeros(0)
        if len(params) == 1:  # the usual round: no copy
            return params[0], losses[0]
        return torch.cat(params), np.concatenate(losses)

    def train_chunk(self, start: torch.Tensor, schedules: list[list[np.ndarray]]):
        index, weight = pad_schedules(schedules)
        clients = len(schedules)
        xs, ys, ws = self.x[index], self.y[index], torch.from_numpy(weight)
        active = (weight.sum(axis=2) > 0).astype(np.float32)
        params = self.stack(start.expand(clients, -1))
        origin = params.clone() if self.spec.mu else None
        state: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros(clients)
        for t in range(index.shape[0]):
            grads, loss = self.step_grad(params, clients, xs[t], ys[t], ws[t])
            mask = None if active[t].all() else self.spread(torch.from_numpy(active[t]))
            self.apply_update(params, grads, origin, state, mask, t + 1)
            loss_sum += loss * torch.from_numpy(active[t])
        steps = active.sum(0)
        mean_loss = (loss_sum / np.maximum(steps, 1)).numpy()
        return self.rows(params, clients), np.where(steps > 0, mean_loss, np.nan)

    def spread(self, per_client: torch.Tensor) -> torch.Tensor:
        """A value per client -> the same value on each of its elements in the flat layout."""
        return torch.cat([per_client.repeat_interleave(n) for n in self.sizes])

    def apply_update(self, params, grads, origin, state, active, t: int) -> None:
        """One optimizer step on the stacked parameters, in place; `active` (a 0/1 mask per
        element, or None when every client steps) leaves finished clients unchanged."""
        opt, mu = self.spec.optimizer, self.spec.mu
        if active is None and opt.name == "sgd" and not (mu or opt.weight_decay or opt.momentum):
            # plain SGD: each block takes its own gradient, with no flat copy of them
            blocks = torch.split(params, [g.numel() for g in grads])
            views = [b.view_as(g) for b, g in zip(blocks, grads, strict=True)]
            torch._foreach_add_(views, grads, alpha=-opt.lr)
            return
        grads = torch.cat([g.reshape(-1) for g in grads])
        if mu:
            grads = grads + mu * (params - origin)
        if opt.weight_decay:
            grads = grads + opt.weight_decay * params
        if opt.name == "adam":
            step = adam_direction(grads, state, active, t)
        else:
            step = sgd_direction(grads, state, active, opt.momentum)
        if active is None:
            params.sub_(step, alpha=opt.lr)
        else:
            params.sub_(step * (active * opt.lr))


def sgd_direction(grads, state: dict, active, momentum: float) -> torch.Tensor:
    """torch.optim.SGD without dampening: buf = momentum * buf + g (buf starts at g)."""
    if not momentum:
        return grads
    buf = state.get("buf")
    new = grads if buf is None else momentum * buf + grads
    state["buf"] = new if buf is None else keep_active(active, new, buf)
    return state["buf"]


def adam_direction(grads, state: dict, active, t: int, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.Adam's step direction divided by lr (Kingma and Ba 2015). Every client
    still active at step t has taken exactly t steps, so one bias correction serves all."""
    b1, b2 = betas
    m = state.get("m", torch.zeros_like(grads))
    v = state.get("v", torch.zeros_like(grads))
    state["m"] = keep_active(active, m.lerp(grads, 1 - b1), m)
    state["v"] = keep_active(active, v * b2 + (1 - b2) * grads * grads, v)
    denom = state["v"].sqrt() / math.sqrt(1 - b2**t) + eps
    return state["m"] / denom / (1 - b1**t)


def keep_active(active: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor):
    """`new` where the client still steps, `old` where it is done (None: all step)."""
    return new if active is None else torch.where(active > 0, new, old)


def pad_schedules(schedules: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, clients, batch) sample indices and weights 1/len (0 where padded)."""
    steps = max((len(s) for s in schedules), default=0)
    batch = max((len(b) for s in schedules for b in s), default=1)
    index = np.zeros((steps, len(schedules), batch), dtype=np.int64)
    weight = np.zeros((steps, len(schedules), batch), dtype=np.float32)
    for i, schedule in enumerate(schedules):
        for t, idx in enumerate(schedule):
            if len(idx):
                index[t, i, : len(idx)] = idx
                index[t, i, len(idx) :] = idx[0]
                weight[t, i, : len(idx)] = 1.0 / len(idx)
    return index, weight


class VectorExecutor:
    """In-process executor: a round's sampled clients train together on a VectorTrainer."""

    def __init__(self, trainer: VectorTrainer, data: ClientData, seed: int) -> None:
        self.trainer, self.data, self.seed = trainer, data, seed
        self.sizes = data.sizes
        self.layout = Layout.of(trainer.model)

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        spec = self.trainer.spec
        schedules = [
            client_batches(self.data.train[c], spec.batch, spec.epochs, self.seed, round_, c)
            for c in clients
        ]
        params, losses = self.trainer.train(start, schedules)
        return Updates(clients, params, self.sizes[clients], {"loss": losses}, self.layout)

    def close(self) -> None:
        pass
