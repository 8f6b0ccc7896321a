"""Readers for the standard dataset files (IDX, CIFAR-10), checksums and optional download."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

try:  # numpy >= 2 moved the core modules to numpy._core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR_RECORD = 1 + 3 * 32 * 32
# Preference order: the binary version first, since reading it needs no unpickling.
CIFAR_LAYOUTS = (
    ("binary", "cifar-10-batches-bin"),
    ("binary", "cifar-10-binary.tar.gz"),
    ("python", "cifar-10-batches-py"),
    ("python", "cifar-10-python.tar.gz"),
)
CLASSES = 10
DOWNLOAD_HINT = "or pass --download where a network exists"


@dataclass(frozen=True)
class FileSource:
    """Where a dataset's standard files are published, and the SHA-256 of each file."""

    mirrors: tuple[str, ...]
    sha256: Mapping[str, str]


# SHA-256 values as pinned by torchvision, Keras and TensorFlow Datasets for these files.
SOURCES: dict[str, FileSource] = {
    "mnist": FileSource(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
    ),
    "fashion-mnist": FileSource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
    ),
    "cifar10": FileSource(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        sha256={
            "cifar-10-binary.tar.gz": (
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
            ),
            "cifar-10-python.tar.gz": (
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
            ),
        },
    ),
}


# ---------------------------------------------------------------- checksums and download


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str) -> None:
    """Raise if `path` is not the standard file; the user's file is left in place."""
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {sha256} "
            "(corrupt or not the standard file; delete it and download again)"
        )


def download_file(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through a temporary file; keep it only if the SHA-256 matches."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise ValueError(
                f"downloaded {dest.name} from {url} has SHA-256 {actual}, expected {sha256}; "
                "the file was removed"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_file(directory: Path, name: str, source: FileSource) -> Path:
    """Download `name` from the first mirror that answers; a checksum mismatch is final."""
    failures = []
    for base in source.mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            return download_file(url, directory / name, source.sha256[name])
        except OSError as exc:  # network or missing file on this mirror: try the next one
            failures.append(f"{url}: {exc}")
    raise ValueError(f"could not download {name} ({'; '.join(failures)})")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    raw = Path(path).read_bytes()
    if not str(path).endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable gzip file ({exc})") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a native-endian array of its dtype and dims."""
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(
            f"{path} has bad IDX magic {data[:4].hex()!r} (expected 00 00, type code, dim count)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path} has unknown IDX dtype code 0x{code:02X} (allowed: {allowed})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated inside its IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise ValueError(f"{path} is truncated: dims {dims} need {expected} bytes, found {found}")
    if found > expected:
        raise ValueError(f"{path} has {found - expected} trailing bytes after dims {dims}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def locate_mnist_file(directory: Path, stem: str, source: FileSource, download: bool) -> Path:
    """The plain or .gz file for `stem`; downloaded (and checked) when missing and allowed."""
    path = next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)
    if path is None and download:
        return fetch_file(directory, f"{stem}.gz", source)
    if path is None:
        raise ValueError(
            f"missing {stem}[.gz] in {directory} (place the standard IDX files there, "
            f"{DOWNLOAD_HINT})"
        )
    # Only the .gz archives have published checksums; an unpacked file is taken as is.
    if download and path.name in source.sha256:
        verify_file(path, source.sha256[path.name])
    return path


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from one IDX pair, checked."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path} holds {images.dtype} {images.shape}, expected uint8 (N, 28, 28)"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path} holds {labels.dtype} {labels.shape}, expected uint8 (N,)")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    check_labels(labels, str(labels_path))
    return images, labels.astype(np.int64)


def check_labels(labels: np.ndarray, origin: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= CLASSES):
        raise ValueError(
            f"{origin} has labels in {labels.min()}..{labels.max()} (allowed: 0..{CLASSES - 1})"
        )


def read_mnist_dir(
    directory: Path, variant: str, download: bool, source: FileSource | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST from the four standard IDX files (plain or .gz) in `directory`.

    With `download`, missing files come from `source` (default: the standard mirrors) and
    every .gz file is checked against its published SHA-256.
    """
    if variant not in ("mnist", "fashion-mnist"):
        raise ValueError(f"unknown IDX variant {variant!r} (allowed: mnist, fashion-mnist)")
    source = source or SOURCES[variant]
    directory = Path(directory)
    paths = [locate_mnist_file(directory, stem, source, download) for stem in MNIST_FILES]
    x_train, y_train = read_mnist_pair(paths[0], paths[1])
    x_test, y_test = read_mnist_pair(paths[2], paths[3])
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- CIFAR-10


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allowed numpy ones."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (the CIFAR python batches)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 encode bytes through codecs.encode.
        ("_codecs", "encode"): codecs.encode,
        ("codecs", "encode"): codecs.encode,
    }

    def __init__(self, file: io.BytesIO, origin: str) -> None:
        super().__init__(file, encoding="bytes")
        self.origin = origin

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name} from {self.origin}")
        return self.ALLOWED[(module, name)]


def parse_binary_batch(raw: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of 1 label byte then 3072 pixel bytes (R, G, B planes)."""
    if not raw or len(raw) % CIFAR_RECORD:
        raise ValueError(
            f"{origin} holds {len(raw)} bytes, not a whole number of {CIFAR_RECORD}-byte "
            "records (truncated?)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    check_labels(labels, origin)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def parse_python_batch(raw: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """One python batch: a pickled dict with b"data" (N, 3072) uint8 and b"labels"."""
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), origin).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "unreadable"
        raise ValueError(f"cannot unpickle {origin} ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{origin} is not a CIFAR batch (no b'data' and b'labels' entries)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{origin} data is not a uint8 (N, 3072) array")
    if data.shape[1] != 3072 or labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{origin} holds data {data.shape} and labels {labels.shape}, expected (N, 3072), (N,)"
        )
    check_labels(labels, origin)
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def batch_file_name(batch: str, kind: str) -> str:
    return f"{batch}.bin" if kind == "binary" else batch


def read_batches_dir(directory: Path, kind: str) -> dict[str, bytes]:
    """Raw bytes of the six batch files in an unpacked CIFAR-10 directory."""
    out = {}
    for batch in CIFAR_BATCHES:
        path = directory / batch_file_name(batch, kind)
        if not path.is_file():
            raise ValueError(f"missing {path.name} in {directory}")
        out[batch] = path.read_bytes()
    return out


def read_batches_archive(archive: Path, kind: str) -> dict[str, bytes]:
    """Raw bytes of the six batch files, read from the .tar.gz in one pass without unpacking."""
    wanted = {batch_file_name(b, kind): b for b in CIFAR_BATCHES}
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    out[wanted[name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{archive} is not a readable tar.gz archive ({exc})") from None
    missing = [f for f, b in wanted.items() if b not in out]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} in {archive}")
    return out


def locate_cifar10(root: Path) -> tuple[str, Path] | None:
    """The first CIFAR-10 layout present under root/cifar10 or root (binary preferred)."""
    for kind, name in CIFAR_LAYOUTS:
        for base in (root / "cifar10", root):
            if (base / name).exists():
                return kind, base / name
    return None


def read_cifar10(
    root: Path, download: bool, source: FileSource | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 as x uint8 (N, 3, 32, 32) and labels int64, train (50000) then test (10000).

    Reads the binary or python version, unpacked or as the original .tar.gz, from
    root/cifar10 or root. With `download`, a missing set is fetched as the binary archive
    into root/cifar10, and an archive already present is checked against its SHA-256.
    """
    source = source or SOURCES["cifar10"]
    root = Path(root)
    found = locate_cifar10(root)
    if found is None and download:
        found = ("binary", fetch_file(root / "cifar10", "cifar-10-binary.tar.gz", source))
    elif found is None:
        raise ValueError(
            f"missing CIFAR-10 in {root / 'cifar10'} (place cifar-10-batches-bin/, "
            f"cifar-10-binary.tar.gz, cifar-10-batches-py/ or cifar-10-python.tar.gz there, "
            f"{DOWNLOAD_HINT})"
        )
    elif download and found[1].name in source.sha256:
        verify_file(found[1], source.sha256[found[1].name])
    return parse_cifar10(*found)


def parse_cifar10(kind: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    raw = read_batches_dir(path, kind) if path.is_dir() else read_batches_archive(path, kind)
    parse = parse_binary_batch if kind == "binary" else parse_python_batch
    parsed = {b: parse(raw[b], f"{path}:{batch_file_name(b, kind)}") for b in CIFAR_BATCHES}
    train = [parsed[b] for b in CIFAR_BATCHES[:-1]]
    x_test, y_test = parsed["test_batch"]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test
