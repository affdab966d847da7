"""Dataset adapters on official-format fixtures and the real VideoMem ground truth; the feature table."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from config import ConfigError, Paths, TrainConfig
from dataset import DATASETS, load_records
from features.store import FeatureStore
from pipeline.run.table import FeatureTable
from tests.conftest import REALDATA, write_memento, write_videomem

META = {"family": "import", "dataset": "Memento10k", "settings": {}, "smoke": False}


def test_memento10k_official_json(tmp_path):
    written = write_memento(tmp_path / "Memento10k", {"train": 7, "val": 3, "test": 2})
    (tmp_path / "Memento10k" / "videos_npy").mkdir()
    first = written["train"][0]
    stem = first["filename"][:-4]
    np.save(tmp_path / "Memento10k" / "videos_npy" / f"{stem}.npy", np.zeros((45, 256, 256, 3), np.uint8))
    records = load_records("Memento10k", Paths(data_dir=str(tmp_path)))
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [7, 3, 2]
    by_id = {r.id: r for r in records}
    assert by_id[stem].score == first["mem_score"] and by_id[stem].extras["alpha"] == first["alpha"]
    assert by_id[stem].extras["action_labels"] == first["action_labels"]
    assert by_id[stem].path.name == f"{stem}.npy"  # M3-S's videos_npy is used when the original is absent
    other = written["val"][0]["filename"]
    assert by_id[other[:-4]].path == tmp_path / "Memento10k" / "videos" / other
    assert all(r.score is None for r in records if r.split == "test")


def test_missing_annotation_file_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Memento10k/memento_train_data.json does not exist.*memento"):
        load_records("Memento10k", Paths(data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="ground-truth_dev-set.csv does not exist"):
        load_records("VideoMem", Paths(data_dir=str(tmp_path)))


@pytest.fixture
def videomem_real(tmp_path):
    src = REALDATA / "videomem" / "ground-truth_dev-set.csv"
    if not src.exists():
        pytest.skip(f"real VideoMem ground truth not found at {src}")
    (tmp_path / "VideoMem").mkdir()
    shutil.copy(src, tmp_path / "VideoMem" / src.name)
    return tmp_path


def test_videomem_real_ground_truth_with_seeded_split(videomem_real):
    raw = (videomem_real / "VideoMem" / "ground-truth_dev-set.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and not raw.endswith(b"\n")  # the real format
    records = load_records("VideoMem", Paths(data_dir=str(videomem_real)))
    assert len(records) == 8000 and len({r.id for r in records}) == 8000
    by_id = {r.id: r for r in records}
    assert by_id["video10"].extras.pop("split_source").startswith("the seeded split")  # train.py says which
    assert by_id["video10"].score == 0.95 and by_id["video10"].extras == {
        "nb_short": 34,
        "long_term": 0.9,
        "nb_long": 10,
    }
    scores = np.array([r.score for r in records])
    assert abs(scores.mean() - 0.85900025) < 1e-6  # the dev-set mean M3-S hard-coded
    assert sum(r.split == "val" for r in records) == 1600
    split_file = videomem_real / "VideoMem" / "m3s_split_videomem.json"
    assert split_file.exists()
    saved = json.loads(split_file.read_text())
    split_file.write_text(json.dumps(saved | {"val": saved["val"][:5], "train": saved["train"] + saved["val"][5:]}))
    again = load_records("VideoMem", Paths(data_dir=str(videomem_real)))
    assert sum(r.split == "val" for r in again) == 5  # later runs read the written split, not a new one


def test_videomem_official_pickle_split(videomem_real):
    root = videomem_real / "VideoMem"
    names = [line.split(",")[0] for line in (root / "ground-truth_dev-set.csv").read_text("utf-8-sig").splitlines()[1:]]
    with (root / "train_test_split_videomem.pkl").open("wb") as f:
        pickle.dump((names[:7000], names[7000:]), f)
    records = load_records("VideoMem", Paths(data_dir=str(videomem_real)))
    assert {r.id for r in records if r.split == "val"} == {n[:-5] for n in names[7000:]}
    assert DATASETS["VideoMem"].crop == "center"


def test_videomem_pickle_of_numpy_arrays(videomem_real):
    """sklearn's train_test_split on an array gives numpy arrays of numpy strings: accepted, as plain names."""
    root = videomem_real / "VideoMem"
    names = np.array(
        [line.split(",")[0] for line in (root / "ground-truth_dev-set.csv").read_text("utf-8-sig").splitlines()[1:]]
    )
    with (root / "train_test_split_videomem.pkl").open("wb") as f:
        pickle.dump((names[:6000], list(names[6000:])), f)
    records = load_records("VideoMem", Paths(data_dir=str(videomem_real)))
    assert sum(r.split == "train" for r in records) == 6000 and all(isinstance(r.id, str) for r in records)
    (root / "train_test_split_videomem.pkl").write_bytes(pickle.dumps("just a string"))
    with pytest.raises(ConfigError, match="is not a \\(train names, val names\\) pair"):
        load_records("VideoMem", Paths(data_dir=str(videomem_real)))


def test_folder_ids_are_relative_paths(tmp_path):
    root = tmp_path / "features" / "my videos"  # a parent folder named features is fine
    for rel in ("a/clip.mp4", "b/clip.mp4", "top.webm", "features/ignored.mp4", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    records = load_records("folder", Paths(data_dir=str(root)))
    assert [r.id for r in records] == ["a/clip", "b/clip", "top"]
    assert all(r.split == "test" and r.score is None for r in records)


def test_split_pickle_with_code_is_refused(tmp_path, capsys):
    """A security test: it needs no real data, so it never skips."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    write_videomem(tmp_path / "VideoMem", [f"video{i}.webm" for i in range(4)])
    with (tmp_path / "VideoMem" / "train_test_split_videomem.pkl").open("wb") as f:
        pickle.dump((Evil(), []), f)
    with pytest.raises(ConfigError, match="refusing to load builtins.print"):
        load_records("VideoMem", Paths(data_dir=str(tmp_path)))
    assert "pwned" not in capsys.readouterr().out


def test_videomem_seeded_split_is_written_once_and_reused(tmp_path):
    """Without the official pickle: 20 % of the videos, drawn by seed 0 from the sorted names (whatever the CSV's
    order), written to m3s_split_videomem.json and read back by every later run, never redrawn nor rewritten."""
    names = [f"video{i}.webm" for i in range(25)]
    write_videomem(tmp_path / "VideoMem", names[::-1], [0.5 + i / 100 for i in range(25)])
    records = load_records("VideoMem", Paths(data_dir=str(tmp_path)))
    val = ["video0", "video14", "video21", "video3", "video8"]  # this split, written out: a change would move scores
    assert sorted(r.id for r in records if r.split == "val") == val
    assert sorted(r.id for r in records if r.split == "train") == sorted({n[:-5] for n in names} - set(val))
    assert {r.id: r.score for r in records}["video0"] == 0.74  # the row order of the CSV, reversed
    path = tmp_path / "VideoMem" / "m3s_split_videomem.json"
    saved = json.loads(path.read_text())
    assert saved["seed"] == 0 and saved["val"] == sorted(f"{v}.webm" for v in val) and len(saved["train"]) == 20
    assert not set(saved["train"]) & set(saved["val"]) and sorted(saved["train"] + saved["val"]) == sorted(names)
    written = (path.stat().st_ino, path.read_bytes())
    again = load_records("VideoMem", Paths(data_dir=str(tmp_path)))
    assert [r.split for r in again] == [r.split for r in records] and (path.stat().st_ino, path.read_bytes()) == written
    path.write_text(json.dumps({"seed": 0, "train": names[1:], "val": names[:1]}))  # as a person might edit it
    assert [r.id for r in load_records("VideoMem", Paths(data_dir=str(tmp_path))) if r.split == "val"] == ["video0"]


def test_lamem_split_files(tmp_path):
    root = tmp_path / "LaMem" / "splits"
    root.mkdir(parents=True)
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        (root / f"{split}_1.txt").write_text("".join(f"{split}{i:05d}.jpg 0.{70 + i}\n" for i in range(n)))
    records = load_records("LaMem", Paths(data_dir=str(tmp_path)))
    assert [r.id for r in records][:2] == ["train00000", "train00001"]
    assert records[1].score == 0.71 and records[1].path == tmp_path / "LaMem" / "images" / "train00001.jpg"


# --------------------------------------------------------------------------- feature table


def _store(cfg, name, ids, feats):
    FeatureStore.at(cfg.resolved_features_dir(), "Memento10k", name).append(ids, feats, META)


def _cfg(data_dir, **kw):
    return TrainConfig(data_dir=str(data_dir), **kw)


def test_table_joins_normalises_on_train_and_orders_raw(memento):
    records = load_records("Memento10k", Paths(data_dir=str(memento)))
    ids = [r.id for r in records]
    rng = np.random.default_rng(0)
    raw = {n: rng.normal(5, 3, size=(len(ids), 1)) for n in ("brightness", "brightness_std", "contrast", "meanOF")}
    raw["hog"], raw["hog_std"] = rng.normal(size=(len(ids), 10)), rng.normal(size=(len(ids), 10))
    cfg = _cfg(memento, use_raw=True, use_temporal_std=True, raw_features=["hog", "brightness", "meanOF"])
    FeatureStore.at(cfg.resolved_features_dir(), "Memento10k", "raw").append(
        ids, raw, META | {"family": "raw", "settings": {"v": 1}}
    )
    table = FeatureTable.build(cfg, records)
    assert table.dims == {"raw": 10 + 10 + 1 + 1 + 1}  # hog, hog_std, brightness, brightness_std, meanOF (per video)
    train = table.splits["train"].x.numpy()
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-4)
    assert abs(table.splits["val"].x.numpy().mean()) > 1e-4  # val is scored with train statistics, not its own
    row = {i: k for k, i in enumerate(ids)}
    vid = table.splits["val"].ids[0]
    expected = (raw["brightness_std"][row[vid], 0] - table.stats["raw"]["mean"][21]) / table.stats["raw"]["std"][21]
    assert float(table.splits["val"].x[0, 21]) == pytest.approx(float(expected), rel=1e-5)
    assert "test" not in table.splits  # unscored
    assert table.sources["raw"]["features"] == ["hog", "hog_std", "brightness", "brightness_std", "meanOF"]


def test_table_refuses_missing_ids_and_missing_store(memento):
    records = load_records("Memento10k", Paths(data_dir=str(memento)))
    cfg = _cfg(memento, use_hrnet=True)
    with pytest.raises(FileNotFoundError, match="--features hrnet --hrnet_frames 1"):
        FeatureTable.build(cfg, records)
    scored = [r.id for r in records if r.score is not None]
    _store(cfg, "hrnet_f1", scored[3:], {"hrnet": np.zeros((len(scored) - 3, 720))})
    with pytest.raises(ConfigError, match=rf"3 of {len(scored)} videos have no hrnet features .*first: {scored[0]}"):
        FeatureTable.build(cfg, records)


def test_table_refuses_nan_and_skips_recorded_failures(memento, capsys):
    records = load_records("Memento10k", Paths(data_dir=str(memento)))
    ids = [r.id for r in records if r.score is not None]
    cfg = _cfg(memento, extra_features=["emb"])
    x = np.ones((len(ids), 4))
    x[5, 2] = np.nan
    _store(cfg, "emb", ids, {"emb": x})
    with pytest.raises(ConfigError, match=f"1 videos have NaN or inf emb features .*{ids[5]}"):
        FeatureTable.build(cfg, records)
    store = FeatureStore.at(cfg.resolved_features_dir(), "Memento10k", "emb")
    shutil.rmtree(store.parts_dir)
    store.append([], {"emb": np.zeros((0, 4))}, META, failures={ids[5]: "corrupt video"})
    store.append(ids[:5] + ids[6:], {"emb": np.ones((len(ids) - 1, 4))}, META)
    table = FeatureTable.build(cfg, records, device=torch.device("cpu"))
    assert sum(len(s.ids) for s in table.splits.values()) == len(ids) - 1
    assert "1 videos failed extraction" in capsys.readouterr().out
