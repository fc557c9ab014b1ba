"""N-MNIST, SHD and Fashion-MNIST from tiny files in their real formats, through tonic's classes."""

import gzip
import struct

import h5py
import numpy as np
import pytest
import torch

from lzo_bench.data import DatasetMissing, DatasetUnreadable, load_dataset, nmnist
from lzo_bench.data.fmnist import IdxError, read_idx


def nmnist_bytes(events):
    """5 bytes per event: x, y, p<<7 | t>>16, t>>8, t (N-MNIST's .bin format)."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


SPECIAL = [(1, 0, 0, 0), (1, 0, 1, 400), (33, 33, 1, 1500), (2, 1, 0, 2500), (0, 0, 0, 40_010)]
# → step round(t/1 ms), unit x + 34y: (0, 1) twice (one spike), (2, 1155), round(2.5) = 2: (2, 36); t ≥ T·1 ms dropped


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, zipname in (("Train", "train.zip"), ("Test", "test.zip")):
        (root / "NMNIST").mkdir(exist_ok=True)
        (root / "NMNIST" / zipname).write_bytes(b"")
        for digit in range(10):
            d = root / "NMNIST" / split / str(digit)
            d.mkdir(parents=True)
            for i in range(1000):  # tonic wants >= 10 000 .bin files per split
                events = SPECIAL if (digit, i) == (3, 0) else [(digit, i % 34, 0, 1000 * (i % 40))]
                (d / f"{i:05d}.bin").write_bytes(nmnist_bytes(events))
    return root


def test_nmnist_binning_through_tonic(nmnist_root):
    train, test = load_dataset("nmnist", 40, nmnist_root)
    assert (len(train), len(test)) == (10_000, 10_000)
    assert train.n_units == 1156 and train.steps == 40
    assert train.labels[3000] == 3 and train.labels[0] == 0 and train.labels[9999] == 9
    x = train.dense(torch.tensor([3000]))[0]
    expected = torch.zeros(40, 1156, dtype=torch.bool)
    expected[0, 1] = expected[2, 1155] = expected[2, 36] = True
    assert torch.equal(x, expected)
    # an ordinary file: one event of unit digit + 34·(i mod 34) at step i mod 40
    y = train.dense(torch.tensor([7 * 1000 + 55]))[0]
    assert y.sum() == 1 and y[55 % 40, 7 + 34 * (55 % 34)]


def test_nmnist_cache_hit_stale_and_corrupt(nmnist_root):
    _, status = nmnist._split(nmnist_root, False, 40, False)
    assert status in ("built", "cache hit")
    assert nmnist._split(nmnist_root, False, 40, False)[1] == "cache hit"
    assert nmnist._split(nmnist_root, False, 30, False)[1] == "built"  # other T: its own cache
    cache = next((nmnist_root / "NMNIST" / "lzo_cache").glob("test-*.pt"))
    blob = torch.load(cache, weights_only=True)
    blob["events"][0] += 1
    torch.save(blob, cache)
    ds, status = nmnist._split(nmnist_root, False, 40, False)
    assert status == "rebuilt: corrupt cache (checksum mismatch)"
    cache.write_bytes(b"not a cache")
    assert nmnist._split(nmnist_root, False, 40, False)[1].startswith("rebuilt: corrupt cache")
    f = nmnist_root / "NMNIST" / "Test" / "5" / "00001.bin"
    f.write_bytes(nmnist_bytes([(5, 5, 0, 0)]))
    ds2, status = nmnist._split(nmnist_root, False, 40, False)
    assert status == "rebuilt: stale cache (the source files changed)"
    assert ds2.dense(torch.tensor([5001]))[0, 0, 5 + 34 * 5]


def write_shd(root, name, times, units, labels):
    d = root / "SHD"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.zip").write_bytes(b"")
    with h5py.File(d / name, "w") as f:
        ft = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float32))
        fu = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u) in enumerate(zip(times, units)):
            ft[i], fu[i] = np.asarray(t, np.float32), np.asarray(u, np.uint16)
        f["labels"] = np.asarray(labels, np.uint16)
        f["extra/keys"] = np.array([b"k%d" % i for i in range(20)])
        f["extra/speaker"] = np.zeros(len(labels), np.uint16)


def test_shd_binning_through_tonic(tmp_path):
    # step round(t / 2 ms): 0 → 0, 3.1 ms → 2 (1.55), 4.9 ms → 2 (2.45), 1.2 s → 600 ≥ T dropped
    write_shd(tmp_path, "shd_train.h5", [[0.0, 0.0031, 0.0049, 1.2], [0.5]], [[5, 5, 699, 3], [10]], [19, 2])
    write_shd(tmp_path, "shd_test.h5", [[0.01]], [[0]], [7])
    train, test = load_dataset("shd", 500, tmp_path)
    assert (len(train), len(test)) == (2, 1) and train.n_units == 700 and train.n_classes == 20
    x = train.dense(torch.tensor([0]))[0]
    expected = torch.zeros(500, 700, dtype=torch.bool)
    expected[0, 5] = expected[2, 5] = expected[2, 699] = True
    assert torch.equal(x, expected)
    assert train.labels.tolist() == [19, 2] and test.dense(torch.tensor([0]))[0, 5, 0]
    assert train.dense(torch.tensor([1]))[0, 250, 10]


def write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_idx_and_latency_coding(tmp_path, gz):
    d = tmp_path / "FashionMNIST"
    d.mkdir()
    img = np.zeros((2, 28, 28), np.uint8)
    img[0, 0, 0], img[0, 0, 1], img[0, 0, 2], img[0, 0, 3] = 255, 128, 51, 60
    for stem, arr in (("train-images-idx3-ubyte", img), ("train-labels-idx1-ubyte", np.array([4, 9])),
                      ("t10k-images-idx3-ubyte", img[:1]), ("t10k-labels-idx1-ubyte", np.array([1]))):
        write_idx(d / stem, arr, gz)
    train, test = load_dataset("fmnist", 100, tmp_path)
    assert (len(train), len(test)) == (2, 1) and train.labels.tolist() == [4, 9]
    x = train.dense(torch.tensor([0]))[0]
    # x = p/255: 1 → ⌊20 ln 1.25⌋ = 4; 128 → ⌊20 ln(0.502/0.302)⌋ = 10; 51 → x = 0.2: none; 60 → ⌊37.94⌋ = 37
    assert x.sum() == 3 and x[4, 0] and x[10, 1] and x[37, 3]
    assert 20 * np.log((128 / 255) / (128 / 255 - 0.2)) // 1 == 10 and 20 * np.log((60 / 255) / (60 / 255 - 0.2)) // 1 == 37
    assert train.dense(torch.tensor([1])).sum() == 0


def test_idx_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(IdxError, match="not an unsigned-byte idx file"):
        read_idx(tmp_path / "x")


def _fmnist_files(tmp_path, gz=False):
    d = tmp_path / "FashionMNIST"
    d.mkdir()
    img = np.zeros((2, 28, 28), np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", img), ("train-labels-idx1-ubyte", np.array([4, 9])),
                      ("t10k-images-idx3-ubyte", img[:1]), ("t10k-labels-idx1-ubyte", np.array([1]))):
        write_idx(d / stem, arr, gz)
    return d


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b"\x00\x00\x08\x03\x00\x00"), "is truncated: its header announces 3 dimensions"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), r"holds 1563 values, its header says \(2, 28, 28\)"),
    (lambda p: p.write_bytes(b"no idx at all"), "is not an unsigned-byte idx file"),
])
def test_damaged_idx_files_are_named(tmp_path, damage, message):
    d = _fmnist_files(tmp_path)
    damage(d / "train-images-idx3-ubyte")
    with pytest.raises(IdxError, match=message) as info:
        load_dataset("fmnist", 100, tmp_path)
    assert isinstance(info.value, DatasetUnreadable) and "train-images-idx3-ubyte" in str(info.value)


def test_truncated_gzip_idx_is_named(tmp_path):
    d = _fmnist_files(tmp_path, gz=True)
    gz = d / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:12])
    with pytest.raises(IdxError, match=r"train-labels-idx1-ubyte.gz cannot be read \(EOFError"):
        load_dataset("fmnist", 100, tmp_path)


def test_damaged_shd_file_is_unreadable_not_a_traceback(tmp_path):
    (tmp_path / "SHD").mkdir()
    for name in ("shd_train.h5", "shd_test.h5"):  # tonic wants each .h5 beside its .zip
        (tmp_path / "SHD" / name).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
        (tmp_path / "SHD" / f"{name}.zip").write_bytes(b"")
    with pytest.raises(DatasetUnreadable, match=r"the train files under .*SHD cannot be read \(.*replace them with intact copies"):
        load_dataset("shd", 100, tmp_path)


def test_a_read_only_data_folder_loads_without_its_cache(tmp_path, monkeypatch):
    from lzo_bench.data import cache, fmnist

    _fmnist_files(tmp_path)

    def read_only(path, obj):  # what a write into a read-only folder raises (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "atomic_torch_save", read_only)
    ds, status = fmnist._split(tmp_path, True, 100)
    assert len(ds) == 2 and status == f"built, not cached: {tmp_path / 'FashionMNIST' / 'lzo_cache'} cannot be written (Permission denied)"
    assert load_dataset("fmnist", 100, tmp_path)[0].labels.tolist() == [4, 9]


@pytest.mark.parametrize("name,fragments", [
    ("nmnist", ["NMNIST/train.zip", "NMNIST/Train/<digit 0-9>/*.bin", "NMNIST/Test", "--download"]),
    ("shd", ["SHD/shd_train.h5", "SHD/shd_train.h5.zip", "SHD/shd_test.h5", "--download"]),
    ("fmnist", ["FashionMNIST/train-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte", "no --download"]),
])
def test_missing_files_are_listed(tmp_path, name, fragments):
    with pytest.raises(DatasetMissing) as info:
        load_dataset(name, 10, tmp_path)
    for f in fragments:
        assert f in str(info.value)


def test_reused_batch_buffer_equals_fresh_batches(nmnist_root):
    train, _ = load_dataset("nmnist", 40, nmnist_root)
    sub_idx = torch.arange(2990, 3010)
    from lzo_bench.data.base import EventDataset, batches

    sub = EventDataset(*_subset(train, sub_idx))
    fresh = list((x.clone(), y) for x, y in batches(sub, 6, generator=torch.Generator().manual_seed(0)))
    reused = [(x.clone(), y) for x, y in batches(sub, 6, generator=torch.Generator().manual_seed(0), reuse_buffer=True)]
    assert len(fresh) == len(reused) == 4  # 6 + 6 + 6 + 2: the last one needs a new buffer
    for (a, ya), (b, yb) in zip(fresh, reused):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def _subset(ds, idx):
    dense = ds.dense(idx)
    per = [torch.nonzero(d.reshape(-1)).reshape(-1) for d in dense]
    offsets = torch.tensor([0] + [len(p) for p in per]).cumsum(0)
    return torch.cat(per), offsets, ds.labels[idx], ds.n_classes, ds.steps, ds.n_units


def test_nmnist_empty_folders_never_reach_the_network(tmp_path, monkeypatch):
    """Empty train.zip / test.zip and empty Train/ and Test/ (issue 19, D8): tonic would try to
    download; without --download the loader says which files it expected and touches no network."""
    import urllib.request

    from lzo_bench.data import DatasetMissing

    for name in ("train.zip", "test.zip"):
        (tmp_path / "NMNIST").mkdir(exist_ok=True)
        (tmp_path / "NMNIST" / name).write_bytes(b"")
    for split in ("Train", "Test"):
        (tmp_path / "NMNIST" / split).mkdir()

    def no_network(*a, **k):
        raise AssertionError("the loader reached the network without --download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    with pytest.raises(DatasetMissing, match=r"N-MNIST not found under .*expected .*Train/<digit 0-9>/\*\.bin"):
        load_dataset("nmnist", 40, tmp_path)


def test_fmnist_labels_outside_the_classes_are_a_damaged_dataset(tmp_path):
    """Issue 19, D10: a label of 200 surfaced as an IndexError, 'training failed'; it is a damaged file."""
    d = _fmnist_files(tmp_path)
    write_idx(d / "train-labels-idx1-ubyte", np.array([4, 200]), False)
    with pytest.raises(DatasetUnreadable, match=r"train-labels-idx1-ubyte holds label 200 \(1 labels outside 0\.\.9\)"):
        load_dataset("fmnist", 100, tmp_path)
