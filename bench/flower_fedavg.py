"""The peer framework's baseline for bench/federated.py: the same FedAvg on Flower's
simulation engine (Ray backend, one virtual SuperNode per client).

mnist-sample, 100 clients of 40 (the plain loop's IID split), LeNet; each round 10 sampled
clients train E=1 epoch with B=10 and SGD lr 0.05, and FedAvg's weighted mean is the new
model: the work of bench/federated.py's plain loop, written as a Flower app (ClientApp with
a train handler, ServerApp running flwr's FedAvg strategy). Each client process runs one
torch thread, two at a time on the 2 cores.

Prints one JSON line: the seconds between consecutive rounds' ends (the strategy's
evaluate_fn is called before round 1 and after each round; it does no evaluation).

    python bench/flower_fedavg.py [--rounds 30]

Needs the deploy and tune extras (flwr and ray); bench/federated.py --flower runs it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

CLIENTS, PER_ROUND, BATCH, LR = 100, 10, 10, 0.05


@functools.cache
def dataset():
    """mnist-sample, loaded once per client process (as Flower's examples cache theirs)."""
    from distlab.data.datasets import load_dataset

    return load_dataset("mnist-sample")


def client_indices(client: int) -> np.ndarray:
    """The plain loop's IID split: 4000 shuffled indices in 100 parts of 40."""
    samples = len(dataset().y_train)
    return np.array_split(np.random.default_rng(0).permutation(samples), CLIENTS)[client]


def train(msg, context):
    """One client's local epoch: E=1, B=10, SGD lr 0.05, from the server's model."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from distlab.models import build_model

    torch.set_num_threads(1)
    data = dataset()
    client = int(context.node_config["partition-id"])
    model = build_model("lenet", data.input_shape, data.classes, seed=0)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng([client, int(msg.content["config"]["server-round"])])
    idx = client_indices(client)
    idx = idx[rng.permutation(len(idx))]
    for i in range(0, len(idx), BATCH):
        batch = torch.from_numpy(idx[i : i + BATCH])
        optimizer.zero_grad()
        F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
        optimizer.step()
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(idx)}),
        }
    )
    return Message(content=content, reply_to=msg)


def server_main(grid, context) -> None:
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from distlab.data.datasets import load_dataset
    from distlab.models import build_model

    data = load_dataset("mnist-sample")
    model = build_model("lenet", data.input_shape, data.classes, seed=0)
    ends: list[float] = []

    def round_end(server_round: int, arrays) -> None:
        ends.append(time.perf_counter())

    strategy = FedAvg(
        fraction_train=PER_ROUND / CLIENTS,
        fraction_evaluate=0.0,
        min_train_nodes=PER_ROUND,
        min_evaluate_nodes=0,
        min_available_nodes=CLIENTS,
    )
    rounds = int(os.environ["FLOWER_BENCH_ROUNDS"])
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=rounds,
        evaluate_fn=round_end,
    )
    with open(os.environ["FLOWER_BENCH_OUT"], "w") as out:
        json.dump({"durations": np.diff(ends).tolist()}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    import sys
    import tempfile

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    # Ray pickles functions of __main__ by value, with what they reach (torch's classes
    # cannot be); imported under this file's module name, they go by reference, and the
    # Ray workers find the module on the PYTHONPATH they inherit.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    import flower_fedavg

    client_app, server_app = ClientApp(), ServerApp()
    client_app.train()(flower_fedavg.train)
    server_app.main()(flower_fedavg.server_main)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rounds.json")
        os.environ.update(FLOWER_BENCH_ROUNDS=str(args.rounds), FLOWER_BENCH_OUT=out)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=CLIENTS,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
        with open(out) as result:
            print(json.dumps(json.load(result)))


if __name__ == "__main__":
    main()
