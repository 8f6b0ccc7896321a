"""Graphs for gossip: topologies, mixing matrices, spectral gap, connectivity, edge files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distlab import topology


def degrees(adj: np.ndarray) -> list[int]:
    return adj.sum(axis=1).tolist()


def test_topologies_have_the_hand_counted_degrees():
    assert degrees(topology.ring_graph(5)) == [2] * 5
    assert degrees(topology.complete_graph(4)) == [3] * 4
    assert degrees(topology.star_graph(4)) == [3, 1, 1, 1]
    assert degrees(topology.torus_graph(9)) == [4] * 9  # 3 x 3: up, down, left, right
    assert degrees(topology.torus_graph(8)) == [3] * 8  # 2 x 4: one neighbour across the 2
    assert degrees(topology.ring_graph(2)) == [1, 1]
    assert topology.neighbours(topology.ring_graph(5), 0) == [1, 4]
    for adj in (topology.ring_graph(6), topology.torus_graph(6), topology.star_graph(6)):
        assert (adj == adj.T).all() and not adj.diagonal().any()


@pytest.mark.parametrize("n, shape", [(4, (2, 2)), (6, (2, 3)), (12, (3, 4)), (16, (4, 4))])
def test_torus_takes_the_most_square_split(n, shape):
    assert topology.torus_shape(n) == shape


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_torus_refuses_a_worker_count_without_a_split(n):
    with pytest.raises(ValueError, match=f"rows x cols with both >= 2 \\(got {n};"):
        topology.torus_shape(n)


def test_random_k_is_seeded_two_way_and_changes_by_round():
    a = topology.random_graph(8, 2, seed=0, round_=1)
    again = topology.random_graph(8, 2, seed=0, round_=1)
    other = topology.random_graph(8, 2, seed=0, round_=2)

    assert (a == again).all() and not (a == other).all()
    assert (a == a.T).all() and not a.diagonal().any()
    assert min(degrees(a)) >= 2
    with pytest.raises(ValueError, match="strategy.degree must be in 1..7"):
        topology.random_graph(8, 8, seed=0, round_=1)


@pytest.mark.parametrize(
    "adj",
    [topology.star_graph(5), topology.ring_graph(6), topology.random_graph(7, 1, 3, 1)],
    ids=["star", "ring", "random"],
)
def test_metropolis_weights_are_doubly_stochastic(adj):
    w = topology.mixing_matrix(adj, "metropolis")

    assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
    assert np.allclose(w, w.T) and (w >= 0).all()
    assert ((w > 0) == (adj | np.eye(len(adj), dtype=bool))).all()


def test_metropolis_on_a_star_by_hand():
    # hub degree 3, leaves degree 1: every edge weighs 1 / (1 + 3); the hub keeps 1/4,
    # a leaf keeps 3/4.
    w = topology.mixing_matrix(topology.star_graph(4), "metropolis")
    assert w[0].tolist() == [0.25] * 4
    assert w[1].tolist() == [0.25, 0.75, 0.0, 0.0]


def test_uniform_weights_on_a_star_are_only_row_stochastic():
    w = topology.mixing_matrix(topology.star_graph(4), "uniform")
    assert np.allclose(w.sum(axis=1), 1)
    assert w[1].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert w.sum(axis=0)[0] == pytest.approx(0.25 + 3 * 0.5)  # the hub weighs more


@pytest.mark.parametrize("n", [5, 6, 8, 12])
def test_spectral_gap_of_a_ring_matches_the_closed_form(n):
    # W = (I + A) / 3 has eigenvalues (1 + 2 cos(2 pi k / n)) / 3; for n >= 5 the largest
    # modulus after 1 is k = 1's.
    w = topology.mixing_matrix(topology.ring_graph(n), "uniform")
    assert topology.spectral_gap(w) == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3)


def test_spectral_gap_edges():
    complete = topology.mixing_matrix(topology.complete_graph(4), "uniform")
    alone = topology.mixing_matrix(topology.empty_graph(4), "uniform")
    assert topology.spectral_gap(complete) == pytest.approx(1.0)  # one round averages
    assert topology.spectral_gap(alone) == 0.0  # nothing mixes
    assert topology.spectral_gap(topology.mixing_matrix(topology.ring_graph(4))) == (
        pytest.approx(2 / 3)
    )


def test_mixing_shrinks_disagreement_by_the_second_eigenvalue():
    # Metropolis on a ring keeps the average and shrinks the distance from it by at most
    # 1 - gap per round.
    w = topology.mixing_matrix(topology.ring_graph(8), "metropolis")
    x = np.random.default_rng(0).normal(size=(8, 5))
    spread = [np.linalg.norm(x - x.mean(axis=0))]
    for _ in range(10):
        mean = x.mean(axis=0)
        x = w @ x
        assert np.allclose(x.mean(axis=0), mean)
        spread.append(np.linalg.norm(x - x.mean(axis=0)))
    rate = 1 - topology.spectral_gap(w)
    assert all(b <= a * rate + 1e-12 for a, b in zip(spread, spread[1:], strict=False))


def test_connectivity():
    two_islands = topology.empty_graph(4)
    two_islands[0, 1] = two_islands[1, 0] = two_islands[2, 3] = two_islands[3, 2] = True
    assert topology.is_connected(topology.ring_graph(5))
    assert not topology.is_connected(two_islands)
    with pytest.raises(ValueError, match=r"not connected: worker 0 cannot reach workers \[2, 3\]"):
        topology.check_connected(two_islands, "the graph")


def test_edge_file_reads_pairs_and_comments(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("# a path 0-1-2-3\n0 1\n1,2  # comma works too\n\n2 3\n")
    adj = topology.read_edges(path, 4)
    assert degrees(adj) == [1, 2, 2, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 1\n2 3\n", r"not connected: worker 0 cannot reach workers \[2, 3\]"),
        ("0 1\n1 4\n", "line 2: worker 4 does not exist \\(workers are 0..3\\)"),
        ("0 1\n1 1\n", "line 2: self-loop 1-1"),
        ("0 1 2\n", "line 1: expected two worker ranks 'i j' \\(got '0 1 2'\\)"),
    ],
)
def test_edge_file_refuses_bad_graphs(tmp_path, text, message):
    path = tmp_path / "g.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        topology.read_edges(path, 4)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown topology 'hypercube' \\(allowed: ring, torus"):
        topology.build_graph("hypercube", 4)
    with pytest.raises(ValueError, match="unknown mixing 'max' \\(allowed: uniform, metropolis"):
        topology.mixing_matrix(topology.ring_graph(4), "max")
