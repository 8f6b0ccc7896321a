"""What the environment says about how this process was started; imports no torch, so the
`distlab` command can ask before its heavy imports."""

from __future__ import annotations

import os
import time

# (rank, world size, local rank) variables of each launcher distlab joins: torchrun, Open MPI,
# MPICH/Intel MPI (PMI) and Slurm.
LAUNCHER_KEYS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


def external_env(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) when a launcher started this process, else None."""
    env = os.environ if environ is None else environ
    for rank_key, world_key, local_key in LAUNCHER_KEYS:
        if rank_key in env and world_key in env and int(env[world_key]) > 1:
            return int(env[rank_key]), int(env[world_key]), int(env.get(local_key, 0))
    return None


def local_world_size(world: int, environ: dict[str, str] | None = None) -> int:
    """How many of the run's processes share this machine (for the default thread count)."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if env.get(key, "").isdigit() and int(env[key]) > 0:
            return int(env[key])
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # Slurm writes "2(x3)"
    return int(per_node) if per_node.isdigit() and int(per_node) > 0 else world


def node_count(world: int, environ: dict[str, str] | None = None) -> int:
    """How many hosts (nodes) the run's processes are spread over: torchrun's
    GROUP_WORLD_SIZE, else the processes over those per host."""
    env = os.environ if environ is None else environ
    group = env.get("GROUP_WORLD_SIZE", "")
    if group.isdigit() and int(group) > 0:
        return int(group)
    return max(1, world // local_world_size(world, env))


def elastic_restart() -> int:
    """How often torchrun's agent has restarted this process group (0: the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


# Index of starttime (field 22: clock ticks from boot to the process's creation) among the
# fields stat_fields returns, which start at field 3.
STARTTIME = 19


def stat_fields(pid: int | str = "self") -> list[str]:
    """The fields of /proc/PID/stat after the process's name, from field 3 (its state) on;
    OSError when the process is gone or there is no procfs."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()  # the name in brackets may hold spaces


def process_started() -> float:
    """When this process was created, as a `time.time()` value.

    psutil's `create_time` adds the process's start (clock ticks since boot) to the boot
    time from /proc/stat, which Linux rounds down to a whole second: the result is up to a
    second early, the same amount for every process of one boot (0.40 s on the machine that
    found it), and every start-up and wall figure measured from it was that much too long.
    On Linux the process's age is taken from the same boot clock instead (CLOCK_BOOTTIME
    against the start in /proc/self/stat), exact to a clock tick (10 ms).
    """
    try:
        ticks = int(stat_fields()[STARTTIME])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):  # no procfs or no boot clock
        import psutil

        return psutil.Process().create_time()
    return time.time() - age


# Longer asleep than this between its creation and distlab's first line, a process ran
# something else first (a shell's setup, then `exec distlab ...`); a fresh interpreter reading
# its standard library from disk sleeps milliseconds.
SLEPT_BEFORE_EXEC_S = 0.5

_launched: float | None = None


def launched() -> float:
    """When this command began, as a `time.time()` value, fixed by the first call (the
    `distlab` entry makes it first thing): the process's creation, unless the process slept
    before it became this program. A shell that runs other commands and then execs distlab
    (`bash -c 'setup && distlab run'`, a container's `exec "$@"`) hands over a process created
    long before; its age would count the setup as start-up. Then the command began when the
    process's time on a CPU or waiting for one (/proc/self/schedstat) began, counted back from
    now: the shell's own few milliseconds of CPU before exec are all it adds."""
    global _launched
    if _launched is None:
        _launched = program_started()
    return _launched


def program_started() -> float:
    """See `launched`; computed afresh."""
    created = process_started()
    busy = busy_seconds()
    now = time.time()
    if busy is not None and (now - created) - busy > SLEPT_BEFORE_EXEC_S:
        return now - busy
    return created


def busy_seconds() -> float | None:
    """Seconds this process has run on a CPU or waited in a run queue, or None where the
    kernel does not say (no /proc/self/schedstat)."""
    try:
        with open("/proc/self/schedstat") as stat:
            on_cpu, waiting = stat.read().split()[:2]
        return (int(on_cpu) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return None


def machine_load() -> dict[str, float | int | None]:
    """How busy the machine is now: the 1-minute load average (runnable and waiting tasks of
    every process on the machine, this run's own included), the CPU time counters from
    /proc/stat (all CPUs, in clock ticks) and this process's own CPU seconds. Two readings
    give the CPU time other programs took between them, and the share a hypervisor stole.
    A timing taken on a loaded or stolen-from machine misleads; the run records both so its
    report can say so. None where the OS does not tell."""
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    steal = total = idle = None
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        total, idle = sum(fields[:8]), fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else None
    except (OSError, ValueError, IndexError):
        pass
    return {
        "load": load,
        "cpu_ticks": total,
        "idle_ticks": idle,
        "steal_ticks": steal,
        "own_cpu_seconds": round(time.process_time(), 4),
    }


def other_cores(before: dict, after: dict, own_seconds: float, wall: float) -> float | None:
    """The cores other programs kept busy on average between two `machine_load` readings
    `wall` seconds apart, while this run's processes used `own_seconds` of CPU; None where
    unknown. Unlike the load average, which trails by a minute (a sweep's previous cell
    still weighs on it), this counts only the time between the readings.

    >>> before = {"cpu_ticks": 0, "idle_ticks": 0, "steal_ticks": 0}
    >>> after = {"cpu_ticks": 400, "idle_ticks": 100, "steal_ticks": 0}  # 3 s busy at 100 Hz
    >>> other_cores(before, after, own_seconds=1.0, wall=2.0)
    1.0
    """
    keys = ("cpu_ticks", "idle_ticks", "steal_ticks")
    if wall <= 0 or any(r.get(k) is None for r in (before, after) for k in keys):
        return None
    busy = [r["cpu_ticks"] - r["idle_ticks"] - r["steal_ticks"] for r in (before, after)]
    seconds = (busy[1] - busy[0]) / os.sysconf("SC_CLK_TCK")
    return round(max(0.0, seconds - own_seconds) / wall, 3)


def steal_fraction(before: dict, after: dict) -> float | None:
    """The share of all CPU time stolen between two `machine_load` readings, or None.

    >>> steal_fraction({"cpu_ticks": 100, "steal_ticks": 5}, {"cpu_ticks": 300, "steal_ticks": 25})
    0.1
    """
    ticks = (after.get("cpu_ticks") or 0) - (before.get("cpu_ticks") or 0)
    if before.get("steal_ticks") is None or after.get("steal_ticks") is None or ticks <= 0:
        return None
    return round((after["steal_ticks"] - before["steal_ticks"]) / ticks, 4)
