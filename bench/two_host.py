"""Two simulated hosts (tests/hosts.py): the what-if calibrated on a measured link against
the measured 2-host step, and what crossing a link costs. Needs root and iproute2.

LeNet on mnist-sample (44,426 parameters, 178 kB a step), allreduce, batch 64 (global),
one epoch, one torch thread per process.
`distlab probe-network` measures each link once (unshaped, then shaped with tc tbf to
1 Gbit/s, 100 Mbit/s and 20 Mbit/s); each repeat then runs, next to each other:

    1 host x 2 ranks     shared memory: the what-if's compute, and the one-host throughput
    2 hosts x 1 rank     on each link: the measured step time (train seconds / steps)
    2 hosts x 2 ranks    unshaped, intra_node=auto (hierarchical) and intra_node=gloo (flat)

Predicted step = the what-if at N = 2 from the one-host run of the same repeat, on the link
file (calibrated) and on the link's nominal rate with 50 us (uncalibrated); its error is
(predicted - measured) / measured. Ratios and errors are taken within a repeat and their
median over the repeats is printed (paired medians), then appended to bench/RESULTS.md.

    python bench/two_host.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hosts

from tests.hosts import HOST_DIR, distlab_torchrun, host_bed, missing, wait_all  # noqa: E402

from distlab.experiments.whatif import parse_networks, predict  # noqa: E402

LINKS = (None, "1gbit", "100mbit", "20mbit")
EXCHANGE_LINK = "100mbit"
RUN = ("run", "--strategy", "allreduce", "--model", "lenet", "--dataset", "mnist-sample",
       "--epochs", "1", "--batch-size", "64", "--set", "timeout=60")  # fmt: skip
PORTS = itertools.count(29700)
RESULTS = Path(__file__).with_name("RESULTS.md")


def on_hosts(hosts, nproc: int, args: tuple[str, ...]) -> None:
    """`distlab ARGS` under torchrun with `nproc` ranks on each host; raises on a failure."""
    port = next(PORTS)
    procs = [
        host.popen(distlab_torchrun(len(hosts), rank, nproc, hosts[0].addr, *args, port=port))
        for rank, host in enumerate(hosts)
    ]
    for code, _, err in wait_all(procs, 180):
        if code != 0:
            raise SystemExit(f"{' '.join(args[:2])} failed ({code}): {err.strip()[-600:]}")


def shape(hosts, rate: str | None) -> None:
    for host in hosts:
        host.shape(rate)


def run_hosts(hosts, name: str, nproc: int, *extra: str) -> dict:
    """A run across the hosts; the lead writes it on the first host (its own HOST_DIR)."""
    workers = str(len(hosts) * nproc)
    args = (*RUN, "--workers", workers, *extra, "--out-dir", f"{HOST_DIR}/runs", "--name", name)
    on_hosts(hosts, nproc, args)
    return json.loads((hosts[0].home / "runs" / name / "summary.json").read_text())


def run_local(host, name: str) -> dict:
    argv = [sys.executable, "-m", "distlab", *RUN, "--workers", "2", "--set", "threads=1"]
    done = host.run([*argv, "--out-dir", f"{HOST_DIR}/runs", "--name", name, "-q"], timeout=180)
    if done.returncode:
        raise SystemExit(f"one-host run failed: {done.stderr.strip()[-600:]}")
    return json.loads((host.home / "runs" / name / "summary.json").read_text())


def probe_links(hosts) -> dict[str, Path]:
    """A link file for each link, measured once (written by rank 0, on the first host)."""
    files = {}
    for rate in LINKS:
        shape(hosts, rate)
        name = f"{rate or 'unshaped'}.json"
        extra = ("--link-rate", rate) if rate else ()
        on_hosts(hosts, 1, ("probe-network", "--out", f"{HOST_DIR}/{name}", *extra))
        files[rate or "unshaped"] = hosts[0].home / name
    shape(hosts, None)
    return files


def one_repeat(hosts, files: dict[str, Path], r: int) -> dict[str, float]:
    """The figures of one repeat: steps, errors and ratios."""
    got: dict[str, float] = {}
    local = run_local(hosts[0], f"local-{r}")
    for rate in LINKS:
        shape(hosts, rate)
        label = rate or "unshaped"
        s = run_hosts(hosts, f"{label}-{r}", 1)
        measured = s["train_seconds"] / s["steps"]
        got[f"{label} measured"] = measured
        if rate:
            for kind, net in (("calibrated", str(files[label])), ("uncalibrated", rate)):
                rows, _ = predict(local, parse_networks(net), 50e-6, workers=[2])
                got[f"{label} {kind}"] = rows[0]["unit_seconds"]
        else:
            got["2x1 / 1x2"] = s["samples_per_second"] / local["samples_per_second"]
    got.update(exchange_repeat(hosts, r))
    return got


def exchange_repeat(hosts, r: int) -> dict[str, float]:
    """2 hosts x 2 ranks, hierarchical against flat gloo, on the unshaped link and on one
    shaped to EXCHANGE_LINK. Flat recursive doubling sends two full messages across the link
    in its second round (ranks 0-2 and 1-3); the hierarchy sends one, between the leaders."""
    got = {}
    for rate in (None, EXCHANGE_LINK):
        shape(hosts, rate)
        label = rate or "unshaped"
        flat = run_hosts(hosts, f"flat-{label}-{r}", 2, "--set", "intra_node=gloo")
        tiered = run_hosts(hosts, f"tiered-{label}-{r}", 2, "--set", "intra_node=auto")
        got[f"2x2 auto / gloo {label}"] = tiered["samples_per_second"] / flat["samples_per_second"]
    shape(hosts, None)
    return got


def table(repeats: list[dict], files: dict[str, Path]) -> list[str]:
    med = {k: statistics.median(r[k] for r in repeats) for k in repeats[0]}
    lines = [
        "| link | fit: alpha, payload rate, allreduce overhead, wire/payload | measured step "
        "| calibrated | error | uncalibrated (50 us) | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in (rate or "unshaped" for rate in LINKS):
        fit = json.loads(files[label].read_text())
        rate = fit["bandwidth_bytes_per_second"] * 8e-6
        desc = f"{fit['alpha_seconds'] * 1e6:.0f} us, {rate:.1f} Mbit/s, x{fit['overhead']:.3f}"
        desc += f", {fit.get('wire_per_payload', '-')}"
        cells = [label, desc, f"{med[f'{label} measured'] * 1e3:.2f} ms"]
        for kind in ("calibrated", "uncalibrated"):
            if f"{label} {kind}" in med:
                errors = [(r[f"{label} {kind}"] - r[f"{label} measured"]) / r[f"{label} measured"]
                          for r in repeats]  # fmt: skip
                cells += [
                    f"{med[f'{label} {kind}'] * 1e3:.2f} ms",
                    f"{statistics.median(errors):+.1%}",
                ]
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"2 hosts x 1 rank (unshaped) / 1 host x 2 ranks, samples/s: "
              f"{med['2x1 / 1x2']:.3f} (goal >= 0.8)",
              *exchange_lines(med)]  # fmt: skip
    return lines


def exchange_lines(med: dict[str, float]) -> list[str]:
    return [
        f"2 hosts x 2 ranks, intra_node=auto / intra_node=gloo, samples/s, {label} link: "
        f"{med[f'2x2 auto / gloo {label}']:.3f} (goal >= 1.3)"
        for label in ("unshaped", EXCHANGE_LINK)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exchange-only", action="store_true",
                        help="Only the 2 x 2 hierarchical against flat pairs.")  # fmt: skip
    args = parser.parse_args()
    if missing():
        raise SystemExit(f"bench/two_host.py: {missing()}")
    load = os.getloadavg()[0]
    if args.exchange_only:
        with host_bed(2) as hosts:
            repeats = [exchange_repeat(hosts, r) for r in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in repeats) for k in repeats[0]}
        lines = [f"repeats: {json.dumps(repeats)}", "", *exchange_lines(med)]
        print("\n".join(lines))
        append(lines, args.repeats, load, "--exchange-only ")
        return
    with host_bed(2) as hosts:
        files = probe_links(hosts)
        print({k: json.loads(f.read_text())["allreduce_seconds"] for k, f in files.items()})
        repeats = []
        for r in range(args.repeats):
            repeats.append(one_repeat(hosts, files, r))
            print(f"repeat {r}: {json.dumps(repeats[-1])}", flush=True)
        lines = table(repeats, files)
        print("\n".join(lines))
        append(lines, args.repeats, load)


def append(lines: list[str], repeats: int, load: float, flags: str = "") -> None:
    day = datetime.date.today().isoformat()
    head = [f"### {day}, {os.cpu_count()} cores", "",
            f"`python bench/two_host.py {flags}--repeats {repeats}`: medians of {repeats} repeats; "
            f"load average {load:.2f} when it began.", ""]  # fmt: skip
    if "\n## two_host\n" not in RESULTS.read_text():
        head = ["## two_host", "", (__doc__ or "").split("\n\n")[0], "", *head]
    with RESULTS.open("a") as f:
        f.write("\n" + "\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
