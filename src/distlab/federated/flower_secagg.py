"""Secure aggregation of a deployed run: each round of the flower executor goes through
Flower's own SecAgg+ (Bell et al. 2020), `flwr.server.workflow.SecAggPlusWorkflow`, with
`secaggplus_mod` on the ClientApp (deploy/clientapp.py).

The workflow's four stages (keys, shares, masked inputs, unmasking) are Flower's; distlab
gives it the round's sampled clients and the global model through a small legacy strategy,
and takes back only what the server learns: the unmasked weighted mean of the clients'
deltas (each masked delta is scaled by the client's sample count over `max_weight`, the
workflow's weighting), plus each survivor's sample count and metrics. Every surviving
client's row is the global model plus that mean, so the run's mean rule returns it as is.
A client that fails after sharing its keys is unmasked away with the Shamir shares of its
neighbours and counted as lost; a round without enough share holders is aborted.
"""

from __future__ import annotations

import numpy as np
import torch

from distlab.federated.types import Updates

SHARES_RECORD = "fitins.config"  # where the legacy FitIns carries distlab's settings
ABORTED = "lost: secagg: too few share holders left to unmask the round"
DROPPED = "lost: secagg: no masked update (dropped after sharing keys)"


def shares_and_threshold(cfg) -> tuple[int, int]:
    """(num_shares, reconstruction_threshold) of Flower's workflow: a client's shares are
    held by its neighbours and itself, so num_shares = neighbours + 1 (every client of the
    round when neighbours is unset); the threshold is secagg.threshold or a majority."""
    s, p = cfg.secagg, cfg.strategy
    n = p.clients_per_round or p.clients
    shares = min(s.neighbours + 1, n) if s.neighbours else n
    # secagg.threshold's rule (more than half of a client's neighbours), kept here because
    # secagg.py imports this module for its checks
    majority = min(s.neighbours or n - 1, n - 1) // 2 + 1
    return shares, s.threshold if s.threshold is not None else majority


def check_flower_secagg(cfg) -> None:
    """Flower's own limits on its SecAgg+ workflow; ValueError naming the setting."""
    shares, t = shares_and_threshold(cfg)
    if shares <= 2:
        raise ValueError(
            f"secagg with executor flower shares each secret among {shares} clients: "
            "Flower's SecAgg+ needs more than 2 (3 or more clients per round, neighbours >= 2)"
        )
    if t >= shares:
        raise ValueError(
            f"secagg.threshold ({t}) with executor flower must be < the {shares} holders of "
            "each client's shares (neighbours + 1, or the clients of a round)"
        )
    if cfg.attack.on:
        raise ValueError(
            f"secagg with executor flower and attack.kind={cfg.attack.kind}: the server gets "
            "only the sum of the deployed clients' updates, where no attack can act (use an "
            "in-process executor)"
        )


class SecureRounds:
    """Runs one SecAggPlusWorkflow per round over the executor's Grid."""

    def __init__(self, cfg, timeout: float, max_weight: float, measure) -> None:
        from flwr.server.workflow import SecAggPlusWorkflow

        self.measure = measure  # a message's bytes, as the executor counts them

        shares, t = shares_and_threshold(cfg)
        self.workflow = SecAggPlusWorkflow(
            shares,
            t,
            max_weight=max_weight,
            clipping_range=cfg.secagg.clip,
            quantization_range=2**cfg.secagg.bits,
            timeout=timeout,
        )

    def train(self, executor, round_: int, start: torch.Tensor, clients, live) -> Updates:
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.server.compat.legacy_context import LegacyContext

        nodes, lost = {}, {}
        for client in clients.tolist():
            host = executor.clients.get(client)
            if host is None or host.status == "lost" or host.node not in live:
                lost[client] = "lost: not connected"
            else:
                nodes[host.node] = client
        arrays = [v.numpy() for v in executor.layout.split(start.detach()).values()]
        cohort = Cohort(executor.config_json, round_, nodes, arrays)
        if len(nodes) >= 2:
            # What Flower's DefaultWorkflow would hold: the round and the global model.
            model = ArrayRecord(arrays)
            state = RecordDict({"config": ConfigRecord({"current_round": round_}),
                                "parameters": model})  # fmt: skip
            context = LegacyContext(Context(0, 0, {}, state, {}), strategy=cohort)
            self.workflow(CountingGrid(executor.grid, executor.comm, self.measure), context)
        return self.updates(executor, round_, clients, cohort, arrays, lost)

    def updates(self, executor, round_, clients, cohort, arrays, lost) -> Updates:
        rows, sizes, losses = [], [], []
        model = None
        if cohort.mean is not None:
            deltas = zip(arrays, cohort.mean, strict=True)
            model = dict(zip(executor.layout.names, (a + d for a, d in deltas), strict=True))
        for client in clients.tolist():
            node = next((n for n, c in cohort.nodes.items() if c == client), None)
            fitres = cohort.results.get(node) if model is not None else None
            if fitres is None:
                lost.setdefault(client, DROPPED if model is not None else ABORTED)
                rows.append(None)
                sizes.append(0)
                losses.append(float("nan"))
                why = lost[client].removeprefix("lost: ")
                executor.recorder.emit("client", round=round_, client=client, status="lost",
                                       reason=why, node=node)  # fmt: skip
                continue
            info = dict(fitres.metrics)
            rows.append(model)
            sizes.append(int(fitres.num_examples))
            losses.append(float(info["loss"]))
            executor.recorder.emit("client", round=round_, client=client, status="trained",
                                   node=node, samples=int(fitres.num_examples),
                                   loss=float(info["loss"]),
                                   train_seconds=float(info["train_seconds"]),
                                   val_accuracy=info.get("val_accuracy"))  # fmt: skip
        metrics = {"loss": losses}
        return Updates.from_named(clients, rows, sizes, metrics, executor.layout, lost)


class Cohort:
    """The legacy strategy the workflow asks for: the round's clients and, afterwards, the
    unmasked mean delta (each survivor's FitRes carries it) and the survivors' FitRes."""

    def __init__(self, config_json: str, round_: int, nodes: dict, arrays: list) -> None:
        self.config_json, self.round, self.nodes, self.arrays = config_json, round_, nodes, arrays
        self.mean: list[np.ndarray] | None = None
        self.results: dict = {}

    def configure_fit(self, server_round, parameters, client_manager):
        from flwr.common import FitIns, ndarrays_to_parameters
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        params = ndarrays_to_parameters(self.arrays)
        return [
            (
                GridClientProxy(node, None, 0),
                FitIns(params, {"config": self.config_json, "round": self.round, "client": client}),
            )
            for node, client in self.nodes.items()
        ]

    def aggregate_fit(self, server_round, results, failures):
        from flwr.common import parameters_to_ndarrays

        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        self.results = {proxy.node_id: fitres for proxy, fitres in results}
        return None, {}


class CountingGrid:
    """The executor's Grid, counting the bytes of every message of the protocol."""

    def __init__(self, grid, comm, measure) -> None:
        self.grid, self.comm, self.measure = grid, comm, measure

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.comm.count(sum(self.measure(m) for m in messages), 0)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.comm.count(0, sum(self.measure(r) for r in replies if not r.has_error()))
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)
