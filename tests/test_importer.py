"""Imports of your own features: every accepted format read back exactly, and every refusal in its exact words."""

import hashlib

import h5py
import numpy as np
import pytest

from config import ConfigError, GenConfig
from dataset import load_records
from features.importer import _checked, import_features, read_table
from features.store import FeatureStore


def test_npy_with_an_ids_file(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("\ufeffa.mp4\n\n b \nc.webm\n", encoding="utf-8")  # BOM, blank line, spaces
    ids, feats = read_table(tmp_path / "f.npy", "emb", str(tmp_path / "ids.txt"))
    assert ids == ["a", "b", "c"] and list(feats) == ["emb"]
    np.testing.assert_array_equal(feats["emb"], x)
    with pytest.raises(ConfigError) as err:
        read_table(tmp_path / "f.npy", "emb")
    assert (
        str(err.value)
        == f"{tmp_path / 'f.npy'}: a .npy holds no ids; pass --ids FILE (one video id per line, in row order)"
    )


def test_npz_and_hdf5_keep_their_arrays_and_find_the_id_key(tmp_path):
    x, y = np.ones((2, 3)), np.zeros((2, 1))
    np.savez(tmp_path / "one.npz", id=np.array(["a.mp4", "b.mp4"]), feat=x, note=np.array(["s", "t"]))
    ids, feats = read_table(tmp_path / "one.npz", "emb")
    assert ids == ["a", "b"] and list(feats) == ["emb"]  # one numeric array: named after the import
    np.testing.assert_array_equal(feats["emb"], x)
    np.savez(tmp_path / "two.npz", ids=np.array(["p", "q"]), id=np.array(["x", "y"]), f=x, g=y)
    ids, feats = read_table(tmp_path / "two.npz", "emb")
    assert ids == ["p", "q"] and sorted(feats) == ["f", "g"]  # 'ids' comes before 'id'; strings are no feature
    ids, feats = read_table(tmp_path / "two.npz", "emb", id_column="id")
    assert ids == ["x", "y"] and sorted(feats) == ["f", "g"]
    np.savez(tmp_path / "col.npz", ids=np.array([["a.mp4"], ["b.mp4"]]), f=x)  # ids stored as a column
    assert read_table(tmp_path / "col.npz", "emb")[0] == ["a", "b"]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["video"] = np.array([b"v1.mp4", b"v2.mp4"])
        f["a"], f["b"] = x, y
        f.create_group("extra")
    ids, feats = read_table(tmp_path / "f.h5", "emb")
    assert ids == ["v1", "v2"] and sorted(feats) == ["a", "b"]  # several arrays keep their own names
    np.testing.assert_array_equal(feats["b"], y)
    ids, feats = read_table(tmp_path / "f.h5", "emb", id_column="b")
    assert ids == ["0.0", "0.0"] and list(feats) == ["emb"]  # any dataset can be the ids, when asked
    with pytest.raises(ConfigError) as err:
        read_table(tmp_path / "f.h5", "emb", id_column="nope")
    assert str(err.value) == f"{tmp_path / 'f.h5'}: no id column 'nope'; it has ['a', 'b', 'video']"


def test_id_key_errors_name_what_the_file_has(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, name=np.array(["a"]), f=np.ones((1, 2)))
    with pytest.raises(ConfigError) as err:
        read_table(path, "emb")
    assert str(err.value) == (
        f"{path}: no id column found (looked for ids, id, video, video_id, filename); name it with --id_column"
    )
    with pytest.raises(ConfigError) as err:
        read_table(path, "emb", id_column="key")
    assert str(err.value) == f"{path}: no id column 'key'; it has ['name', 'f']"
    np.savez(path, ids=np.array(["a"]), note=np.array(["x"]))
    with pytest.raises(ConfigError) as err:
        read_table(path, "emb")
    assert str(err.value) == f"{path}: no numeric array besides the ids 'ids'"


def test_csv_columns_become_one_matrix(tmp_path):
    path = tmp_path / "F.CSV"  # the suffix is matched whatever its case
    path.write_text("\ufeffx,filename,y\n1.5,a.mp4,2\n-3,b.mp4,4e1\n", encoding="utf-8")
    ids, feats = read_table(path, "emb")
    assert ids == ["a", "b"] and feats["emb"].dtype == np.float64
    np.testing.assert_array_equal(feats["emb"], [[1.5, 2.0], [-3.0, 40.0]])
    path.write_text("\ufeffid,x\r\na.mp4,1\r\n")  # a BOM before the id column, Windows line ends
    assert read_table(path, "emb")[0] == ["a"]
    path.write_text("x,key\n1,a\n")
    assert read_table(path, "emb", id_column="key")[0] == ["a"]
    with pytest.raises(ConfigError) as err:
        read_table(path, "emb", id_column="nope")
    assert str(err.value) == f"{path}: no id column 'nope'; it has ['x', 'key']"
    for body, fields in (("id,x,y\na,1\n", 2), ("id,x,y\na,1,2,3,4\n", 5)):
        path.write_text(body)
        with pytest.raises(ConfigError) as err:
            read_table(path, "emb")
        assert str(err.value) == f"{path}: line 2 has {fields} fields; the header has 3"
    path.write_text("id,x\na,1\nb,high\n")
    with pytest.raises(ConfigError) as err:
        read_table(path, "emb")
    assert str(err.value).startswith(f"{path}: every column but the id 'id' must be numeric (")
    path.write_text("id,x\n")
    with pytest.raises(ConfigError, match=r": no rows$"):
        read_table(path, "emb")


def test_files_that_cannot_be_read(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^feature file .*nope.npy does not exist$"):
        read_table(tmp_path / "nope.npy", "emb")
    (tmp_path / "f.parquet").write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        read_table(tmp_path / "f.parquet", "emb")
    assert (
        str(err.value)
        == f"{tmp_path / 'f.parquet'}: unsupported format '.parquet'; use .npy (+ --ids), .npz, .h5 or .csv"
    )
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))  # pickled objects: never loaded
    (tmp_path / "ids.txt").write_text("a\n")
    with pytest.raises(ConfigError, match=r"obj.npy: not a readable .npy file \(.*allow_pickle"):
        read_table(tmp_path / "obj.npy", "emb", str(tmp_path / "ids.txt"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"bad.npz: not a readable .npz file \("):
        read_table(tmp_path / "bad.npz", "emb")


def test_checked_values_are_float32_rows_of_real_finite_numbers(tmp_path):
    ids = ["a", "b", "c"]
    out = _checked(tmp_path, "f", np.array([1, 2, 3]), ids)
    assert out.dtype == np.float32 and out.shape == (3, 1)
    with pytest.raises(ConfigError) as err:
        _checked(tmp_path, "f", np.ones((3, 2), dtype=complex), ids)
    assert str(err.value) == f"{tmp_path}: f holds complex128 values; expected real numbers"
    with pytest.raises(ConfigError) as err:
        _checked(tmp_path, "f", np.ones((2, 2)), ids)
    assert str(err.value) == f"{tmp_path}: f has shape (2, 2); expected (3, D >= 1), one row per id"
    with pytest.raises(ConfigError, match=r"has shape \(3, 0\)"):
        _checked(tmp_path, "f", np.ones((3, 0)), ids)
    with pytest.raises(ConfigError, match=r"has shape \(3, 1, 1\)"):
        _checked(tmp_path, "f", np.ones((3, 1, 1)), ids)
    bad = np.ones((3, 2))
    bad[1, 0], bad[2, 1] = np.nan, -np.inf
    with pytest.raises(ConfigError) as err:
        _checked(tmp_path, "f", bad, ids)
    assert str(err.value) == f"{tmp_path}: 2 rows of f hold NaN or inf (first id b)"


def test_import_writes_the_store_with_its_provenance(memento, tmp_path, capsys):
    records = load_records("Memento10k", GenConfig(data_dir=str(memento)))
    ids = [r.id for r in records][:40] + ["stranger1", "stranger2", "stranger3", "stranger4"]
    path = tmp_path / "f.npz"
    x = np.random.default_rng(0).normal(size=(len(ids), 4))
    np.savez(path, key=np.array(ids), ids=np.arange(len(ids)), f=x)  # ids named by --id_column
    cfg = GenConfig(data_dir=str(memento), dataset="Memento10k", import_path=str(path), name="emb", id_column="key")
    data = import_features(cfg, records)
    out = capsys.readouterr().out
    first = ["stranger1", "stranger2", "stranger3"]
    assert f"warning: 4 ids are not Memento10k videos and are kept but unused (first: {first})" in out
    store = FeatureStore.at(memento / "features", "Memento10k", "emb")
    assert (
        f"imported 44 rows {{'ids': 1, 'f': 4}} into {store.path}; 40/{len(records)} Memento10k videos covered" in out
    )
    back = store.read()
    assert back.ids == ids and back.features["f"].dtype == np.float32
    np.testing.assert_allclose(back.features["f"], x, rtol=1e-6)
    assert back.meta["family"] == "import" and back.meta["settings"] == {} and back.meta["smoke"] is False
    assert back.meta["dataset"] == "Memento10k" and back.meta["code_version"]
    assert back.meta["provenance"] == {"source": "f.npz", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert data.ids == ids


def test_import_refuses_repeated_or_foreign_ids(memento, tmp_path):
    records = load_records("Memento10k", GenConfig(data_dir=str(memento)))
    path = tmp_path / "f.npz"
    cfg = GenConfig(data_dir=str(memento), dataset="Memento10k", import_path=str(path), name="emb")
    ids = ["a", "b", "g", "f", "e", "d", "c", "z"] + ["z", "g", "f", "e", "d", "c"]
    np.savez(path, ids=np.array(ids), f=np.ones((14, 2)))
    with pytest.raises(ConfigError) as err:
        import_features(cfg, records)
    assert str(err.value) == f"{path}: repeated ids (first: ['c', 'd', 'e', 'f', 'g'])"  # a and b are once only
    good = [r.id for r in records][:3]
    np.savez(path, ids=np.array(good), f=np.array([[1.0], [np.nan], [2.0]]))
    with pytest.raises(ConfigError) as err:
        import_features(cfg, records)
    assert str(err.value) == f"{path}: 1 rows of emb hold NaN or inf (first id {good[1]})"
    np.savez(path, ids=np.array(["p", "q", "r", "s"]), f=np.ones((4, 2)))
    with pytest.raises(ConfigError) as err:
        import_features(cfg, records)
    assert str(err.value) == f"none of the 4 ids of {path} is a Memento10k video (first: ['p', 'q', 'r'])"
    assert not FeatureStore.at(memento / "features", "Memento10k", "emb").exists()
