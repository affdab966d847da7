"""The HDF5 feature store: parts, compaction, atomicity, determinism, refusals."""

import hashlib
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from features.store import FeatureStore, StoredFeatures, StoreError, Transform

META = {"family": "raw", "dataset": "demo", "settings": {"size": 256}, "smoke": False, "code_version": "t"}


def _rows(ids, dim=3):
    return {
        "a": np.array([[hash(i) % 97 + k for k in range(dim)] for i in ids], np.float32),
        "b": np.ones((len(ids), 1)),
    }


def test_append_read_compact_roundtrip(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    assert not store.exists() and store.done_ids() == set()
    store.append(["v2", "v1"], _rows(["v2", "v1"]), META, failures={"bad": "truncated file"}, shard="rank0")
    store.append(["v3"], _rows(["v3"]), META, shard="rank1")
    data = store.read()  # readable before compaction: main file + finished parts
    assert data.ids == ["v1", "v2", "v3"]
    assert data.dims == {"a": 3, "b": 1}
    np.testing.assert_array_equal(data.features["a"], _rows(["v1", "v2", "v3"])["a"])
    assert data.failures == {"bad": "truncated file"}
    assert store.done_ids() == {"v1", "v2", "v3", "bad"}
    assert store.done_ids(include_failed=False) == {"v1", "v2", "v3"}
    store.compact()
    assert store.path.exists() and not store.parts_dir.exists()
    again = store.read()
    assert again.ids == data.ids and again.meta["dims"] == {"a": 3, "b": 1}
    assert again.features["a"].dtype == np.float32


def test_compaction_is_deterministic_whatever_the_order(tmp_path):
    ids = [f"v{i}" for i in range(10)]
    digests = []
    for order, name in ((ids, "x"), (ids[::-1], "y")):
        store = FeatureStore.at(tmp_path / name, "demo", "raw")
        for k in range(0, 10, 3):
            chunk = order[k : k + 3]
            store.append(chunk, _rows(chunk), META, shard=f"rank{k % 2}")
        store.compact()
        digests.append(hashlib.sha256(store.path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_later_success_clears_failure_and_transforms_persist(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append([], {"a": np.zeros((0, 3))}, META, failures={"v1": "decoder error"})
    store.append(["v1"], _rows(["v1"]), META)
    store.set_transform("hog_pca", Transform({"components": np.eye(3)}, {"fitted_on": 1}))
    data = store.read()
    assert data.failures == {} and data.ids == ["v1"]
    assert data.transforms["hog_pca"].info == {"fitted_on": 1}
    np.testing.assert_array_equal(data.transforms["hog_pca"].arrays["components"], np.eye(3))


def test_refuses_other_settings_and_dims(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1"], _rows(["v1"]), META | {"dims": {"a": 3}})
    with pytest.raises(StoreError, match=r"settings: store has \{'size': 256\}, requested \{'size': 128\}"):
        store.append(["v2"], _rows(["v2"]), META | {"settings": {"size": 128}})
    with pytest.raises(StoreError, match="dim of a: store has 3, requested 5"):
        store.append(["v2"], _rows(["v2"], 5), META | {"dims": {"a": 5}})


def test_corrupt_file_is_reported_with_its_path(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"not an hdf5 file")
    with pytest.raises(StoreError, match="raw.h5 is not a readable m3s feature store"):
        store.read()


def test_temporary_files_are_ignored_by_readers(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1"], _rows(["v1"]), META)
    (store.parts_dir / ".0-000001.h5.abc.tmp").write_bytes(b"half-written")  # what a killed writer leaves
    assert store.read().ids == ["v1"]
    store.compact()
    assert not store.parts_dir.exists()


def test_reader_in_another_process_while_appending(tmp_path):
    """A second process reads in a loop while this one appends and compacts: it never sees a broken store, and it
    sees every state. In lockstep through its pipes, no sleeps: after each write this process asks for the size the
    reader sees and waits for the answer; between two questions the reader keeps reading while the next write
    happens."""
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v0"], _rows(["v0"]), META)
    reader = textwrap.dedent(f"""
        import select, sys; sys.path.insert(0, {str(__import__("config").ROOT)!r})
        from features.store import FeatureStore
        s = FeatureStore({str(store.path)!r})

        def check():
            d = s.read(); assert len(d.ids) == len(d.features["a"]) == len(set(d.ids)); return len(d.ids)

        print("reading", flush=True)
        while True:
            check()
            if select.select([sys.stdin], [], [], 0)[0]:
                if not sys.stdin.readline().strip():
                    break
                print(check(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "reading"  # the reader is in its loop before the first append
    seen = []
    for i in range(1, 40):
        store.append([f"v{i}"], _rows([f"v{i}"]), META)
        if i % 10 == 0:
            store.compact()
        proc.stdin.write("size?\n")
        proc.stdin.flush()
        seen.append(int(proc.stdout.readline()))
    out, _ = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0 and seen == list(range(2, 41)) and not out


def test_written_file_layout(tmp_path):
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.write(StoredFeatures(["b", "a"], {"f": np.array([[2.0], [1.0]])}, META, {"c": "why"}))
    with h5py.File(store.path) as f:
        assert [s.decode() for s in f["ids"][()]] == ["a", "b"]
        assert f["features/f"].dtype == np.float32 and f["features/f"][()].ravel().tolist() == [1.0, 2.0]
        assert [s.decode() for s in f["failures/reasons"][()]] == ["why"]


def test_append_refuses_other_feature_names(tmp_path):
    """A raw store made with other features (another version, another extractor) is a clear error, not a KeyError."""
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1"], _rows(["v1"]), META)
    store.compact()
    assert store.meta()["dims"] == {"a": 3, "b": 1}
    with pytest.raises(StoreError, match=r"features: store has \['a', 'b'\], requested \['a'\]"):
        store.append(["v2"], {"a": np.zeros((1, 3))}, META)


def test_done_ids_reads_no_matrix(tmp_path, monkeypatch):
    import features.store as store_module

    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1"], _rows(["v1"]), META, failures={"bad": "x"})
    store.compact()
    store.append(["v2"], _rows(["v2"]), META)

    def no_full_read(path):
        raise AssertionError(f"done_ids read the whole of {path}")

    monkeypatch.setattr(store_module, "_read_h5", no_full_read)
    assert store.done_ids() == {"v1", "v2", "bad"} and store.done_ids(include_failed=False) == {"v1", "v2"}


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_compaction_removes_only_the_temp_files_of_dead_writers(tmp_path):
    """Two writers on one store: one's compaction must not delete the other's in-flight part (it did: rc 2). A
    killed writer's leftovers, in the parts folder or beside the store, go at the next compaction."""
    store = FeatureStore.at(tmp_path, "demo", "raw")
    store.append(["v1"], _rows(["v1"]), META)
    live = store.parts_dir / f".0-000009.h5.{os.getppid()}-abcd.tmp"  # a writer that is still running
    dead_part = store.parts_dir / f".0-000008.h5.{_dead_pid()}-abcd.tmp"
    dead_main = store.path.parent / f".raw.h5.{_dead_pid()}-efgh.tmp"  # killed during a compaction
    for p in (live, dead_part, dead_main):
        p.write_bytes(b"half-written")
    store.compact()
    assert live.exists() and not dead_part.exists() and not dead_main.exists()
    assert store.read().ids == ["v1"]


def test_a_refused_append_says_every_difference_and_the_way_out(tmp_path):
    store = FeatureStore(tmp_path / "raw.h5")
    store.append(["v1"], _rows(["v1"]), META)
    other = META | {"family": "hrnet", "smoke": True, "settings": {"size": 128}}
    with pytest.raises(StoreError) as err:
        store.append(["v2"], {"a": np.ones((1, 4)), "c": np.ones((1, 1))}, other)
    assert str(err.value) == (
        f"{store.path} was computed with other settings:\n"
        "  family: store has 'raw', requested 'hrnet'\n"
        "  settings: store has {'size': 256}, requested {'size': 128}\n"
        "  smoke: store has False, requested True\n"
        "  dim of a: store has 3, requested 4\n"
        "  features: store has ['a', 'b'], requested ['a', 'c']\n"
        "Use a different --features_dir, or delete the store to recompute it."
    )
    store.append(["bad"], {}, META, failures={"bad": "cut"})  # failures only: no dims to compare


def test_an_absent_store_is_named_and_an_empty_feature_keeps_its_dtype(tmp_path):
    store = FeatureStore(tmp_path / "raw.h5")
    for read in (store.meta, store.read_transforms):
        with pytest.raises(StoreError) as err:
            read()
        assert str(err.value) == f"no feature store at {store.path}"
    store.write(StoredFeatures([], {"a": np.zeros((0, 3))}, META))
    data = store.read()
    assert data.features["a"].shape == (0, 3) and data.features["a"].dtype == np.float32
