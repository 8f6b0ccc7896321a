"""Communication graphs for decentralized training: topologies, mixing matrices, spectral gap.

Pure numpy (no torch): the config check, the summary and every worker build the same graph
from the config and the seed, so no message ever says who talks to whom.

A graph is a symmetric boolean adjacency matrix without self-loops. A mixing matrix W has
W[i, j] > 0 only where i and j are neighbours (or i == j); worker i's new model is
sum_j W[i, j] x_j. Boyd, Ghosh, Prabhakar and Shah 2006, "Randomized gossip algorithms":
the consensus error shrinks by the second largest eigenvalue modulus of W per round, so
1 - |lambda_2| (the spectral gap) is the speed of mixing.

    >>> ring_graph(4).sum(axis=1).tolist()
    [2, 2, 2, 2]
    >>> torus_shape(6)
    (2, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOPOLOGIES = ("ring", "torus", "complete", "star", "random-k", "file", "none")
MIXINGS = ("uniform", "metropolis")

# Stream tag that keeps random-k's graphs apart from every other generator under one seed.
GRAPH_STREAM = 7


def ring_graph(n: int) -> np.ndarray:
    """Worker i talks to i - 1 and i + 1 (mod n)."""
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in ((i - 1) % n, (i + 1) % n):
            adj[i, j] = i != j
    return adj


def torus_shape(n: int) -> tuple[int, int]:
    """The most square rows x cols == n with both >= 2; ValueError when n has no such split."""
    rows = max((r for r in range(2, int(n**0.5) + 1) if n % r == 0), default=None)
    if rows is None:
        allowed = ", ".join(str(r * c) for r in range(2, 4) for c in range(r, 5))
        raise ValueError(
            f"topology torus needs --workers = rows x cols with both >= 2 (got {n}; "
            f"allowed e.g. {allowed}, ...)"
        )
    return rows, n // rows


def torus_graph(n: int) -> np.ndarray:
    """A rows x cols grid with wrap-around: up, down, left and right neighbours (a side of 2
    gives one neighbour along it, not two copies)."""
    rows, cols = torus_shape(n)
    adj = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                adj[i, ((r + dr) % rows) * cols + (c + dc) % cols] = True
    np.fill_diagonal(adj, False)
    return adj


def complete_graph(n: int) -> np.ndarray:
    return ~np.eye(n, dtype=bool)


def star_graph(n: int) -> np.ndarray:
    """Worker 0 is the hub; every other worker talks to it alone."""
    adj = np.zeros((n, n), dtype=bool)
    adj[0, 1:] = adj[1:, 0] = True
    return adj


def empty_graph(n: int) -> np.ndarray:
    """No edges: every worker trains alone (the local-only baseline)."""
    return np.zeros((n, n), dtype=bool)


def random_graph(n: int, degree: int, seed: int, round_: int) -> np.ndarray:
    """Each worker links to `degree` others drawn at random for this round; links are
    two-way, so a worker may end up with more. Seeded by (seed, round): every worker draws
    the same graph, and a new one each round."""
    if not 1 <= degree <= n - 1:
        raise ValueError(f"strategy.degree must be in 1..{n - 1} for {n} workers (got {degree})")
    rng = np.random.default_rng([seed, GRAPH_STREAM, round_])
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        adj[i, rng.choice(others, size=degree, replace=False)] = True
    return adj | adj.T


def read_edges(path: str | Path, n: int) -> np.ndarray:
    """An edge list: one `i j` pair of worker ranks per line (`#` starts a comment). Refuses
    an unreadable file, a malformed line, a rank outside 0..n-1, a self-loop, and a graph
    that is not connected."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"strategy.graph_file {str(path)!r} cannot be read ({reason})") from None
    adj = np.zeros((n, n), dtype=bool)
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].replace(",", " ").split()
        if not words:
            continue
        i, j = parse_edge(words, path, number, n)
        adj[i, j] = adj[j, i] = True
    check_connected(adj, f"the graph in {path}")
    return adj


def parse_edge(words: list[str], path: str | Path, number: int, n: int) -> tuple[int, int]:
    where = f"{path} line {number}"
    if len(words) != 2 or not all(w.lstrip("-").isdigit() for w in words):
        raise ValueError(f"{where}: expected two worker ranks 'i j' (got {' '.join(words)!r})")
    i, j = int(words[0]), int(words[1])
    for rank in (i, j):
        if not 0 <= rank < n:
            raise ValueError(f"{where}: worker {rank} does not exist (workers are 0..{n - 1})")
    if i == j:
        raise ValueError(f"{where}: self-loop {i}-{j}; every worker already keeps its own model")
    return i, j


def reachable(adj: np.ndarray, start: int = 0) -> np.ndarray:
    """Which workers a walk along the edges reaches from `start`."""
    seen = np.zeros(len(adj), dtype=bool)
    seen[start], frontier = True, [start]
    while frontier:
        nxt = np.flatnonzero(adj[frontier].any(axis=0) & ~seen)
        seen[nxt] = True
        frontier = nxt.tolist()
    return seen


def is_connected(adj: np.ndarray) -> bool:
    return len(adj) <= 1 or bool(reachable(adj).all())


def check_connected(adj: np.ndarray, what: str) -> None:
    if not is_connected(adj):
        cut = np.flatnonzero(~reachable(adj)).tolist()
        raise ValueError(f"{what} is not connected: worker 0 cannot reach workers {cut}")


def build_graph(
    topology: str,
    n: int,
    *,
    degree: int = 2,
    seed: int = 0,
    round_: int = 0,
    graph_file: str | Path | None = None,
) -> np.ndarray:
    """The adjacency of `topology` over n workers (random-k: the graph of round `round_`)."""
    if topology == "random-k":
        return random_graph(n, degree, seed, round_)
    if topology == "file":
        if graph_file is None:
            raise ValueError("topology file needs strategy.graph_file (an edge list 'i j')")
        return read_edges(graph_file, n)
    makers = {
        "ring": ring_graph,
        "torus": torus_graph,
        "complete": complete_graph,
        "star": star_graph,
        "none": empty_graph,
    }
    if topology not in makers:
        raise ValueError(f"unknown topology {topology!r} (allowed: {', '.join(TOPOLOGIES)})")
    return makers[topology](n)


def mixing_matrix(adj: np.ndarray, rule: str = "uniform") -> np.ndarray:
    """W for one gossip round.

    uniform: W[i, j] = 1 / (deg_i + 1) over i and its neighbours (rows sum to 1; columns
    too only on a regular graph). metropolis: Metropolis-Hastings weights (Xiao and Boyd
    2004, "Fast linear iterations for distributed averaging"), W[i, j] = 1 / (1 +
    max(deg_i, deg_j)) on an edge and the rest on the diagonal: symmetric and doubly
    stochastic on any graph, so the average of the models is kept exactly.
    """
    deg = adj.sum(axis=1)
    if rule == "uniform":
        return (adj | np.eye(len(adj), dtype=bool)) / (deg[:, None] + 1.0)
    if rule == "metropolis":
        w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
        np.fill_diagonal(w, 1.0 - w.sum(axis=1))
        return w
    raise ValueError(f"unknown mixing {rule!r} (allowed: {', '.join(MIXINGS)})")


def spectral_gap(w: np.ndarray) -> float:
    """1 - |lambda_2|, the gap below the largest eigenvalue modulus (1 for a stochastic W).
    0 for a graph that is not connected (lambda = 1 repeats), 1 for complete averaging.
    W under uniform weights is similar to a symmetric matrix, so its eigenvalues are real."""
    if len(w) == 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(max(0.0, 1.0 - moduli[1]))


def neighbours(adj: np.ndarray, i: int) -> list[int]:
    return np.flatnonzero(adj[i]).tolist()
