"""``segtune distill``: a student learns from a teacher's soft outputs, on small generated data.

Shapes on noise: class 1 = red squares, class 2 = green disks (64x64 images). The teacher learns
both from labelled images. The student gets a few labelled images that show only squares, plus
unlabelled images that show both: trained on its labels alone it cannot learn the disks, with the
teacher's soft outputs on the unlabelled images it can. Both students use the same config, budget
and seed; the assertion is on the val mIoU the run folders report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import segtune
from segtune.cli import main
from segtune.distill import distill, resume_distill
from segtune.distill.losses import distillation_loss
from segtune.distill.module import renormalize

CLASSES = ["background", "square", "disk"]
FAST = {"train.progress": False, "train.num_overlays": 0, "train.early_stopping": 0, "train.val_every": 1000}
STUDENT = ("fpn", "tf_efficientnet_lite0")


def make_shapes(root: Path, n: int, seed: int, shapes: tuple[str, ...] = ("square", "disk"),
                split: str = "train", masks: bool = True) -> Path:
    """``n`` 64x64 images of ``shapes`` on dark noise into ``root/split/images`` (+ ``masks``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        if "square" in shapes:
            y, x = rng.integers(2, 40, 2)
            sq = (yy >= y) & (yy < y + 20) & (xx >= x) & (xx < x + 20)
            img[sq], mask[sq] = (230, 30, 30), 1
        if "disk" in shapes:
            cy, cx = rng.integers(12, 52, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 100
            img[disk], mask[disk] = (30, 230, 30), 2
        Image.fromarray(img).save(root / split / "images" / f"{split}{seed}_{i:02d}.png")
        if masks:
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{seed}_{i:02d}.png")
    return root


def write_yaml(root: Path, classes: list[str] = CLASSES) -> Path:
    colors = [[0, 0, 0], [255, 0, 0], [0, 255, 0]][: len(classes)]
    (root / "dataset.yaml").write_text(
        f"name: shapes\nclasses: [{', '.join(classes)}]\ncolors: {colors}\n"
        "ignore_index: 250\nmask_format: index\nsplits:\n  train: {images: train/images, masks: train/masks}\n"
        "  val: {images: val/images, masks: val/masks}\n"
    )
    return root


def student_cfg(data: Path, out: Path, name: str, steps: int) -> dict:
    return {"data": {"root": str(data), "batch_size": 4, "crop_size": 64},
            "model": {"arch": STUDENT[0], "encoder": STUDENT[1]},
            "strategy": {"name": "head"}, "optim": {"lr": 1e-2, "warmup_steps": 1},
            "train": {"out": str(out), "name": name, "epochs": 100, "max_steps": steps, "progress": False,
                      "num_overlays": 0, "early_stopping": 0, "seed": 0, "memory": 2, "val_every": 1000}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher trained on labelled squares + disks; the student's few labels (squares only),
    unlabelled images (both) and the shared val split."""
    tmp = tmp_path_factory.mktemp("distill")
    full = make_shapes(tmp / "full", 16, seed=1)
    make_shapes(full, 6, seed=2, split="val")
    write_yaml(full)
    few = make_shapes(tmp / "few", 3, seed=3, shapes=("square",))
    make_shapes(few, 6, seed=2, split="val")
    write_yaml(few)
    unl = make_shapes(tmp / "unl", 16, seed=4, masks=False, split="x") / "x" / "images"
    cfg = {"data": {"root": str(full), "batch_size": 4, "crop_size": 64},
           "strategy": {"name": "head"}, "optim": {"lr": 1e-2, "warmup_steps": 1},
           "train": {"out": str(tmp / "runs"), "name": "teacher", "epochs": 100, "max_steps": 30,
                     "progress": False, "num_overlays": 0, "early_stopping": 0, "val_every": 1000}}
    teacher = segtune.train(cfg).dir
    return {"tmp": tmp, "full": full, "few": few, "unl": unl, "teacher": Path(teacher)}


def _miou(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["metrics"]["miou"])


def test_distillation_lifts_a_student_above_labels_alone(world, capsys) -> None:
    steps = 20
    kd = distill(world["teacher"], world["few"], student_arch=STUDENT[0], student_encoder=STUDENT[1],
                 unlabelled=world["unl"], overrides={**FAST, "train.max_steps": steps, "optim.lr": 1e-2,
                                                    "train.memory": 2},
                 temperature=2.0, alpha=0.5, out=world["tmp"] / "runs", name="kd")
    err = capsys.readouterr().err
    # the unlabelled images' label-free masks are expected: one line, not a warning per image
    assert not [ln for ln in err.splitlines() if ln.startswith("warning:") and "unl_" in ln]
    assert "16 expected data-check note(s) not shown" in err
    base = segtune.train(student_cfg(world["few"], world["tmp"] / "runs", "labels", steps)).dir
    kd_m, base_m, teacher_m = _miou(kd), _miou(base), _miou(world["teacher"])
    print(f"teacher {teacher_m:.3f}  student kd {kd_m:.3f}  labels alone {base_m:.3f}")
    assert kd_m > base_m + 0.15
    # the student is a normal run folder: its own architecture, the teacher's classes and colours
    meta = yaml.safe_load((kd / "model.yaml").read_text())
    tmeta = yaml.safe_load((world["teacher"] / "model.yaml").read_text())
    assert meta["model"]["arch"] == STUDENT[0] and meta["classes"] == tmeta["classes"] == CLASSES
    assert meta["colors"] == tmeta["colors"]
    # the data's ignore value (not the 255 of the student's own derived data): evaluate reads a
    # folder without dataset.yaml with it
    assert meta["ignore_index"] == tmeta["ignore_index"] == 250
    assert meta["distillation"]["teacher"] == str(world["teacher"].resolve())
    assert json.loads((kd / "metrics.json").read_text())["summary"]["steps"] == steps
    dd = yaml.safe_load((kd / "distill.yaml").read_text())
    assert dd["counts"] == {"labelled": 3, "unlabelled": 16, "val": 6}
    # evaluate and predict work on it
    m = segtune.evaluate(kd, world["full"])
    assert abs(m["miou"] - kd_m) < 1e-6
    assert main(["predict", str(kd), str(world["unl"]), "--out", str(world["tmp"] / "pred")]) == 0
    assert len(list((world["tmp"] / "pred").glob("*.png"))) == 16
    # resuming a finished distillation does nothing and returns the folder
    assert resume_distill(kd) == kd


def test_kd_loss_matches_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    label = torch.tensor(0.7)
    T, alpha = 3.0, 0.25
    total, kd = distillation_loss(s, t, label, T, alpha)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(t.numpy() / T), log_softmax(s.numpy() / T)
    hand = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean() * T * T)
    assert float(kd) == pytest.approx(hand, rel=1e-5)
    assert float(total) == pytest.approx(alpha * 0.7 + (1 - alpha) * hand, rel=1e-5)
    # the student that reproduces the teacher pays nothing; only the student gets a gradient
    assert float(distillation_loss(t, t, label, T, 0.0)[0]) == pytest.approx(0.0, abs=1e-6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    distillation_loss(s, t, label, T, alpha)[0].backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0 and t.grad is None


def test_teacher_sees_its_own_normalisation() -> None:
    rgb = torch.rand(2, 3, 8, 8)
    a = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    b = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def norm(m: tuple) -> torch.Tensor:
        return (rgb - torch.tensor(m[0]).view(1, 3, 1, 1)) / torch.tensor(m[1]).view(1, 3, 1, 1)

    assert torch.allclose(renormalize(norm(a), *a, *b), norm(b), atol=1e-6)
    x = norm(b)
    assert renormalize(x, *b, *b) is x


def _one_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and expected in err, err


def test_cli_refusals_are_one_line_and_write_nothing(world, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    teacher, few = str(world["teacher"]), str(world["few"])

    def run(*args: str) -> int:
        return main(["distill", *args, "--out", str(out), "--no-progress"])

    _one_error(capsys, run(str(tmp_path), few, "--student", "fpn/tf_efficientnet_lite0"),
               "not a finished segtune run folder")
    _one_error(capsys, run(str(tmp_path / "nope"), few, "--student", "fpn/tf_efficientnet_lite0"), "not found")
    other = write_yaml(make_shapes(tmp_path / "other", 2, seed=9), ["background", "disk", "square"])
    make_shapes(other, 1, seed=9, split="val")
    _one_error(capsys, run(teacher, str(other), "--student", "fpn/tf_efficientnet_lite0"), "differ from the teacher's")
    two = write_yaml(make_shapes(tmp_path / "two", 2, seed=9), ["background", "square"])
    make_shapes(two, 1, seed=9, split="val")
    _one_error(capsys, run(teacher, str(two), "--student", "fpn/tf_efficientnet_lite0"), "differ from the teacher's")
    _one_error(capsys, run(teacher, few, "--student", "unet2/tf_efficientnet_lite0"), "unknown architecture")
    _one_error(capsys, run(teacher, few, "--student", "unet"), "give ARCH/ENCODER")
    _one_error(capsys, run(teacher, few, "--student", "fpn/tf_efficientnet_lite0", "--set", "model.arch=unet"),
               "the student is set by --student")
    _one_error(capsys, run(teacher, few, "--student", "fpn/tf_efficientnet_lite0", "--temperature", "0"),
               "temperature 0.0: must be > 0")
    _one_error(capsys, run(teacher, few, "--student", "fpn/tf_efficientnet_lite0", "--unlabelled",
                           str(tmp_path / "none")), "folder not found")
    _one_error(capsys, main(["distill", "--resume", str(world["teacher"])]), "no distill.yaml here")
    assert not out.exists() or list(out.iterdir()) == []


def test_interrupted_distillation_resumes_to_the_same_weights(world, tmp_path: Path) -> None:
    import signal

    from _seams import SignalAtStep
    from safetensors.torch import load_file

    kw = {"student_arch": STUDENT[0], "student_encoder": STUDENT[1], "unlabelled": world["unl"],
          "out": tmp_path / "runs", "progress": False,
          "overrides": {**FAST, "train.max_steps": 5, "train.checkpoint_every": 1}}
    whole = distill(world["teacher"], world["few"], name="whole", **kw)
    with pytest.raises(segtune.RunError, match="stopped by SIGINT"):
        distill(world["teacher"], world["few"], name="cut", callbacks=[SignalAtStep(3, signal.SIGINT)], **kw)
    cut = tmp_path / "runs" / "cut"
    assert (cut / "checkpoints" / "last.ckpt").is_file() and not (cut / "model.yaml").exists()
    assert resume_distill(cut) == cut
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hint_loss_matches_a_hand_computation() -> None:
    from segtune.distill.losses import hint_loss
    from segtune.distill.module import _hint_adapter
    from segtune.errors import ConfigError

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    assert float(hint_loss(s, t)) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-6)
    small = torch.randn(2, 4, 3, 3, generator=g)
    up = torch.nn.functional.interpolate(small, size=(6, 6), mode="bilinear", align_corners=False)
    assert float(hint_loss(small, t)) == pytest.approx(float(((up - t) ** 2).mean()), rel=1e-6)
    with pytest.raises(ConfigError, match="feature hints need SMP architectures"):
        _hint_adapter(torch.nn.Identity(), torch.nn.Identity())


def test_feature_hint_trains_an_adapter_kept_out_of_the_model(world, tmp_path: Path) -> None:
    run = distill(world["teacher"], world["few"], student_arch=STUDENT[0], student_encoder=STUDENT[1],
                  unlabelled=world["unl"], hint_weight=1.0, out=tmp_path, name="hint", progress=False,
                  overrides={**FAST, "train.max_steps": 3})
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    adapter = ckpt["state_dict"]["hint_adapter.weight"]
    assert adapter.shape[:2] == (16, 128)  # unet (teacher) decoder: 16 channels; fpn (student): 128
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups].count("hint_adapter") == 1  # trained, from step 0
    assert ckpt["optimizer_states"][0]["state"]  # AdamW moments exist: the steps ran
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(run / "model.safetensors")) if "hint" in k]
    assert yaml.safe_load((run / "model.yaml").read_text())["distillation"]["hint_weight"] == 1.0
    assert yaml.safe_load((run / "distill.yaml").read_text())["hint_weight"] == 1.0
    assert 0.0 <= _miou(run) <= 1.0
