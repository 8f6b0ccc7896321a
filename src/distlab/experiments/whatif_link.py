"""Links measured by `distlab probe-network`: the least-squares fits of its times, and the
link file read back as a network of the what-if (whatif.py), with its own latency and the
allreduce times it measured around the size of a run's message.

The file (format "distlab-link/1", JSON) holds the sizes and median times measured, the
point-to-point fit (alpha_seconds, beta_seconds_per_byte), the allreduce's fit to the ring
formula (allreduce_alpha_seconds) and its overhead over the point-to-point beta.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def six_digits(value: float) -> float:
    return float(f"{value:.6g}")


# --- the link file ------------------------------------------------------

LINK_FORMAT = "distlab-link/1"
LINK_KEYS = ("alpha_seconds", "beta_seconds_per_byte", "overhead")


def is_link_file(text: str) -> bool:
    return text.lower().endswith(".json") or "/" in text


@dataclass(frozen=True)
class MeasuredLink:
    """A link file as the what-if prices it: its whole-range fit, and the allreduce times it
    measured, from which `at` fits the sizes around one message."""

    label: str
    bandwidth: float
    alpha: float
    world: int
    sizes: tuple[float, ...]
    seconds: tuple[float, ...]

    def __iter__(self):  # unpacks as a named link does, with its own latency
        return iter((self.label, self.bandwidth, self.alpha))

    def __len__(self) -> int:
        return 3

    def at(self, message: float) -> tuple[float, float]:
        """(alpha, bytes per second) of the ring formula fitted to the allreduce times at
        the measured sizes within a factor 4 of `message` (at least the nearest two). A
        real link is not one line from 4 B to 16 MB: below a shaper's burst a message
        passes at line rate, and a long queue slows the largest ones further."""
        near = [i for i, size in enumerate(self.sizes) if message / 4 <= size <= message * 4]
        if len(near) < 2:
            order = sorted(range(len(self.sizes)), key=lambda i: abs(self.sizes[i] - message))
            near = sorted(order[:2])
        intercept, slope = fit_line([self.sizes[i] for i in near], [self.seconds[i] for i in near])
        if slope <= 0:
            return self.alpha, self.bandwidth
        steps = 2 * (self.world - 1)
        return intercept / steps, steps / (self.world * slope)


def read_link(path: str) -> MeasuredLink:
    """A link file of distlab probe-network, or ValueError in one line.

    Its bandwidth is the point-to-point fit's times the overhead the allreduce showed
    beyond the ring formula; alpha is the allreduce fit's latency per message, so the ring
    formula on these two gives back the allreduce that was measured."""
    where = f"--network: link file {path!r}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist (give a speed or a probe-network file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not JSON"
        raise ValueError(f"{where} cannot be read: {reason}") from None
    if not isinstance(data, dict) or data.get("format") != LINK_FORMAT:
        raise ValueError(f"{where} is not from distlab probe-network (format {LINK_FORMAT!r})")
    values = [data.get(k) for k in (*LINK_KEYS, "allreduce_alpha_seconds")]
    if not all(is_number(v) and v >= 0 for v in values) or not values[1] * values[2] > 0:
        keys = ", ".join((*LINK_KEYS, "allreduce_alpha_seconds"))
        raise ValueError(f"{where} needs finite numbers >= 0 (and a per-byte time > 0): {keys}")
    _, beta, overhead, ring_alpha = values
    sizes, seconds = data.get("sizes_bytes") or [], data.get("allreduce_seconds") or []
    if len(sizes) != len(seconds) or not all(is_number(v) and v > 0 for v in sizes + seconds):
        raise ValueError(f"{where}: sizes_bytes and allreduce_seconds must pair numbers > 0")
    world = data.get("world") if isinstance(data.get("world"), int) else 2
    return MeasuredLink(
        Path(path).name, 1 / (beta * overhead), ring_alpha, max(2, world), tuple(sizes),
        tuple(seconds),
    )  # fmt: skip


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of y = a + b*x by least squares. The largest messages weigh most,
    as they should: below a shaper's burst a small message passes at line rate, and a model
    of a few hundred kB is priced by the sustained rate. A negative intercept (a burst, or
    noise on a link whose latency is below the clock) is 0, the slope refitted through 0.

    >>> fit_line([1, 2, 3], [3, 5, 7])
    (1.0, 2.0)
    """
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a fit needs times at two message sizes at least")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    if intercept < 0:
        intercept = 0.0
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    return round(intercept, 12), round(slope, 15)


def fit_link(
    sizes: Sequence[int], p2p: Sequence[float], allreduce: Sequence[float], world: int
) -> dict[str, float]:
    """Alpha and beta of the point-to-point times (one way, time = alpha + bytes*beta), the
    allreduce times fitted to the ring formula 2(N-1)(alpha + bytes/(N*bandwidth)), and the
    overhead: the allreduce's time per byte over what the formula makes of the point-to-point
    beta (headers, protocol, a collective's extra copies). ValueError when the time does
    not grow with the size (nothing to fit a bandwidth to)."""
    alpha, beta = fit_line(sizes, p2p)
    intercept, slope = fit_line(sizes, allreduce)
    if beta <= 0 or slope <= 0:
        raise ValueError("the measured time did not grow with the message size: no bandwidth")
    steps = 2 * (world - 1)
    ring_beta = slope * world / steps  # seconds per byte the ring formula's bandwidth gives
    return {
        "alpha_seconds": alpha,
        "beta_seconds_per_byte": beta,
        "bandwidth_bytes_per_second": six_digits(1 / beta),
        "allreduce_alpha_seconds": six_digits(intercept / steps),
        "overhead": six_digits(ring_beta / beta),
    }
