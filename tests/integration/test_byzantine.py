"""Byzantine workers on allreduce and param-server, in real process groups: a sign-flipping
worker ruins the mean, while the coordinate-wise median and Krum (Yin et al. 2018; Blanchard
et al. 2017) stay near the clean run; with no attack and the mean, the run is the plain one."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import final_state, run_small, step_losses

pytestmark = pytest.mark.slow

MNIST = {"dataset": "mnist-sample", "model": "logreg", "epochs": 1, "batch_size": 64}
# one of 4 workers sends -4 x its gradient: the mean of the four then points uphill
FLIP = {"kind": "sign-flip", "fraction": 0.25, "scale": 4.0}


def allreduce(tmp_path, aggregator: str = "mean", **fields):
    strategy = {"name": "allreduce", "aggregator": aggregator}
    return run_small(tmp_path, strategy=strategy, workers=4, **MNIST, **fields)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return allreduce(tmp_path_factory.mktemp("clean"))


def test_sign_flip_ruins_the_mean_and_median_and_krum_hold(tmp_path, clean):
    base = clean.summary["final_accuracy"]
    assert base > 0.8
    mean = allreduce(tmp_path / "mean", attack=FLIP)
    assert mean.summary["final_accuracy"] < base - 0.3
    assert mean.summary["attack"] == "sign-flip"
    attackers = mean.summary["attackers"]
    assert len(attackers) == 1 and 0 <= attackers[0] < 4
    steps = [e for e in mean.events if e["kind"] == "step" and e["rank"] == 0]
    assert all(e["attackers"] == attackers for e in steps)
    for rule in ("median", "krum"):
        robust = allreduce(tmp_path / rule, rule, attack=FLIP)
        assert robust.summary["final_accuracy"] >= base - 0.05, rule


def test_the_mean_without_an_attack_is_the_plain_run(tmp_path, clean):
    again = allreduce(tmp_path, attack={"kind": "none"})
    assert step_losses(again) == step_losses(clean) != []
    a, b = final_state(again), final_state(clean)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert clean.summary["attackers"] is None


# async: the median runs on each worker's last gradient, older ones among them, at every
# arrival, so it gives up more than in a synchronous step, and how much depends on the order
# the gradients arrive in (0.60 to 0.85 against 0.86-0.88 clean, seen here, and at times
# no better than the attacked mean): only the synchronous server is held to a bound
@pytest.mark.parametrize(("mode", "slack"), [("sync", 0.05)])
def test_param_server_with_a_byzantine_worker_and_the_median(tmp_path, mode, slack):
    strategy = {"name": "param-server", "mode": mode}
    clean = run_small(tmp_path / "c", strategy=strategy, workers=3, **MNIST)
    attacked = run_small(tmp_path / "m", strategy=strategy, workers=3, attack=FLIP, **MNIST)
    robust = {**strategy, "aggregator": "median"}
    held = run_small(tmp_path / "r", strategy=robust, workers=3, attack=FLIP, **MNIST)
    base = clean.summary["final_accuracy"]
    accuracies = (base, attacked.summary["final_accuracy"], held.summary["final_accuracy"])
    assert accuracies[1] < base - 0.3, accuracies
    assert accuracies[2] >= base - slack, accuracies
    assert accuracies[2] > accuracies[1] + 0.3, accuracies
    # the server's ranks are 1..3: the attacker is a worker rank
    assert held.summary["attackers"][0] in (1, 2, 3)


def test_label_flipping_workers_train_on_flipped_labels(tmp_path, clean):
    flipped = allreduce(tmp_path, attack={"kind": "label-flip", "fraction": 0.5})
    assert len(flipped.summary["attackers"]) == 2
    assert flipped.summary["final_accuracy"] < clean.summary["final_accuracy"] - 0.2
