"""The simulated clock: draws by seed, traces, durations, the step clock and the round clock's
deadline (drop and partial work)."""

from __future__ import annotations

import numpy as np
import pytest

from distlab.clock import Clock, StepClock, read_trace
from distlab.config import validate_config
from distlab.config_sections import SystemConfig
from distlab.federated.server import not_trained
from distlab.federated.stragglers import LATE, UNAVAILABLE, RoundClock, cut_schedules


def test_speeds_are_drawn_from_the_seed():
    cfg = SystemConfig(speed="lognormal", sigma=1.0, vary_links=True)
    a, b, c = Clock(cfg, 200, 0), Clock(cfg, 200, 0), Clock(cfg, 200, 1)

    assert np.array_equal(a.profile.speed, b.profile.speed)
    assert np.array_equal(a.profile.bandwidth, b.profile.bandwidth)
    assert not np.array_equal(a.profile.speed, c.profile.speed)
    assert 0.7 < np.median(a.profile.speed) < 1.4  # lognormal(0, 1): median 1
    assert np.ptp(np.log(a.profile.speed)) > 3  # sigma 1 spreads them
    assert np.array_equal(Clock(SystemConfig(), 5, 0).profile.speed, np.ones(5))
    uniform = Clock(SystemConfig(speed="uniform", low=0.5, high=2.0), 100, 0).profile.speed
    assert uniform.min() >= 0.5 and uniform.max() <= 2.0


def test_a_trace_gives_speeds_links_and_windows(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("client,speed,bandwidth,windows\n0,2,1e6,0-10;20-30\n2,0.5,3e6,\n")

    profile = read_trace(path, 4)

    assert profile.speed.tolist() == [2.0, 1.0, 0.5, 1.0]  # a client left out runs at 1
    assert profile.bandwidth.tolist() == [1e6, 2e6, 3e6, 2e6]  # on the others' median link
    assert profile.windows[0] == ((0.0, 10.0), (20.0, 30.0)) and profile.windows[2] is None
    clock = Clock(SystemConfig(trace=path), 4, 0)
    assert clock.available(1, np.arange(4), 5.0).tolist() == [True] * 4
    assert clock.available(1, np.arange(4), 15.0).tolist() == [False, True, True, True]
    assert clock.available(1, np.arange(4), 30.0).tolist() == [False, True, True, True]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("client,speed,bandwidth\n4,1,1e6\n", "line 2: unknown client 4"),
        ("client,speed,bandwidth\n0,fast,1e6\n", "line 2: client must be an integer"),
        ("client,speed\n0,1\n", "must be a CSV with columns client, speed, bandwidth"),
        ("client,speed,bandwidth,windows\n0,1,1e6,3\n", "windows must be START-END"),
    ],
)
def test_a_bad_trace_is_one_line_naming_the_file(tmp_path, text, says):
    path = tmp_path / "bad.csv"
    path.write_text(text)

    with pytest.raises(ValueError, match=says) as info:
        read_trace(path, 4)
    assert "\n" not in str(info.value) and "bad.csv" in str(info.value)


def test_durations_follow_speed_and_link():
    clock = Clock(SystemConfig(speed="lognormal", sample_seconds=0.01, bandwidth=8e6), 10, 3)
    clients = np.array([1, 4])

    compute = clock.compute_seconds(clients, np.array([100, 50]))
    link = clock.link_seconds(clients, 1_000_000)

    assert np.allclose(compute, [1.0 / clock.profile.speed[1], 0.5 / clock.profile.speed[4]])
    assert np.allclose(link, [1.0, 1.0])  # 1 MB over 8 Mbit/s
    assert clock.advance(2.5) == 2.5 and clock.advance(1.0) == 3.5


def test_availability_is_drawn_per_round_from_the_seed():
    clock = Clock(SystemConfig(availability=0.5), 1000, 0)
    first, again = clock.available(1, np.arange(1000), 0.0), clock.available(1, np.arange(1000), 0)

    assert np.array_equal(first, again) and 0.4 < first.mean() < 0.6
    assert not np.array_equal(first, clock.available(2, np.arange(1000), 0.0))


def test_a_step_waits_for_the_slowest_worker_then_this_ranks_bytes():
    cfg = SystemConfig(speed="lognormal", sample_seconds=0.001, bandwidth=1e6)
    step = StepClock(cfg, 4, 1, 0)
    speed = Clock(cfg, 4, 0).profile.speed

    end = step.step(32, 1000)

    assert end == pytest.approx(32 * 0.001 / speed.min() + 8000 / 1e6)
    assert step.step(32, 0) == pytest.approx(end + 32 * 0.001 / speed.min())


def round_clock(deadline=None, mode="drop", speed="equal", sizes=(100, 100, 300, 50)):
    cfg = SystemConfig(speed=speed, deadline=deadline, stragglers=mode, bandwidth=8e6)
    clock = Clock(cfg, len(sizes), 0)
    # 10 samples a batch, 2 local epochs, 1 MB down and 0.5 MB up
    return RoundClock(clock, np.array(sizes), 10, 2, 1_000_000, 500_000)


def test_a_round_lasts_as_long_as_its_slowest_client():
    work = round_clock().plan(1, np.arange(4), 0.0)

    # 300 samples x 2 epochs x 1 ms, plus 1.5 MB over 8 Mbit/s
    assert work.seconds == pytest.approx(0.6 + 1.5)
    assert work.clients.tolist() == [0, 1, 2, 3] and work.steps is None and len(work.late) == 0


def test_drop_leaves_out_the_clients_past_the_deadline():
    work = round_clock(deadline=1.8).plan(1, np.arange(4), 0.0)

    assert work.clients.tolist() == [0, 1, 3] and work.late.tolist() == [2]
    assert work.seconds == 1.8 and work.steps is None
    assert not_trained(work) == {2: LATE}


def test_partial_work_cuts_a_stragglers_steps_at_the_deadline():
    work = round_clock(deadline=1.8, mode="partial").plan(1, np.arange(4), 0.0)

    # 0.3 s left after 1.5 s of transfers: 300 samples, one epoch of client 2's 30 batches
    assert work.clients.tolist() == [0, 1, 2, 3] and work.late.tolist() == [2]
    assert work.steps.tolist() == [20, 20, 30, 10] and work.seconds == 1.8
    batches = [[np.arange(10)] * 20, [np.arange(10)] * 20, [np.arange(10)] * 60, [[0]] * 10]
    assert [len(s) for s in cut_schedules(batches, work.steps)] == [20, 20, 30, 10]


def test_a_straggler_with_no_whole_step_in_time_is_dropped():
    work = round_clock(deadline=1.505, mode="partial").plan(1, np.arange(4), 0.0)

    assert work.clients.size == 0 and work.late.tolist() == [0, 1, 2, 3]
    assert not_trained(work) == dict.fromkeys(range(4), LATE)


def test_clients_outside_their_windows_are_not_trained(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("client,speed,bandwidth,windows\n0,1,8e6,0-5\n1,1,8e6,\n")
    clock = Clock(SystemConfig(trace=path), 2, 0)

    work = RoundClock(clock, np.array([10, 10]), 10, 1, 0, 0).plan(1, np.arange(2), 6.0)

    assert work.clients.tolist() == [1] and not_trained(work) == {0: UNAVAILABLE}


def base(**over):
    cfg = {"dataset": "synthetic", "model": "logreg", "system": {"deadline": 1.0}}
    return {**cfg, **over}


def test_partial_work_needs_an_executor_that_cuts_steps():
    strategy = {"name": "fedavg", "clients": 4, "executor": "vectorized"}
    system = {"deadline": 1.0, "stragglers": "partial"}
    assert validate_config(base(strategy=strategy, system=system)).system.deadline == 1.0

    with pytest.raises(ValueError, match="stragglers=partial needs executor vectorized"):
        validate_config(base(strategy={**strategy, "executor": "sequential"}, system=system))
    with pytest.raises(ValueError, match="deadline applies to federated rounds"):
        validate_config(base(strategy="allreduce", workers=2))


def test_the_samples_a_round_trained_count_a_stragglers_cut_work():
    clock = round_clock(deadline=1.8, mode="partial")
    work = clock.plan(1, np.arange(4), 0.0)

    # 100, 100 and 50 samples x 2 epochs in full; client 2 did one of its two epochs of 300
    assert clock.samples_done(work, np.arange(4)) == 200 + 200 + 300 + 100
    assert clock.samples_done(work, np.array([0, 2])) == 200 + 300  # the usable ones only
    full = round_clock().plan(1, np.arange(4), 0.0)
    assert round_clock().samples_done(full, np.arange(4)) == 2 * (100 + 100 + 300 + 50)
