"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") for the centralized
and allreduce strategies, with Opacus's accountant.

centralized: Opacus end to end. `PrivacyEngine.make_private` (or `make_private_with_epsilon`
for privacy.target_epsilon) wraps the model in a GradSampleModule and the optimizer in a
DPOptimizer; the batches are its DPDataLoader's Poisson samples (each sample in with rate
q = 1 / ceil(N / batch_size), so the expected batch is about batch_size), reseeded every
epoch; every step event carries `epsilon` from the engine's own accountant.

allreduce: each worker Poisson-samples its shard of the training set at the global rate q,
so the union over workers is one Poisson sample of the whole set; it clips its samples'
gradients (torch.func, federated/private_local.py) and sums them; the sums are all-reduced
through the Communicator; Gaussian noise of std z * C is added once to the global sum, the
same seeded draw on every rank (the replicas stay identical), and the result is divided by
the expected global batch. Epsilon: Opacus's accountant at q, stepped once a step.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distlab import accountant

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

# Stream tags of the sampling and noise generators under the run seed.
SAMPLE_STREAM, NOISE_STREAM = 11, 12


def accountant_epsilon(noise: float, rate: float, steps: int, delta: float, kind: str):
    """Epsilon at `delta` after `steps` steps of the subsampled Gaussian mechanism (noise
    multiplier `noise`, sampling rate `rate`); None when unbounded (noise 0)."""
    return accountant.epsilon(noise, rate, steps, delta, kind)


def noise_for(cfg, rate: float, steps: int) -> float:
    """The run's noise multiplier: privacy.noise, or the smallest that keeps epsilon within
    privacy.target_epsilon over `steps` steps at `rate` (ValueError when none does)."""
    p = cfg.privacy
    if p.target_epsilon is None:
        return p.noise
    return accountant.noise_for(p.target_epsilon, p.delta, rate, steps, p.accountant)


def current_epsilon(tracker, delta: float) -> float | None:
    """An Opacus accountant's epsilon so far; None when unbounded (noise 0)."""
    with accountant.quiet():
        value = float(tracker.get_epsilon(delta=delta))
    return value if math.isfinite(value) else None


def refuse_batch_norm(model: nn.Module, name: str) -> None:
    """Batch norm mixes the samples of a batch: no per-sample gradient exists through it."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"privacy.mode=dpsgd cannot train model {name}: its {type(module).__name__} "
                "mixes the samples of a batch, so no per-sample gradient exists (use a model "
                "without batch norm)"
            )


def sampling(cfg, samples: int) -> tuple[float, int]:
    """(sampling rate q, steps per epoch): one DPDataLoader of batch_size's, where
    q = 1 / ceil(N / batch); under allreduce the global batch is batch_size, or
    batch_size per worker outside split-batch."""
    batch = cfg.batch_size
    if cfg.strategy.name != "centralized" and cfg.sampler != "split-batch":
        batch *= cfg.workers
    batches = max(-(-samples // batch), 1)
    return 1.0 / batches, batches


def check_data(cfg, data) -> None:
    """The dataset's rules for DP-SGD, before any process starts: a model with batch norm,
    a target epsilon no noise reaches."""
    from distlab.models import build_model

    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
    if cfg.privacy.mode != "dpsgd":
        return
    refuse_batch_norm(model, cfg.model)
    for setting, on in (("compress.kind", cfg.compress.names), ("attack.kind", cfg.attack.on)):
        if on:
            raise ValueError(
                f"privacy.mode=dpsgd does not combine with {setting} on strategy "
                f"{cfg.strategy.name}: set one of them"
            )
    rate, per_epoch = sampling(cfg, len(data.y_train))
    noise_for(cfg, rate, cfg.epochs * per_epoch)


def privacy_phase(ctx: WorkerContext, noise: float, rate: float) -> None:
    p = ctx.cfg.privacy
    ctx.recorder.phase(
        "privacy",
        mode=p.mode,
        noise=noise,
        clip=p.clip,
        delta=p.delta,
        sample_rate=rate,
        accountant=p.accountant,
        sampling="poisson",
    )


def seed_of(*key: int) -> int:
    state = np.random.SeedSequence(list(key)).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def seeded(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*key))


# --- centralized: Opacus's PrivacyEngine ---------------------------------------------------------


def make_private(ctx: WorkerContext, model: nn.Module, opt):
    """(private model, DPOptimizer, schedule, step) of a centralized DP-SGD run."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    cfg, p = ctx.cfg, ctx.cfg.privacy
    samples = len(ctx.data.y_train)
    gen = torch.Generator()
    loader = DataLoader(TensorDataset(torch.arange(samples)), cfg.batch_size, generator=gen)
    with accountant.quiet():  # its note that secure_mode is off: the run is seeded
        engine = PrivacyEngine(accountant=p.accountant)
    common = dict(module=model, optimizer=opt, data_loader=loader, max_grad_norm=p.clip)
    common["noise_generator"] = seeded(cfg.seed, NOISE_STREAM)
    if p.target_epsilon is None:
        private, dp_opt, dp_loader = engine.make_private(noise_multiplier=p.noise, **common)
    else:
        private, dp_opt, dp_loader = engine.make_private_with_epsilon(
            target_epsilon=p.target_epsilon, target_delta=p.delta, epochs=cfg.epochs, **common
        )
    privacy_phase(ctx, dp_opt.noise_multiplier, dp_loader.sample_rate)

    def schedule(epoch: int) -> list[np.ndarray]:
        gen.manual_seed(seed_of(cfg.seed, SAMPLE_STREAM, epoch))  # the loader samples from it
        return [np.asarray(b, dtype=np.int64) for b in dp_loader.batch_sampler]

    def step(x: torch.Tensor, y: torch.Tensor):
        dp_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(private(x), y) if len(y) else None
        if loss is not None:
            with warnings.catch_warnings():  # Opacus's hooks on a model whose input needs no grad
                warnings.simplefilter("ignore", UserWarning)
                loss.backward()
        dp_opt.step()
        value = float(loss.detach()) if loss is not None else float("nan")
        return value, len(y), {"epsilon": current_epsilon(engine.accountant, p.delta)}

    return private, dp_opt, engine, schedule, step


def centralized(ctx: WorkerContext, model: nn.Module, opt):
    """(step, schedule, what a checkpoint keeps) of centralized under privacy.mode=dpsgd."""
    refuse_batch_norm(model, ctx.cfg.model)
    _, dp_opt, engine, schedule, step = make_private(ctx, model, opt)
    keep = {"model": model, "optimizer": dp_opt.original_optimizer, "accountant": engine.accountant}
    return step, schedule, keep


# --- allreduce: clipped sums all-reduced, the noise added once -----------------------------------


def shard_schedule(ctx: WorkerContext, rate: float, per_epoch: int):
    """This rank's Poisson batches: its shard (every world-th sample of a seeded permutation),
    each sample in a step's batch with probability `rate`."""
    cfg, samples = ctx.cfg, len(ctx.data.y_train)
    order = np.random.default_rng([cfg.seed, SAMPLE_STREAM]).permutation(samples)
    shard = np.sort(order[ctx.rank :: ctx.world])

    def schedule(epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([cfg.seed, SAMPLE_STREAM, epoch, ctx.rank])
        return [shard[rng.random(len(shard)) < rate] for _ in range(per_epoch)]

    return schedule


def private_allreduce_step(ctx: WorkerContext, model, opt, noise: float, rate: float, tracker):
    """One DP-SGD step of the allreduce strategy (see the module's docstring)."""
    from distlab.federated.private_local import clipped_sums
    from distlab.training import set_flat_grads

    p, named = ctx.cfg.privacy, dict(model.named_parameters())
    size = sum(v.numel() for v in named.values())
    buf = torch.zeros(size + 2)
    expected = rate * len(ctx.data.y_train)
    gen = seeded(ctx.cfg.seed, NOISE_STREAM)  # the same draws on every rank

    def step(x: torch.Tensor, y: torch.Tensor):
        buf.zero_()
        if len(y):
            params = {n: v.detach().unsqueeze(0) for n, v in named.items()}
            ones = torch.ones(1, len(y))
            sums, losses = clipped_sums(model, params, x[None], y[None], ones, p.clip)
            buf[:-2] = torch.cat([s[0] for s in sums])
            buf[-2], buf[-1] = losses.sum(), len(y)
        ctx.comm.all_reduce(buf)
        drawn = torch.randn(size, generator=gen) * (noise * p.clip)
        set_flat_grads(model, (buf[:-2] + drawn) / expected)
        opt.step()
        tracker.step(noise_multiplier=noise, sample_rate=rate)
        total = float(buf[-1])
        loss = float(buf[-2]) / total if total else float("nan")
        return loss, int(total), {"epsilon": current_epsilon(tracker, p.delta)}

    return step


def allreduce(ctx: WorkerContext, model: nn.Module, opt):
    """(step, schedule, what a checkpoint keeps) of allreduce under privacy.mode=dpsgd."""
    refuse_batch_norm(model, ctx.cfg.model)
    rate, per_epoch = sampling(ctx.cfg, len(ctx.data.y_train))
    noise = noise_for(ctx.cfg, rate, ctx.cfg.epochs * per_epoch)
    privacy_phase(ctx, noise, rate)
    tracker = accountant.new_accountant(ctx.cfg.privacy.accountant)
    step = private_allreduce_step(ctx, model, opt, noise, rate, tracker)
    keep = {"model": model, "optimizer": opt, "accountant": tracker}
    return step, shard_schedule(ctx, rate, per_epoch), keep
