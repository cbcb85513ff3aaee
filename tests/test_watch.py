"""``segtune update RUN --watch DIR``: online updates promoted only past the guard, interrupt-safe.

A base run knows [background, square] (tests/test_update.py's shapes); new labelled pairs are
copied into a watched folder. The runs are tiny (a few optimiser steps): these tests check the
mechanics (pointer, state, guard decision, resume after a kill, half-copied files), not accuracy.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from test_update import FAST, _train_base, make_shapes

import segtune
from segtune.cli import main
from segtune.incremental import watch as watch_mod
from segtune.incremental.watch import read_current, watch

STEPS = {**FAST, "train.max_steps": 2}
CLASSES = ["background", "square"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run [background, square] whose data has a val split (the default guard)."""
    return _train_base(tmp_path_factory.mktemp("watch"), CLASSES)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Labelled pairs to drop into watched folders."""
    root = make_shapes(tmp_path_factory.mktemp("src") / "pairs", CLASSES, n_train=5, seed=7,
                       shapes=("square",), val=False)
    return sorted(zip(sorted((root / "train" / "images").iterdir()), sorted((root / "train" / "masks").iterdir()), strict=True))


def _watched(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "dataset.yaml").write_text(f"classes: [{', '.join(CLASSES)}]\nignore_index: 255\nmask_format: index\n")
    return root


def _drop(folder: Path, pairs: list[tuple[Path, Path]], mask: bool = True) -> None:
    for img, m in pairs:
        shutil.copy(img, folder / "images" / img.name)
        if mask:
            shutil.copy(m, folder / "masks" / m.name)


def _state(out: Path) -> dict:
    return json.loads((out / "watch.json").read_text())


def _runs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def test_watch_promotes_a_model_that_passes_the_guard(base: Path, source, tmp_path: Path, capsys) -> None:
    w = _watched(tmp_path / "incoming")
    _drop(w, source[:3])
    _drop(w, source[3:4], mask=False)  # an image whose mask has not arrived: not one of the 3
    out = tmp_path / "runs"
    decided = watch(base, w, 3, max_drop=100, out=out, poll_seconds=0.01, max_updates=1, overrides=STEPS,
                    progress=False)
    assert len(decided) == 1 and decided[0]["status"] == "promoted", decided
    new = Path(decided[0]["run"])
    assert new.parent == out.resolve() and new.name == f"{base.name}-w0001" and (new / "model.yaml").is_file()
    assert read_current(out).resolve() == new and (out / "current").read_text().strip() == new.name
    if (out / "current.run").is_symlink():
        assert (out / "current.run").resolve() == new
    lineage = yaml.safe_load((new / "model.yaml").read_text())["lineage"]
    assert lineage["parent"] == str(base.resolve()) and lineage["kind"] == "data"
    state = _state(out)
    rec = state["updates"][0]
    assert rec["status"] == "promoted" and rec["parent"] == str(base.resolve()) and "within" in rec["reason"]
    assert 0 <= rec["guard"]["new"] <= 1 and 0 <= rec["guard"]["current"] <= 1 and rec["guard"]["classes"] == ["square"]
    assert sorted(state["consumed"]) == sorted(f"images/{i.name}" for i, _ in source[:3])
    assert state["current"] == str(new) and state["guard"] == str((base.parent.parent / "data_base").resolve())
    assert sorted(p["image"] for p in rec["pairs"]) == sorted(state["consumed"])
    err = capsys.readouterr().err
    assert "watch: update 1: 3 new pairs" in err and f"promoted {new.name}" in err

    # the watcher continues from `current`: the next update's parent is the promoted run
    _drop(w, source[4:5])
    _drop(w, source[3:4])  # the late mask arrives (image copied again: same bytes)
    decided2 = watch(base, w, 2, max_drop=-100, out=out, poll_seconds=0.01, max_updates=1, overrides=STEPS,
                     progress=False)
    assert decided2[0]["parent"] == str(new) and decided2[0]["status"] == "kept"
    assert read_current(out).resolve() == new  # a model that fails the guard is never promoted
    assert len(_state(out)["consumed"]) == 5


def test_watch_keeps_but_does_not_promote_a_model_that_fails_the_guard(base: Path, source, tmp_path: Path,
                                                                       capsys) -> None:
    w = _watched(tmp_path / "incoming")
    _drop(w, source[:3])
    out = tmp_path / "runs"
    rc = main(["update", str(base), "--watch", str(w), "--every", "3", "--max-drop", "-100", "--poll", "0.01",
               "--max-updates", "1", "--out", str(out), "--max-steps", "2", "--no-progress",
               "--set", "train.num_overlays=0", "--set", "train.early_stopping=0"])
    assert rc == 0
    rec = _state(out)["updates"][0]
    new = Path(rec["run"])
    assert rec["status"] == "kept" and "more than the allowed drop of -100" in rec["reason"]
    assert (new / "model.yaml").is_file() and (new / "incremental.json").is_file()  # the run is kept ...
    assert read_current(out).resolve() == base.resolve()  # ... but not promoted
    assert len(_state(out)["consumed"]) == 3  # its pairs are used up all the same
    err = capsys.readouterr().err
    assert f"kept {new.name}, not promoted" in err and f"current stays {base.name}" in err

    rc = main(["update", str(base), str(w), "--watch", str(w)])  # NEW_DATA and --watch: one error line
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "not NEW_DATA" in lines[0]


def test_watch_killed_during_an_update_keeps_the_old_model_and_resumes(base: Path, source, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    from _seams import SignalAtStep

    w = _watched(tmp_path / "incoming")
    _drop(w, source[:3])
    out = tmp_path / "runs"
    kw = {"out": out, "poll_seconds": 0.01, "max_updates": 1, "max_drop": 100, "progress": False,
          "overrides": {**STEPS, "train.checkpoint_every": 1, "data.batch_size": 1}}
    # a SIGINT in the middle of training (as Ctrl-C or a scheduler's stop would arrive)
    with pytest.raises(segtune.RunError, match="stopped by SIGINT"):
        watch(base, w, 3, callbacks=[SignalAtStep(2, signal.SIGINT)], **kw)
    state = _state(out)
    rec = state["updates"][0]
    cut = Path(rec["run"])
    assert rec["status"] == "running" and "SIGINT" in rec["error"]
    assert cut.is_dir() and not (cut / "model.yaml").exists()  # half-written ...
    assert read_current(out).resolve() == base.resolve()  # ... and never promoted
    assert state["consumed"] == {}
    assert "finished first when the watcher starts again" in capsys.readouterr().err

    # started again, the watcher finishes that update (same run folder, resumed) and promotes it
    decided = watch(base, w, 3, **kw)
    assert [d["run"] for d in decided] == [str(cut)] and decided[0]["status"] == "promoted"
    assert read_current(out).resolve() == cut and _runs(out) == [cut.name]
    assert len(_state(out)["consumed"]) == 3 and "error" not in _state(out)["updates"][0]
    assert "resuming" in capsys.readouterr().err

    # killed after training, while scoring the guard: nothing promoted, no retraining on restart
    _drop(w, source[3:5])
    real = watch_mod._guard_scores

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_mod, "_guard_scores", killed)
    with pytest.raises(KeyboardInterrupt):
        watch(base, w, 2, **kw)
    rec2 = _state(out)["updates"][1]
    done = Path(rec2["run"])
    assert rec2["status"] == "running" and (done / "incremental.json").is_file()
    assert read_current(out).resolve() == cut and len(_state(out)["consumed"]) == 3
    weights = (done / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(watch_mod, "_guard_scores", real)
    decided = watch(base, w, 2, **kw)
    assert decided[0]["run"] == str(done) and decided[0]["status"] == "promoted"
    assert (done / "model.safetensors").stat().st_mtime_ns == weights  # decided, not trained again
    assert read_current(out).resolve() == done and len(_state(out)["consumed"]) == 5


def test_half_copied_pairs_are_not_counted(base: Path, source, tmp_path: Path, capsys) -> None:
    w = _watched(tmp_path / "incoming")
    _drop(w, source[:2])  # complete
    _drop(w, source[2:3], mask=False)  # the mask is missing
    img, mask = source[3]
    data = img.read_bytes()
    (w / "images" / img.name).write_bytes(data[: len(data) // 2])  # truncated, size no longer changing
    shutil.copy(mask, w / "masks" / mask.name)
    grow_img, grow_mask = source[4]
    shutil.copy(grow_mask, w / "masks" / grow_mask.name)
    growing = w / "images" / grow_img.name
    growing.write_bytes(b"")
    calls = []

    def stop() -> bool:  # between two looks: the growing file gets longer; after 4 looks the mask arrives
        calls.append(1)
        with growing.open("ab") as f:
            f.write(b"\0" * 10)
        if len(calls) == 5:
            shutil.copy(source[2][1], w / "masks" / source[2][1].name)
        return len(calls) > 8

    out = tmp_path / "runs"
    assert watch(base, w, 4, out=out, poll_seconds=0.01, stop=stop, progress=False) == []
    state = _state(out)
    assert state["updates"] == [] and state["consumed"] == {}
    assert read_current(out).resolve() == base.resolve()
    err = capsys.readouterr().err
    assert "2 of 4 new pairs ready (1 changing, 1 unreadable, 1 without mask); waiting" in err
    assert "3 of 4 new pairs ready (1 changing, 1 unreadable); waiting" in err  # the late mask counts
