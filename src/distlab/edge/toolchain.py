"""Building the edge_lr firmware and the simulator runner (`make -C firmware`), and finding
out what is missing to do so: each tool with the Debian package that provides it."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from distlab.edge.protocol import DEFAULT_BAUD

ARDUINO_CORE = Path("/usr/share/arduino/hardware/arduino/avr")
FLASH_BYTES = 32256  # the Uno's 32 KiB less the 512-byte bootloader
RAM_BYTES = 2048

# (what, how to find it, the Debian package that provides it)
FIRMWARE_NEEDS = [
    ("avr-gcc", "avr-g++", "gcc-avr"),
    ("avr-libc", "/usr/lib/avr/include/avr/io.h", "avr-libc"),
    ("avr-objcopy", "avr-objcopy", "binutils-avr"),
    ("the Arduino AVR core", str(ARDUINO_CORE / "cores/arduino/Arduino.h"), "arduino-core-avr"),
    ("make", "make", "make"),
]
RUNNER_NEEDS = [
    ("simavr", "/usr/include/simavr/sim_avr.h", "libsimavr-dev"),
    ("libelf", "/usr/include/libelf.h", "libelf-dev"),
    ("a C compiler", "cc", "gcc"),
    ("make", "make", "make"),
]


class ToolchainError(RuntimeError):
    """The firmware or the runner could not be built; the message says why."""


@dataclass(frozen=True)
class Build:
    """What `make -C firmware` produced, and the firmware's size on an Uno."""

    elf: Path
    hex: Path
    runner: Path
    flash: int
    ram: int

    def describe(self) -> str:
        return (
            f"flash: {self.flash} of {FLASH_BYTES} bytes ({100 * self.flash / FLASH_BYTES:.1f}%)"
            f", RAM: {self.ram} of {RAM_BYTES} bytes ({100 * self.ram / RAM_BYTES:.1f}%) "
            "before the stack"
        )


def firmware_dir() -> Path:
    """firmware/ of this checkout (DISTLAB_FIRMWARE_DIR overrides)."""
    override = os.environ.get("DISTLAB_FIRMWARE_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "firmware"
    if not (path / "Makefile").exists():
        raise ToolchainError(
            f"no firmware sources at {path}: run from a distlab checkout or set "
            "DISTLAB_FIRMWARE_DIR"
        )
    return path


def missing(needs: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(what, Debian package) for every need that is not on this machine."""
    gone = []
    for what, probe, package in needs:
        found = Path(probe).exists() if probe.startswith("/") else shutil.which(probe)
        if not found and (what, package) not in gone:
            gone.append((what, package))
    return gone


def missing_message(needs: list[tuple[str, str, str]]) -> str | None:
    """'needs X (apt install pkg ...)' for what is missing, or None if nothing is."""
    gone = missing(needs)
    if not gone:
        return None
    packages = " ".join(package for _, package in gone)
    return f"needs {', '.join(what for what, _ in gone)} (Debian: apt install {packages})"


def build(baud: int = DEFAULT_BAUD, runner: bool = True) -> Build:
    """Run make (incremental: nothing is rebuilt when nothing changed) and measure the ELF.
    A firmware for another baud rate goes to build/baud-N."""
    problem = missing_message(FIRMWARE_NEEDS + (RUNNER_NEEDS if runner else []))
    if problem:
        raise ToolchainError(f"building the edge firmware {problem}")
    root = firmware_dir()
    out = Path("build") if baud == DEFAULT_BAUD else Path("build") / f"baud-{baud}"
    targets = ["firmware"] + (["runner"] if runner else [])
    command = ["make", "-s", "-C", str(root), f"BAUD={baud}", f"BUILD={out}", *targets]
    (root / "build").mkdir(exist_ok=True)
    # One build at a time: tests and commands may build from several processes at once.
    with open(root / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-1500:]
        raise ToolchainError(f"make failed ({' '.join(command)}):\n{said}")
    elf = root / out / "edge_lr.elf"
    flash, ram = measure(elf)
    return Build(elf, elf.with_suffix(".hex"), root / out / "simrunner", flash, ram)


def measure(elf: Path) -> tuple[int, int]:
    """(flash, static RAM) in bytes from `avr-size -A`: flash is .text + .data, RAM is .data +
    .bss + .noinit (the stack and heap share what is left)."""
    text = subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True).stdout
    sizes = {m[1]: int(m[2]) for m in re.finditer(r"^\.(\w+)\s+(\d+)", text, re.MULTILINE)}
    flash = sizes.get("text", 0) + sizes.get("data", 0)
    ram = sizes.get("data", 0) + sizes.get("bss", 0) + sizes.get("noinit", 0)
    return flash, ram
