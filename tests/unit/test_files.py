"""Tests of the dataset file readers: IDX, MNIST directories, CIFAR-10, checksums, download."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distlab.data.datasets import load_dataset
from distlab.data.files import (
    FileSource,
    download_file,
    read_cifar10,
    read_idx,
    read_mnist_dir,
    sha256_file,
)

MNIST_NAMES = ("train-images", "train-labels", "t10k-images", "t10k-labels")


# ---------------------------------------------------------------- file writers (test side)


def idx_bytes(array: np.ndarray, code: int, big_endian: str) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_arrays(train: int = 20, test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels": ((np.arange(test) * 3) % 10).astype(np.uint8),
    }


def write_mnist_dir(directory: Path, arrays: dict, gz_names: tuple = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        stem = f"{name}-idx{array.ndim}-ubyte"
        write(directory / stem, idx_bytes(array, 0x08, "u1"), gz=name in gz_names)


def cifar_arrays(per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: (
            rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, per_batch).astype(np.int64),
        )
        for name in names
    }


def write_cifar_python(directory: Path, batches: dict, protocol: int = 2) -> Path:
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        batch = {
            b"batch_label": name.encode(),
            b"data": x.reshape(len(x), -1),
            b"labels": y.tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def write_cifar_binary(directory: Path, batches: dict) -> Path:
    folder = directory / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


def tar_gz(folder: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def expected_cifar(batches: dict) -> tuple[np.ndarray, ...]:
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x_test, y_test = batches["test_batch"]
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_test,
        y_test,
    )


def assert_same(got: tuple, want: tuple) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- IDX


def test_read_idx_uint8_plain_hand_worked(tmp_path):
    # prepare: 2x3 uint8 matrix 0..5
    path = write(tmp_path / "m", b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6)))
    # execute
    array = read_idx(path)
    # assert
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, [[0, 1, 2], [3, 4, 5]])


def test_read_idx_int32_gz_is_big_endian(tmp_path):
    data = b"\0\0\x0c\x01" + struct.pack(">I", 2) + struct.pack(">ii", -1, 258)
    path = write(tmp_path / "v", data, gz=True)
    array = read_idx(path)
    assert array.dtype == np.int32
    np.testing.assert_array_equal(array, [-1, 258])


@pytest.mark.parametrize(("code", "dtype"), [(0x09, ">i1"), (0x0B, ">i2"), (0x0D, ">f4")])
def test_read_idx_round_trips_other_dtypes(tmp_path, code, dtype):
    array = np.arange(-3, 3).reshape(3, 2).astype(dtype)
    path = write(tmp_path / "a", idx_bytes(array, code, dtype))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\0\x08\x01" + struct.pack(">I", 1) + b"\0", "bad IDX magic"),
        (b"\0\0\x07\x01" + struct.pack(">I", 1) + b"\0", "unknown IDX dtype code 0x07"),
        (b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + bytes(5), "truncated: dims"),
        (b"\0\0\x08\x02" + struct.pack(">I", 2), "truncated inside its IDX header"),
        (b"\0\0\x08\x01" + struct.pack(">I", 2) + bytes(4), "2 trailing bytes"),
    ],
)
def test_read_idx_rejects_bad_files_naming_them(tmp_path, data, message):
    path = write(tmp_path / "bad-idx", data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert "bad-idx" in str(info.value)


def test_read_idx_rejects_unreadable_gzip(tmp_path):
    path = write(tmp_path / "x.gz", b"not gzip at all")
    with pytest.raises(ValueError, match="x.gz is not a readable gzip file"):
        read_idx(path)


# ---------------------------------------------------------------- MNIST directories


def test_read_mnist_dir_mixed_plain_and_gz(tmp_path):
    arrays = mnist_arrays()
    write_mnist_dir(tmp_path, arrays, gz_names=("train-images", "t10k-labels"))
    got = read_mnist_dir(tmp_path, "fashion-mnist", False)
    want = [arrays[n].astype(np.int64) if "labels" in n else arrays[n] for n in MNIST_NAMES]
    assert_same(got, tuple(want))


def test_load_dataset_mnist_normalizes_files(tmp_path):
    arrays = mnist_arrays()
    write_mnist_dir(tmp_path / "mnist", arrays, gz_names=MNIST_NAMES)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    pixel = float(arrays["train-images"][4, 10, 7])
    assert data.x_train[4, 0, 10, 7].item() == pytest.approx((pixel / 255 - 0.1307) / 0.3081)
    assert data.y_test.tolist() == [(3 * i) % 10 for i in range(10)]


def test_read_mnist_dir_missing_file_message(tmp_path):
    with pytest.raises(ValueError) as info:
        read_mnist_dir(tmp_path, "mnist", False)
    message = str(info.value)
    assert message.startswith(f"missing train-images-idx3-ubyte[.gz] in {tmp_path} (")
    assert "--download" in message and "\n" not in message


def test_read_mnist_dir_count_mismatch(tmp_path):
    arrays = mnist_arrays()
    arrays["train-labels"] = arrays["train-labels"][:19]
    write_mnist_dir(tmp_path, arrays)
    with pytest.raises(ValueError, match="has 20 images but .* has 19 labels"):
        read_mnist_dir(tmp_path, "mnist", False)


def test_read_mnist_dir_label_out_of_range(tmp_path):
    arrays = mnist_arrays()
    arrays["t10k-labels"][3] = 10
    write_mnist_dir(tmp_path, arrays)
    with pytest.raises(ValueError, match=r"labels in 0\.\.10 \(allowed: 0\.\.9\)"):
        read_mnist_dir(tmp_path, "mnist", False)


def test_read_mnist_dir_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown IDX variant 'kmnist'"):
        read_mnist_dir(tmp_path, "kmnist", False)


# ---------------------------------------------------------------- checksums and download


def test_sha256_file_known_value(tmp_path):
    path = write(tmp_path / "abc", b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(path) == expected


def test_download_file_from_file_url(tmp_path):
    payload = b"payload bytes"
    src = write(tmp_path / "src.bin", payload)
    dest = tmp_path / "out" / "dest.bin"
    result = download_file(src.as_uri(), dest, hashlib.sha256(payload).hexdigest())
    assert result == dest and dest.read_bytes() == payload
    assert os.listdir(dest.parent) == ["dest.bin"]


def test_download_file_bad_checksum_leaves_nothing(tmp_path):
    src = write(tmp_path / "src.bin", b"payload bytes")
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(ValueError) as info:
        download_file(src.as_uri(), out / "dest.bin", wrong)
    message = str(info.value)
    assert "dest.bin" in message and wrong in message
    assert hashlib.sha256(b"payload bytes").hexdigest() in message
    assert os.listdir(out) == []


def fake_mirror(tmp_path: Path) -> FileSource:
    """A directory served through file:// that holds the four .gz files, with their hashes."""
    mirror = tmp_path / "mirror"
    write_mnist_dir(mirror, mnist_arrays(), gz_names=MNIST_NAMES)
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    return FileSource(((tmp_path / "offline").as_uri(), mirror.as_uri()), hashes)


def test_read_mnist_dir_downloads_missing_files(tmp_path):
    source = fake_mirror(tmp_path)
    target = tmp_path / "data" / "mnist"
    got = read_mnist_dir(target, "mnist", True, source=source)
    assert sorted(p.name for p in target.iterdir()) == sorted(source.sha256)
    assert_same(got, read_mnist_dir(tmp_path / "mirror", "mnist", False))


def test_read_mnist_dir_download_checks_present_files(tmp_path):
    source = fake_mirror(tmp_path)
    target = tmp_path / "mnist"
    write_mnist_dir(target, mnist_arrays(train=21), gz_names=MNIST_NAMES)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz has SHA-256 .* expected"):
        read_mnist_dir(target, "mnist", True, source=source)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [2, 5])
def test_read_cifar10_python_directory(tmp_path, protocol):
    batches = cifar_arrays()
    write_cifar_python(tmp_path / "cifar10", batches, protocol)
    assert_same(read_cifar10(tmp_path, False), expected_cifar(batches))


def test_read_cifar10_python_archive_in_root(tmp_path):
    batches = cifar_arrays()
    folder = write_cifar_python(tmp_path / "build", batches)
    tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    assert_same(read_cifar10(tmp_path, False), expected_cifar(batches))


def test_read_cifar10_binary_directory_and_archive(tmp_path):
    batches = cifar_arrays()
    folder = write_cifar_binary(tmp_path / "build", batches)
    tar_gz(folder, tmp_path / "cifar10" / "cifar-10-binary.tar.gz")
    from_archive = read_cifar10(tmp_path, False)
    from_dir = read_cifar10(tmp_path / "build", False)
    assert_same(from_archive, expected_cifar(batches))
    assert_same(from_dir, expected_cifar(batches))


def py2_style_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2 wrote the CIFAR files: str opcodes, numpy.core names."""

    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    n, width = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b")
        + b"\x87R(K\x01K" + bytes([n]) + b"M" + struct.pack("<H", width) + b"\x86"
        + b"cnumpy\ndtype\n" + text(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89T" + struct.pack("<I", data.size) + data.tobytes() + b"tb"
    )  # fmt: skip
    items = b"".join(b"K" + bytes([v]) for v in labels)
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + b"](" + items + b"eu."


def test_read_cifar10_python2_style_pickles(tmp_path):
    batches = cifar_arrays()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(py2_style_batch(x.reshape(len(x), -1), y.tolist()))
    assert_same(read_cifar10(tmp_path, False), expected_cifar(batches))


def evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({b"data": Evil(), b"labels": []})


def test_read_cifar10_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "executed"
    folder = write_cifar_python(tmp_path, cifar_arrays())
    (folder / "data_batch_1").write_bytes(evil_pickle(marker))
    with pytest.raises(ValueError, match=r"refusing to unpickle \w+\.system from .*data_batch_1"):
        read_cifar10(tmp_path, False)
    assert not marker.exists()


def test_read_cifar10_prefers_binary_without_unpickling(tmp_path):
    marker = tmp_path / "executed"
    batches = cifar_arrays()
    folder = write_cifar_python(tmp_path, cifar_arrays(per_batch=2))
    for batch in folder.iterdir():
        batch.write_bytes(evil_pickle(marker))
    write_cifar_binary(tmp_path, batches)
    assert_same(read_cifar10(tmp_path, False), expected_cifar(batches))
    assert not marker.exists()


def test_read_cifar10_truncated_binary_batch(tmp_path):
    folder = write_cifar_binary(tmp_path, cifar_arrays())
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data_batch_2.bin holds 9214 bytes.*truncated"):
        read_cifar10(tmp_path, False)


def test_read_cifar10_truncated_python_batch(tmp_path):
    folder = write_cifar_python(tmp_path, cifar_arrays())
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot unpickle .*test_batch"):
        read_cifar10(tmp_path, False)


def test_read_cifar10_truncated_archive(tmp_path):
    folder = write_cifar_binary(tmp_path / "build", cifar_arrays())
    archive = tar_gz(folder, tmp_path / "cifar-10-binary.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz is not a readable tar.gz"):
        read_cifar10(tmp_path, False)


def test_read_cifar10_missing_batch_and_missing_set(tmp_path):
    folder = write_cifar_binary(tmp_path / "a", cifar_arrays())
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(ValueError, match="missing data_batch_4.bin in"):
        read_cifar10(tmp_path / "a", False)
    with pytest.raises(ValueError, match="missing CIFAR-10 in .*--download"):
        read_cifar10(tmp_path / "b", False)


def test_read_cifar10_downloads_binary_archive(tmp_path):
    batches = cifar_arrays()
    folder = write_cifar_binary(tmp_path / "build", batches)
    archive = tar_gz(folder, tmp_path / "mirror" / "cifar-10-binary.tar.gz")
    source = FileSource((archive.parent.as_uri(),), {archive.name: sha256_file(archive)})
    got = read_cifar10(tmp_path / "data", True, source=source)
    assert (tmp_path / "data" / "cifar10" / archive.name).is_file()
    assert_same(got, expected_cifar(batches))


def test_load_dataset_cifar10(tmp_path):
    batches = cifar_arrays()
    write_cifar_binary(tmp_path / "cifar10", batches)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.x_train.dtype == torch.float32
    assert data.y_test.tolist() == batches["test_batch"][1].tolist()


def test_load_dataset_reports_missing_files(tmp_path):
    with pytest.raises(ValueError, match="missing train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
