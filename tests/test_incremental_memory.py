"""Replay memory of incremental updates: class presence, balanced selection, storage, carry-over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data.decode import read_mask
from segtune.data.memory import (
    MEMORY_DIR,
    MEMORY_FILE,
    MemoryItem,
    class_presence,
    load_memory,
    memory_hash,
    memory_pairs,
    select_balanced,
    write_memory,
)
from segtune.data.spec import DatasetSpec
from segtune.errors import RunError

# 6 samples, classes 0..4 (0 = background); class 4 is rare (sample 5 only), sample 3 is
# background only, class 3 occurs in sample 2 only.
POOL = [
    {0: 100, 1: 50, 2: 10},
    {0: 80, 1: 70},
    {0: 90, 2: 40, 3: 5},
    {0: 120},
    {1: 20, 2: 20},
    {0: 50, 4: 3},
]


# ------------------------------------------------------------------ class_presence
def test_class_presence_counts_classes_and_skips_ignore() -> None:
    mask = np.array(
        [
            [0, 0, 1, 255],
            [2, 2, 2, 255],
            [0, 1, 255, 255],
        ],
        dtype=np.uint8,
    )
    assert class_presence(mask, num_classes=4, ignore_index=255) == {0: 3, 1: 2, 2: 3}
    # class 3 absent: not listed; an all-ignore mask has no classes
    assert class_presence(np.full((2, 2), 255), 4, 255) == {}
    # a 16-bit label space with ignore 65535
    big = np.array([[300, 65535], [0, 300]], dtype=np.uint16)
    assert class_presence(big, 301, 65535) == {0: 1, 300: 2}


def test_class_presence_rejects_values_outside_the_label_space() -> None:
    with pytest.raises(ValueError, match=r"\[7\]"):
        class_presence(np.array([[0, 7]]), num_classes=4, ignore_index=255)
    with pytest.raises(ValueError, match="integers"):
        class_presence(np.zeros((2, 2), np.float32), 4, 255)


# ------------------------------------------------------------------ select_balanced
def test_select_balanced_exact_choice_for_seed_0() -> None:
    # seed 0: class order permutation([1, 2, 3, 4]) = [3, 1, 2, 4]
    assert [int(c) for c in np.random.default_rng(0).permutation([1, 2, 3, 4])] == [3, 1, 2, 4]
    # visit 3 -> only sample 2; visit 1 -> sample 1 (70 px > 50 > 20);
    # visit 2 -> sample 2 taken, sample 4 (20 px) beats sample 0 (10 px)
    assert select_balanced(POOL, size=3, seed=0) == [2, 1, 4]
    # one more visit: class 4 -> sample 5
    assert select_balanced(POOL, size=4, seed=0) == [2, 1, 4, 5]


def test_select_balanced_keeps_rare_class_and_excludes_background() -> None:
    for seed in range(20):
        for size in (4, 5):  # >= number of non-background classes
            chosen = select_balanced(POOL, size, seed)
            assert 5 in chosen, (seed, size)  # the only sample with class 4
            assert 2 in chosen, (seed, size)  # the only sample with class 3
            covered = {c for i in chosen for c in POOL[i]} - {0}
            assert covered == {1, 2, 3, 4}
            assert 3 not in chosen  # background only: never chosen
    # background counts when it is not excluded: sample 3 becomes eligible
    assert 3 in select_balanced(POOL, 10, 0, exclude=())
    # an excluded class never drives a pick: with 4 excluded, sample 5 (class 4 only) is never taken
    assert 5 not in select_balanced(POOL, 10, 0, exclude=(0, 4))


def test_select_balanced_size_above_pool_and_edge_cases() -> None:
    everything = select_balanced(POOL, size=100, seed=3)
    assert sorted(everything) == [0, 1, 2, 4, 5]  # all samples with a non-background class
    assert len(set(everything)) == len(everything)
    assert select_balanced(POOL, 0, 0) == []
    assert select_balanced([], 5, 0) == []
    assert select_balanced([{0: 10}, {0: 3}], 5, 0) == []  # background only
    # classes with zero pixels do not count as present
    assert select_balanced([{1: 0, 0: 4}, {2: 5}], 5, 0) == [1]


def test_select_balanced_is_deterministic_and_seed_breaks_ties() -> None:
    assert select_balanced(POOL, 3, 0) == select_balanced(POOL, 3, 0)
    assert select_balanced(POOL, 3, 1) == select_balanced(POOL, 3, 1)
    # the class order changes with the seed, so the first picks change
    orders = {tuple(select_balanced(POOL, 3, s)) for s in range(10)}
    assert len(orders) > 1
    # pure ties: 8 identical samples of one class; which one is taken follows the seed
    ties = [{1: 10}] * 8
    picks = {select_balanced(ties, 1, s)[0] for s in range(20)}
    assert len(picks) > 1
    # balance: 3 classes, each in 4 samples; size 6 gives exactly 2 per class
    pool = [{c: 10 + k} for c in (1, 2, 3) for k in range(4)]
    chosen = select_balanced(pool, 6, 7)
    per_class = [sum(1 for i in chosen if c in pool[i]) for c in (1, 2, 3)]
    assert per_class == [2, 2, 2]
    # within a class the biggest counts are taken first
    assert sorted(i for i in chosen if 1 in pool[i]) == [2, 3]


# ------------------------------------------------------------------ storage
def _make_pool(
    folder: Path, masks: list[np.ndarray], rng: np.random.Generator, tag: str
) -> list[Path]:
    """Write one image file per mask (PNG and JPEG alternately); returns the image paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, m in enumerate(masks):
        img = rng.integers(0, 255, (*m.shape, 3), dtype=np.uint8)
        p = folder / f"{tag}{k}.{'png' if k % 2 == 0 else 'jpg'}"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _mask(
    shape: tuple[int, int], counts: dict[int, int], ignore: int, dtype=np.uint8
) -> np.ndarray:
    flat = np.full(shape[0] * shape[1], ignore, dtype=np.int64)
    pos = 0
    for c, n in counts.items():
        flat[pos : pos + n] = c
        pos += n
    return flat.reshape(shape).astype(dtype)


def _index_spec(num_classes: int, ignore: int) -> DatasetSpec:
    return DatasetSpec(
        root=Path("."),
        classes=[f"c{k}" for k in range(num_classes)],
        ignore_index=ignore,
        mask_format="index",
        ignore_index_explicit=True,
    )


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = [_mask((12, 16), p, 255) for p in POOL]
    images = _make_pool(tmp_path / "data", masks, rng, "img")
    presence = [class_presence(m, 5, 255) for m in masks]
    assert presence == POOL
    chosen = select_balanced(presence, 4, 0)
    run = tmp_path / "run"
    data = write_memory(
        run, list(zip(images, masks, strict=True)), presence, chosen, {"seed": 0, "classes": 5}
    )

    assert data["format"] == 1 and data["size"] == 4 and data["seed"] == 0 and data["classes"] == 5
    on_disk = json.loads((run / MEMORY_FILE).read_text())
    assert on_disk == data
    items, loaded = load_memory(run)
    assert loaded == data
    assert memory_hash(run) == data["sha256"]
    assert [it.source for it in items] == [str(images[i]) for i in chosen]
    for k, (it, i) in enumerate(zip(items, chosen, strict=True)):
        assert isinstance(it, MemoryItem)
        assert it.image == f"{MEMORY_DIR}/images/{k:04d}_{images[i].stem}{images[i].suffix}"
        assert it.mask == f"{MEMORY_DIR}/masks/{k:04d}_{images[i].stem}.png"
        assert it.pixels == {c: n for c, n in POOL[i].items()}  # int keys after the JSON trip
        assert it.classes == sorted(POOL[i])
    pairs = memory_pairs(run, items)
    for (img, msk), i in zip(pairs, chosen, strict=True):
        assert img.is_absolute() and msk.is_absolute()
        assert img.read_bytes() == images[i].read_bytes()  # byte for byte, JPEG included
        back = np.asarray(Image.open(msk))
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, masks[i])
        np.testing.assert_array_equal(read_mask(msk, _index_spec(5, 255)), masks[i])
    # nothing else in the memory folder (no temporary files)
    names = sorted(p.name for p in (run / MEMORY_DIR).rglob("*") if p.is_file())
    assert len(names) == 8 and not any(n.startswith(".") for n in names)


def test_16_bit_masks_for_more_than_255_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks = [
        _mask((8, 8), {0: 10, 299: 5}, 65535, np.uint16),
        _mask((8, 8), {256: 7, 3: 2}, 65535, np.uint16),
    ]
    images = _make_pool(tmp_path / "data", masks, rng, "big")
    presence = [class_presence(m, 300, 65535) for m in masks]
    chosen = select_balanced(presence, 5, 0)
    assert sorted(chosen) == [0, 1]
    write_memory(tmp_path / "run", list(zip(images, masks, strict=True)), presence, chosen, {})
    items, _ = load_memory(tmp_path / "run")
    for (_img, msk), i in zip(memory_pairs(tmp_path / "run", items), chosen, strict=True):
        with Image.open(msk) as im:
            assert im.mode.startswith("I")  # 16-bit grayscale
        np.testing.assert_array_equal(np.asarray(Image.open(msk)).astype(np.int64), masks[i])
        np.testing.assert_array_equal(read_mask(msk, _index_spec(300, 65535)), masks[i])
    # small values in a wide dtype still go to 8 bits
    small = [np.array([[1, 2], [255, 0]], dtype=np.int64)]
    img = _make_pool(tmp_path / "d2", small, rng, "s")
    write_memory(
        tmp_path / "run2", [(img[0], small[0])], [class_presence(small[0], 3, 255)], [0], {}
    )
    ((_, msk),) = memory_pairs(tmp_path / "run2", load_memory(tmp_path / "run2")[0])
    assert np.asarray(Image.open(msk)).dtype == np.uint8
    # negative values cannot be stored
    with pytest.raises(ValueError, match="PNG"):
        write_memory(tmp_path / "run3", [(img[0], small[0] - 2)], [{}], [0], {})
    assert not (tmp_path / "run3" / MEMORY_FILE).exists()


def test_tampering_missing_files_and_no_memory(tmp_path: Path) -> None:
    assert load_memory(tmp_path / "nothing") == ([], {})
    assert memory_hash(tmp_path / "nothing") is None

    rng = np.random.default_rng(2)
    masks = [_mask((12, 16), p, 255) for p in POOL]
    images = _make_pool(tmp_path / "data", masks, rng, "t")
    run = tmp_path / "run"
    write_memory(run, list(zip(images, masks, strict=True)), POOL, [0, 1], {})
    items, _ = load_memory(run)
    img, msk = memory_pairs(run, items)[1]

    # a changed mask: named in a one-line RunError; verify=False still loads
    original = msk.read_bytes()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(msk)
    with pytest.raises(RunError) as e:
        load_memory(run)
    msg = str(e.value)
    assert "\n" not in msg and msk.name in msg and "--memory 0" in msg and "restore" in msg
    assert len(load_memory(run, verify=False)[0]) == 2
    msk.write_bytes(original)
    load_memory(run)

    # a missing image is caught with or without verify
    img.unlink()
    for verify in (True, False):
        with pytest.raises(RunError, match=img.name):
            load_memory(run, verify=verify)

    # a hand-edited total hash, a broken index, an unknown format
    data = json.loads((run / MEMORY_FILE).read_text())
    img.write_bytes(images[1].read_bytes())
    load_memory(run)
    (run / MEMORY_FILE).write_text(json.dumps({**data, "sha256": "0" * 64}))
    with pytest.raises(RunError, match=MEMORY_FILE):
        load_memory(run)
    (run / MEMORY_FILE).write_text("{not json")
    with pytest.raises(RunError, match="--memory 0"):
        load_memory(run)
    (run / MEMORY_FILE).write_text(json.dumps({**data, "format": 9}))
    with pytest.raises(RunError, match="format"):
        load_memory(run)
    # a path escaping the memory folder is refused
    evil = {**data, "items": [{**data["items"][0], "image": "../../etc/passwd"}]}
    (run / MEMORY_FILE).write_text(json.dumps(evil))
    with pytest.raises(RunError, match="outside"):
        load_memory(run)


def test_empty_memory_and_rewrite_prunes_old_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    masks = [_mask((12, 16), p, 255) for p in POOL]
    images = _make_pool(tmp_path / "data", masks, rng, "e")
    pairs = list(zip(images, masks, strict=True))
    run = tmp_path / "run"
    write_memory(run, pairs, POOL, [0, 1, 2], {})
    assert len(list((run / MEMORY_DIR / "images").iterdir())) == 3
    data = write_memory(run, pairs, POOL, [], {"note": "empty"})
    assert data["items"] == [] and data["size"] == 0 and data["note"] == "empty"
    assert load_memory(run)[0] == []
    assert list((run / MEMORY_DIR / "images").iterdir()) == []
    with pytest.raises(ValueError, match="reserved"):
        write_memory(run, pairs, POOL, [0], {"size": 3})
    with pytest.raises(ValueError, match="outside"):
        write_memory(run, pairs, POOL, [9], {})


def test_rebuild_in_place_from_its_own_memory(tmp_path: Path) -> None:
    """Sources inside the run's own memory folder are read before being overwritten."""
    rng = np.random.default_rng(4)
    masks = [_mask((12, 16), p, 255) for p in POOL]
    images = _make_pool(tmp_path / "data", masks, rng, "r")
    run = tmp_path / "run"
    write_memory(run, list(zip(images, masks, strict=True)), POOL, [0, 2, 5], {})
    items, _ = load_memory(run)
    mem_pairs = memory_pairs(run, items)
    pool = [(img, np.asarray(Image.open(m)).copy()) for img, m in mem_pairs]
    before = [img.read_bytes() for img, _ in mem_pairs]
    write_memory(run, pool, [it.pixels for it in items], [2, 0, 1], {})
    items2, _ = load_memory(run)
    after = [p.read_bytes() for p, _ in memory_pairs(run, items2)]
    assert after == [before[2], before[0], before[1]]
    # names do not grow: the old NNNN_ prefix is replaced, not stacked
    assert [Path(it.image).name for it in items2] == ["0000_r5.jpg", "0001_r0.png", "0002_r2.png"]


# ------------------------------------------------------------------ two updates
def test_memory_carried_over_two_updates(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    # step 0: classes 0..3, 8 samples; class 3 rare (one sample)
    pool1 = [
        {0: 20, 1: 10},
        {0: 10, 1: 25},
        {0: 15, 2: 12},
        {0: 5, 2: 30},
        {1: 8, 2: 8},
        {0: 30, 3: 2},
        {0: 36},
        {1: 30, 2: 1},
    ]
    masks1 = [_mask((6, 6), p, 255) for p in pool1]
    imgs1 = _make_pool(tmp_path / "data1", masks1, rng, "a")
    pres1 = [class_presence(m, 4, 255) for m in masks1]
    chosen_a = select_balanced(pres1, 3, 0)
    run_a = tmp_path / "run_a"
    write_memory(run_a, list(zip(imgs1, masks1, strict=True)), pres1, chosen_a, {"step": 0})
    items_a, _ = load_memory(run_a)
    assert {c for it in items_a for c in it.classes} - {0} == {1, 2, 3}

    # step 1: new classes 4 and 5 in new images; the old memory is reloaded from disk
    pool2_new = [{0: 20, 4: 16}, {0: 10, 4: 26}, {0: 30, 5: 6}, {4: 10, 5: 10, 1: 16}]
    masks_new = [_mask((6, 6), p, 255) for p in pool2_new]
    imgs_new = _make_pool(tmp_path / "data2", masks_new, rng, "b")
    old_pairs = [
        (img, read_mask(m, _index_spec(6, 255))) for img, m in memory_pairs(run_a, items_a)
    ]
    pairs2 = old_pairs + list(zip(imgs_new, masks_new, strict=True))
    pres2 = [class_presence(m, 6, 255) for _, m in pairs2]
    assert pres2[: len(items_a)] == [it.pixels for it in items_a]
    chosen_b = select_balanced(pres2, 5, 0)
    run_b = tmp_path / "run_b"
    data_b = write_memory(run_b, pairs2, pres2, chosen_b, {"step": 1})
    items_b, loaded_b = load_memory(run_b)
    assert loaded_b == data_b and data_b["size"] == 5 == len(items_b)

    # balanced over the classes of both pools: each of 1..5 represented
    covered = {c for it in items_b for c in it.classes} - {0}
    assert covered == {1, 2, 3, 4, 5}
    # the rare old class 3 survived both selections
    assert any(3 in it.classes for it in items_b)
    # files are byte copies of the originals through both steps
    originals = {str(run_a / it.image): Path(it.source) for it in items_a}
    for it, (img, msk) in zip(items_b, memory_pairs(run_b, items_b), strict=True):
        origin = originals.get(it.source, Path(it.source))  # old items: back to the data set
        assert origin.parent in (tmp_path / "data1", tmp_path / "data2")
        assert img.read_bytes() == origin.read_bytes()
        assert class_presence(read_mask(msk, _index_spec(6, 255)), 6, 255) == it.pixels
    # memory A untouched and still valid; the two memories have different hashes
    assert load_memory(run_a)[0] == items_a
    assert memory_hash(run_a) != memory_hash(run_b)
