"""Vectorized executor: every sampled client of a round trains at once in one process.

The clients' parameters are the (clients, P) rows the executor returns, trained in place:
every parameter of every client is a (clients, *shape) view of them, made once a chunk, and
no copy comes between the rows and the round's update. A chunk's inputs are gathered once,
in the twin's layout; each local step runs a grouped twin of the model: convolutions with
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
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from distlab.federated.clients import ClientData, LocalSpec, client_batches
from distlab.federated.private_local import noise_generator, private_grads
from distlab.federated.stragglers import cut_schedules
from distlab.federated.types import Layout, Updates

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup

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
    (clients, out, in); returns (B, clients, out)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clients, _, features = self.weight.shape
        x = x.reshape(x.shape[0], clients, features).transpose(0, 1)
        return BatchedLinear.apply(x, self.weight, self.bias).transpose(0, 1)


class BatchedLinear(torch.autograd.Function):
    """(clients, B, in) @ (clients, out, in)^T + bias. With the batch as rows MKL's batched
    gemm runs 3x faster here than as W @ x^T; and the weight's gradient is computed as
    grad^T @ x, so it comes out contiguous like the weight (autograd's transposed one would
    make every update add across strides)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_bias = grad.sum(1) if ctx.has_bias else None
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad_bias


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
        self.set_twin_weights(params)
        clients, batch = x.shape[:2]
        return self.twin_logits(
            x.transpose(0, 1).reshape(batch, clients * x.shape[2], *x.shape[3:])
        )

    def set_twin_weights(self, params: dict) -> None:
        """Set the twin's weights directly: functional_call costs 0.1 ms a call here."""
        for name, value in params.items():
            module, attr = self.slots[name]
            setattr(module, attr, value)

    def twin_logits(self, grouped: torch.Tensor) -> torch.Tensor:
        """(clients, B, classes) logits of the twin on grouped (B, clients * C, ...) input."""
        out = self.twin(grouped)
        return out.reshape(grouped.shape[0], -1, out.shape[-1]).transpose(0, 1)

    def grouped_inputs(self, index: np.ndarray) -> torch.Tensor:
        """(steps, clients, B) sample indices -> (steps, B, clients * C, ...) inputs in the
        twin's layout, gathered once a chunk rather than regrouped every step. Images come
        channels-last, the layout the grouped convolutions run in, so no step copies them."""
        x = self.x[torch.from_numpy(index.transpose(0, 2, 1))]
        steps, batch, clients = x.shape[:3]
        if x.dim() != 6:
            return x.reshape(steps, batch, clients * x.shape[3], *x.shape[4:])
        c, h, w = x.shape[3:]
        last = x.permute(0, 1, 4, 5, 2, 3).contiguous().view(steps, batch, h, w, clients * c)
        return last.permute(0, 1, 4, 2, 3)

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
        params = self.unstack(0.1 * torch.randn(2, sum(self.sizes), generator=gen))
        x = torch.randn(2, 2, *self.x.shape[1:], generator=gen, dtype=self.x.dtype)
        grouped = self.client_logits(params, x)
        # client by client rather than through vmap, whose first call costs 30 ms
        plain = torch.stack(
            [self.one_client_logits({n: v[c] for n, v in params.items()}, x[c]) for c in range(2)]
        )
        return grouped.shape == plain.shape and torch.allclose(grouped, plain, rtol=1e-4, atol=1e-4)

    def step_grad(self, leaves: list[torch.Tensor], logits: torch.Tensor, y, w):
        """Every client's gradient and loss for one step from its (clients, B, classes)
        logits. The clients' losses are independent, so the gradient of their sum with
        respect to the stacked parameters holds each client's own gradient: one backward
        pass for all of them. Returns one (clients, *shape) gradient per parameter. (Plain
        autograd rather than torch.func.grad, which would import torch._dynamo: 2 s of
        start-up.)"""
        # log_softmax + gather is cross_entropy; under vmap, cross_entropy goes through a
        # decomposition that imports sympy (about a second of start-up).
        picked = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        losses = -(picked * w).sum(1)
        grads = torch.autograd.grad(losses.sum(), leaves)
        return list(grads), losses.detach()

    def unstack(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of (clients, P) rows: name -> (clients, *shape)."""
        views = torch.split(rows, self.sizes, dim=1)
        clients = len(rows)
        return {
            n: v.view(clients, *s) for n, v, s in zip(self.names, views, self.shapes, strict=True)
        }

    @torch.no_grad()
    def count_correct(self, params: torch.Tensor, tests: list[np.ndarray]) -> np.ndarray:
        """Per client, how many of its own test samples its own parameters classify right."""
        index, weight = pad_schedules([[t] for t in tests])
        x, y, real = self.x[index[0]], self.y[index[0]], torch.from_numpy(weight[0] > 0)
        logits = self.client_logits(self.unstack(params), x)
        return ((logits.argmax(-1) == y) & real).sum(1).numpy()

    def train(
        self, start: torch.Tensor, schedules: list[list[np.ndarray]], noise: list | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Each schedule is one client's list of batch indices; returns (clients, P) final
        parameters and each client's mean step loss (NaN for a client with no steps).
        `noise`: each client's generator of DP-SGD noise when spec.dp is set."""
        self.model.train()
        if self.twin is not None:
            self.twin.train()  # once a call, not every step: it walks every module
        params, losses = [], []
        for lo in range(0, len(schedules), CHUNK):
            gens = None if noise is None else noise[lo : lo + CHUNK]
            p, loss = self.train_chunk(start, schedules[lo : lo + CHUNK], gens)
            params.append(p)
            losses.append(loss)
        if not params:
            return start.new_zeros(0, start.numel()), np.zeros(0)
        if len(params) == 1:  # the usual round: no copy
            return params[0], losses[0]
        return torch.cat(params), np.concatenate(losses)

    def train_chunk(self, start: torch.Tensor, schedules: list[list[np.ndarray]], noise=None):
        index, weight = pad_schedules(schedules)
        clients = len(schedules)
        ys, ws = self.y[torch.from_numpy(index)], torch.from_numpy(weight)
        active = (weight.sum(axis=2) > 0).astype(np.float32)
        params = start.expand(clients, -1).clone()
        origin = params.clone() if self.spec.mu else None
        # The leaves are views of `params`, made once a chunk: the updates change them in
        # place, outside autograd, and every step's graph starts from them.
        named = {n: v.requires_grad_() for n, v in self.unstack(params).items()}
        leaves = list(named.values())
        logits_at = self.step_logits(named, index) if self.spec.dp is None else None
        state: dict[str, torch.Tensor] = {}
        losses = []
        for t in range(index.shape[0]):
            if logits_at is None:  # DP-SGD: per-sample gradients of every client at once
                x = self.x[torch.from_numpy(index[t])]
                real = (ws[t] > 0).float()
                values = {n: v.detach() for n, v in named.items()}
                grads, loss = private_grads(self.model, values, x, ys[t], real, self.spec.dp, noise)
            else:
                grads, loss = self.step_grad(leaves, logits_at(t), ys[t], ws[t])
            mask = None if active[t].all() else torch.from_numpy(active[t]).unsqueeze(1)
            with torch.no_grad():
                self.apply_update(params, leaves, grads, origin, state, mask, t + 1)
            losses.append(loss)
        if self.twin is not None:  # the twin would hold views of the returned rows
            self.set_twin_weights(dict.fromkeys(named))
        steps = active.sum(0)
        loss_sum = torch.zeros(clients)
        if losses:  # one product and sum for the chunk rather than two small ops a step
            loss_sum = (torch.stack(losses) * torch.from_numpy(active)).sum(0)
        mean_loss = (loss_sum / np.maximum(steps, 1)).numpy()
        return params, np.where(steps > 0, mean_loss, np.nan)

    def step_logits(self, params: dict, index: np.ndarray):
        """t -> the (clients, B, classes) logits of step t. The grouped twin gets its weights
        and the chunk's inputs once; vmap gathers each step's inputs."""
        if self.twin is None:
            return lambda t: self.client_logits(params, self.x[torch.from_numpy(index[t])])
        self.set_twin_weights(params)
        xs = self.grouped_inputs(index)
        return lambda t: self.twin_logits(xs[t])

    def apply_update(self, params, leaves, grads, origin, state, active, t: int) -> None:
        """One optimizer step on the (clients, P) parameters, in place (`leaves` are their
        views parameter by parameter); `active` (a (clients, 1) 0/1 column, or None when
        every client steps) leaves finished clients unchanged."""
        opt, mu = self.spec.optimizer, self.spec.mu
        if active is None and opt.name == "sgd" and not (mu or opt.weight_decay or opt.momentum):
            # plain SGD: each parameter takes its own gradient, with no flat copy of them
            torch._foreach_add_(leaves, grads, alpha=-opt.lr)
            return
        grads = torch.cat([g.reshape(len(g), -1) for g in grads], dim=1)
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

    def train(
        self, round_: int, start: torch.Tensor, clients: np.ndarray, steps: np.ndarray | None = None
    ) -> Updates:
        """`steps`: each client's local step budget (partial work), None = all its steps."""
        spec = self.trainer.spec
        noise = None
        if spec.dp is not None:
            noise = [noise_generator(self.seed, round_, int(c)) for c in clients]
        schedules = [
            client_batches(self.data.train[c], spec.batch, spec.epochs, self.seed, round_, c)
            for c in clients
        ]
        schedules = cut_schedules(schedules, steps)
        params, losses = self.trainer.train(start, schedules, noise)
        return Updates(clients, params, self.sizes[clients], {"loss": losses}, self.layout)

    def close(self) -> None:
        pass


def start_vectorized(setup: ClientSetup) -> VectorExecutor:
    """The executor table's entry (executors.py): the setup's trainer, which personalization
    shares."""
    return VectorExecutor(setup.trainer, setup.data, setup.ctx.cfg.seed)
