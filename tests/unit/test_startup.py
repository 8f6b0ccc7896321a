"""Start-up: nothing heavy before the first step, and the same numbers as torch.optim.

The optimizers of make_optimizer skip torch's torch.compile guards, which import torch._dynamo
and sympy (about 0.7 s); partition.png is drawn once the run is over, not before its first
step. Imports are checked in fresh interpreters, since this one has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from tests.conftest import make_config
from torch import nn

from distlab.api import finish_run, prepare
from distlab.config import OptimizerConfig
from distlab.strategies import get_spec
from distlab.training import make_optimizer

HEAVY = ("torch._dynamo", "sympy", "matplotlib")


def fresh_python(*args: str) -> dict:
    """Run `python ARGS` in a new interpreter; it prints one JSON object, returned here."""
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


OPTIMIZER_STEP = """
import json, sys, torch
from distlab.config import OptimizerConfig
from distlab.training import compute_gradients, make_optimizer
model = torch.nn.Linear(4, 3)
for cfg in (OptimizerConfig(momentum=0.9, weight_decay=1e-4), OptimizerConfig(name="adam")):
    opt = make_optimizer(model.parameters(), cfg)
    compute_gradients(model, torch.ones(2, 4), torch.tensor([0, 2]))
    opt.step()
    opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
print(json.dumps({m: m in sys.modules for m in sys.argv[1].split(",")}))
"""


def test_an_optimizer_step_imports_no_compiler_stack():
    loaded = fresh_python("-c", OPTIMIZER_STEP, ",".join(HEAVY))

    assert loaded == {m: False for m in HEAVY}


def train(opt_of, cfg: OptimizerConfig, steps: int = 5) -> list[torch.Tensor]:
    """Parameters and optimizer state after `steps` updates of a seeded net."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = opt_of(model.parameters(), cfg)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in model.parameters()] + state


def torch_optimizer(params, cfg: OptimizerConfig):
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@pytest.mark.parametrize(
    "cfg",
    [
        OptimizerConfig(lr=0.1),
        OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=1e-3),
        OptimizerConfig(name="adam", lr=0.01, weight_decay=1e-3),
    ],
    ids=["sgd", "sgd-momentum", "adam"],
)
def test_make_optimizer_matches_torch_optim_bit_for_bit(cfg):
    ours, theirs = train(make_optimizer, cfg), train(torch_optimizer, cfg)

    assert len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert isinstance(make_optimizer([nn.Parameter(torch.ones(1))], cfg), torch.optim.Optimizer)


RUN_UNTIL_FIRST_STEP = """
import json, sys
from distlab.api import run

seen = {}

def on_event(event):
    if event.get("kind") == "step" and not seen:
        seen.update({m: m in sys.modules for m in sys.argv[2].split(",")})

if __name__ == "__main__":
    result = run(json.loads(sys.argv[1]), on_event=on_event)
    files = sorted(p.name for p in result.run_dir.iterdir())
    print(json.dumps({"loaded": seen, "files": files, "status": result.summary["status"]}))
"""


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-processes"])
def test_a_run_imports_nothing_heavy_before_its_first_step(tmp_path, workers):
    script = tmp_path / "first_step.py"
    script.write_text(RUN_UNTIL_FIRST_STEP)
    cfg = make_config(tmp_path, strategy="allreduce", workers=workers, save_model=False)

    got = fresh_python(str(script), cfg.to_json(), ",".join(HEAVY))

    # With two workers this is the parent, which used to draw the plot before launching.
    assert got["loaded"] == {m: False for m in HEAVY}
    assert got["status"] == "completed"
    # one process trains on all the data: no partition to record
    expected = {"partition.json", "partition.png"} if workers == 2 else set()
    assert {name for name in got["files"] if name.startswith("partition")} == expected


def test_the_partition_plot_waits_for_the_end_of_a_run_even_a_failed_one(tmp_path):
    cfg = make_config(tmp_path, strategy="allreduce", workers=2)
    spec = get_spec("allreduce")
    split = spec.data_partition(cfg, torch.arange(200).remainder(4).numpy())

    run_dir = prepare(cfg, False, split, None)
    written = {p.name for p in run_dir.iterdir()}
    finish_run(cfg, spec, run_dir, 2, time.time(), "failed")

    assert "partition.json" in written and "partition.png" not in written
    assert (run_dir / "partition.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


PROCESS_STARTED = """
import json, time
from distlab.runtime.environ import launched, process_started
print(json.dumps({"created": process_started(), "launched": launched(), "now": time.time()}))
"""


def test_a_process_start_is_read_to_the_clock_tick():
    # psutil's create_time is up to a second early on Linux (the boot time it adds is a whole
    # second), which made every start-up figure that much too long: a child's start must lie
    # between its launch, seen from here, and its own first look at the clock.
    for _ in range(3):
        launched = time.time()
        child = fresh_python("-c", PROCESS_STARTED)

        assert launched - 0.02 <= child["created"] <= child["now"]
        # a fresh process began at its creation (each read is exact to a clock tick)
        assert abs(child["launched"] - child["created"]) < 0.011


def test_a_command_a_shell_execs_after_other_work_began_at_the_exec():
    # `bash -c 'setup && distlab run'` execs distlab in the shell's own process, created
    # before the setup: the setup is not the command's start-up.
    launched = time.time()
    done = subprocess.run(
        ["bash", "-c", 'sleep 1.5 && exec "$0" -c "$1"', sys.executable, PROCESS_STARTED],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    child = json.loads(done.stdout)

    assert child["created"] < launched + 0.5
    assert launched + 1.5 <= child["launched"] <= child["now"]
