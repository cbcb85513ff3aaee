"""ONNX export of a trained run, checked against PyTorch on real images; optional INT8.

:func:`export_onnx` reads as its phases: check the inputs, export the float model (dynamic
batch, height and width; metadata embedded), collect the check images, compare onnxruntime
with PyTorch on them, quantise (INT8) and compare again, and only then move the file to its
final name. A failed check raises :class:`~segtune.errors.SegtuneError` and leaves nothing
behind.

Metadata (``metadata_props``, JSON values): ``segtune_format``, ``classes``, ``colors``,
``ignore_index``, ``normalization`` (``{"mean", "std"}`` of RGB/255), ``pad_multiple``,
``source_sha256`` (SHA-256 of the run's ``model.safetensors``), ``source_run``, ``arch``,
``encoder``, ``num_classes``, ``precision`` (``fp32``/``int8``), ``suppress`` (classes never
predicted; already applied inside the graph), ``float_ops`` (INT8: op types kept in float),
``segtune_version``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _log
from .._io import atomic_path
from .._progress import progress_iter
from ..errors import ConfigError, DataError, RunError, SegtuneError
from .runtime import INSTALL_HINT, OnnxSegmenter, read_rgb

__all__ = ["export_onnx", "ExportReport", "OPSET", "INT8_FLOAT_OPS", "METADATA_FORMAT"]

OPSET = 17
METADATA_FORMAT = 1
#: op types the INT8 model keeps in float by default. None: keeping ``Resize`` in float left the
#: mIoU unchanged and was slower (230 vs 157 ms; benchmarks/deploy.py, RESULTS.md "Deploy")
INT8_FLOAT_OPS: tuple[str, ...] = ()
_PAD = 32

Pair = tuple[Path, "Path | None"]


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ``.onnx`` file.
        precision: ``fp32`` or ``int8``.
        images: number of check images.
        max_abs_diff: largest ``|logit_onnx - logit_torch|`` over all check pixels and classes.
        agreement: share of check pixels whose argmax class is the same as PyTorch's (0..1).
        miou_torch, miou_onnx: mIoU (0..1) of both on the check images' masks (None without masks).
        ms_torch, ms_onnx: median batch-1 latency per check image, milliseconds.
        float_ops: INT8: op types left in float.
    """

    path: Path
    precision: str
    images: int
    max_abs_diff: float
    agreement: float
    miou_torch: float | None = None
    miou_onnx: float | None = None
    ms_torch: float = float("nan")
    ms_onnx: float = float("nan")
    float_ops: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """PyTorch eager latency / onnxruntime latency (batch 1, same threads)."""
        return self.ms_torch / self.ms_onnx if self.ms_onnx > 0 else float("nan")

    @property
    def miou_change(self) -> float | None:
        """ONNX minus PyTorch mIoU, in points (None without masks)."""
        if self.miou_torch is None or self.miou_onnx is None:
            return None
        return 100.0 * (self.miou_onnx - self.miou_torch)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"{self.precision} check on {self.images} image(s): max |logit diff| {self.max_abs_diff:.3g}, "
               f"argmax agreement {100 * self.agreement:.3f}% of pixels"]
        if self.miou_change is not None:
            out.append(f"mIoU {100 * self.miou_torch:.2f} (PyTorch) -> {100 * self.miou_onnx:.2f} (ONNX {self.precision}), "
                       f"change {self.miou_change:+.2f} points")
        out.append(f"batch-1 latency: PyTorch eager {self.ms_torch:.1f} ms, ONNX {self.precision} {self.ms_onnx:.1f} ms "
                   f"({self.speedup:.2f}x)")
        if self.float_ops:
            out.append(f"kept in float: {', '.join(self.float_ops)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=str(self.path), speedup=self.speedup, miou_change=self.miou_change)
        return d


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise SegtuneError(f"export: {e.name} is not installed; {INSTALL_HINT}") from None


def export_onnx(
    run: str | Path,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    check: str | Path | None = None,
    check_images: int | None = 32,
    calibration_images: int = 32,
    min_agreement: float = 0.999,
    max_miou_drop: float | None = 1.0,
    float_ops: tuple[str, ...] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> ExportReport:
    """Export a run's model to ONNX (opset 17, dynamic N/H/W) and verify it against PyTorch.

    Args:
        run: run folder written by ``segtune train``.
        out: output ``.onnx`` path (default ``RUN/model.onnx``, ``RUN/model.int8.onnx`` with ``int8``).
        int8: static INT8 quantisation (QDQ, per-channel weights, MinMax calibration).
        calibration: INT8 calibration images: a folder of images or a data set (its train split;
            default: the run's training images).
        check: data set (its val split, else train) or image folder to verify on (default: the
            run's val split).
        check_images: at most this many check images (evenly spaced; None: all).
        calibration_images: at most this many calibration images.
        min_agreement: float export: fail when fewer check pixels than this share (0..1) have
            PyTorch's argmax class.
        max_miou_drop: INT8: fail when the check mIoU drops by more than this many points (None:
            never; without masks, an argmax agreement below 95% fails instead).
        float_ops: INT8: op types kept in float (default :data:`INT8_FLOAT_OPS`).
        overwrite: replace an existing ``out``.
        threads: threads of both PyTorch and onnxruntime for the timing (default torch's).
        progress: show progress bars.

    Returns:
        The :class:`ExportReport` (also printed by the CLI).

    Raises:
        RunError: not a run folder, or ``out`` exists without ``overwrite``.
        SegtuneError: the onnx extra is missing; the check fails (nothing is written).
    """
    from ..models.modelfile import load_model

    run = Path(run)
    if calibration is not None and not int8:
        raise ConfigError("--calibration only applies with --int8 (calibration images set the INT8 ranges)")
    model, meta = load_model(run)  # RunError for anything that is not a finished run
    _require_onnx()
    target = _target(run, out, int8, overwrite)
    threads = threads or torch.get_num_threads()
    pairs = _check_pairs(run, check, check_images)
    calib = _calibration_images(run, calibration, calibration_images) if int8 else []
    with tempfile.TemporaryDirectory(prefix="segtune-export-") as tmpdir:
        fp32 = Path(tmpdir) / "model.onnx"
        _export_fp32(model, meta, fp32, run)
        report = _compare(model, fp32, pairs, meta, threads, "fp32", progress)
        _gate_fp32(report, min_agreement, target)
        if int8:
            kept = tuple(INT8_FLOAT_OPS if float_ops is None else float_ops)
            q = Path(tmpdir) / "model.int8.onnx"
            _quantize(fp32, q, calib, kept, meta, run)
            report = _compare_int8(model, q, pairs, meta, threads, progress, target)
            report.float_ops = list(kept)
            _gate_int8(report, max_miou_drop, target)
        with atomic_path(target) as tmp:
            shutil.copyfile(Path(tmpdir) / ("model.int8.onnx" if int8 else "model.onnx"), tmp)
    report.path = target
    return report


# ----------------------------------------------------------------------------- phase: inputs
def _target(run: Path, out: str | Path | None, int8: bool, overwrite: bool) -> Path:
    target = Path(out) if out else run / ("model.int8.onnx" if int8 else "model.onnx")
    if target.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {target}: the file name must end in .onnx")
    if target.exists() and not overwrite:
        raise RunError(f"{target}: already exists; pass --overwrite to replace it or --out to write elsewhere")
    return target


def _spaced(items: list[Any], limit: int | None) -> list[Any]:
    if limit is None or len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, int(limit)).round().astype(int)
    return [items[i] for i in idx]


def _data_pairs(data: str | Path, prefer: tuple[str, ...]) -> tuple[list[Pair], Any]:
    """(image, mask) pairs of the first split in ``prefer`` that a data set has, with its spec;
    a plain folder of images gives (image, None) pairs and no spec."""
    from ..data import find_pairs, load_dataset_spec
    from ..data.pairing import IMAGE_EXTS

    p = Path(data)
    plain = p.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir())
    if plain and not (p / "dataset.yaml").exists() and not (p / "masks").is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS and not q.name.startswith("."))
        return [(f, None) for f in files], None
    spec = load_dataset_spec(p)
    name = next((s for s in prefer if s in spec.splits), None)
    if name is None:
        raise DataError(f"{data}: none of the splits {', '.join(prefer)} (has: {', '.join(spec.splits)})")
    split = spec.splits[name]
    if split.masks is None:
        return _data_pairs(split.images, prefer)[0], None
    pairs, _ = find_pairs(split.images, split.masks)
    return sorted((Path(i), Path(m)) for i, m in pairs), spec


def _run_data(run: Path, flag: str) -> tuple[dict[str, Any], int]:
    """The ``data`` section and seed of the run's config.yaml."""
    import yaml

    cfg_path = run / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        data, seed = cfg["data"], int((cfg.get("train") or {}).get("seed", 0))
        if not data.get("root"):
            raise KeyError("root")
    except (OSError, KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        raise RunError(f"{cfg_path}: missing or without data.root, so the run's data is unknown; "
                       f"pass {flag} DATA") from None
    return data, seed


def _run_val_pairs(run: Path) -> tuple[list[Pair], Any]:
    """The run's own validation pairs, split as training split them (config.yaml)."""
    from ..data.split import split_train_val

    data, seed = _run_data(run, "--check")
    train, spec = _data_pairs(data["root"], ("train",))
    has_val = "val" in spec.splits and spec.splits["val"].masks is not None
    val = _data_pairs(data["root"], ("val",))[0] if has_val else None
    s = split_train_val(train, val, val_fraction=data.get("val_fraction", 0.2), seed=seed,
                        max_val_images=data.get("max_val_images"), source=str(data["root"]))
    return s.val, spec


def _require(data: str | Path | None, flag: str) -> None:
    if data is not None and not Path(data).exists():
        raise DataError(f"{data}: not found ({flag} takes a folder of images or a data set folder / dataset.yaml)")


def _check_pairs(run: Path, check: str | Path | None, limit: int | None) -> dict[str, Any]:
    _require(check, "--check")
    pairs, spec = _data_pairs(check, ("val", "test", "train")) if check else _run_val_pairs(run)
    if not pairs:
        raise DataError(f"{check or run}: no images to check the export on (pass --check DATA)")
    return {"pairs": _spaced(pairs, limit), "spec": spec, "source": str(check or f"{run} (val split)")}


def _calibration_images(run: Path, data: str | Path | None, limit: int) -> list[Path]:
    _require(data, "--calibration")
    if data is None:
        root = _run_data(run, "--calibration")[0]["root"]
        _log.info(f"INT8 calibration on the run's training images ({root}); --calibration DATA to choose")
        data = root
    pairs = _data_pairs(data, ("train", "val"))[0]
    if not pairs:
        raise DataError(f"{data}: no calibration images found")
    return [p[0] for p in _spaced(pairs, limit)]


# ----------------------------------------------------------------------------- phase: export
class _Exportable(torch.nn.Module):
    """The model with the run's never-predicted classes (``inference.suppress``) applied."""

    def __init__(self, model: torch.nn.Module, suppress: list[int]) -> None:
        super().__init__()
        self.model = model
        self.suppress = list(suppress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if self.suppress:
            keep = torch.ones(y.shape[1], dtype=torch.bool)
            keep[self.suppress] = False
            y = torch.where(keep.view(1, -1, 1, 1), y, torch.full_like(y, -1e30))
        return y


def _metadata(meta: dict[str, Any], run: Path, precision: str, float_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    from .. import __version__

    desc = meta.get("model", {})
    return {
        "segtune_format": METADATA_FORMAT,
        "classes": list(meta.get("classes") or []),
        "colors": meta.get("colors"),
        "ignore_index": int(meta.get("ignore_index", 255)),
        "normalization": {k: list(meta.get("normalization", {}).get(k, [0.5] * 3)) for k in ("mean", "std")},
        "pad_multiple": _PAD,
        "source_sha256": meta.get("sha256"),
        "source_run": run.resolve().name,
        "arch": desc.get("arch"),
        "encoder": desc.get("encoder"),
        "num_classes": desc.get("num_classes"),
        "precision": precision,
        "suppress": list((meta.get("inference") or {}).get("suppress", [])),
        "float_ops": list(float_ops),
        "segtune_version": __version__,
    }


def write_metadata(path: Path, props: dict[str, Any]) -> None:
    """Replace ``path``'s ``metadata_props`` with ``props`` (values JSON-encoded)."""
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    m.producer_name = "segtune"
    onnx.save(m, str(path))


def _export_fp32(model: torch.nn.Module, meta: dict[str, Any], path: Path, run: Path) -> None:
    """Float ONNX graph: input ``image`` (N,3,H,W), output ``logits`` (N,C,H,W); N, H, W dynamic."""
    net = _Exportable(model.eval(), (meta.get("inference") or {}).get("suppress", []))
    dyn = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": dyn, "logits": dyn})
    write_metadata(path, _metadata(meta, run, "fp32"))


# ----------------------------------------------------------------------------- phase: quantise
class _CalibrationReader:
    """onnxruntime calibration data: one preprocessed image at a time."""

    def __init__(self, seg: OnnxSegmenter, files: list[Path]) -> None:
        self.seg, self.files = seg, list(files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self.files:
            return None
        return {"image": self.seg.preprocess([read_rgb(self.files.pop(0))])}

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        pass


def _quantize(fp32: Path, out: Path, files: list[Path], float_ops: tuple[str, ...], meta: dict[str, Any],
              run: Path) -> None:
    """Static INT8 (QDQ; per-channel int8 weights, uint8 activations; MinMax ranges from ``files``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_name("pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception as e:  # the optimisation is optional
        _log.info(f"INT8: pre-processing skipped ({str(e).splitlines()[0][:120]})")
        shutil.copyfile(fp32, pre)
    ops = sorted({n.op_type for n in onnx.load(str(pre)).graph.node} - set(float_ops))
    _log.info(f"INT8: calibrating on {len(files)} image(s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(out), _CalibrationReader(OnnxSegmenter(fp32), files),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                        calibrate_method=CalibrationMethod.MinMax)
    write_metadata(out, _metadata(meta, run, "int8", float_ops))


# ----------------------------------------------------------------------------- phase: compare
@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _compare(model: torch.nn.Module, path: Path, check: dict[str, Any], meta: dict[str, Any], threads: int,
             precision: str, progress: bool) -> ExportReport:
    """Run PyTorch (eager, channels-last as ``segtune predict``) and onnxruntime on the same
    normalised, padded input of every check image; compare logits, argmax and mIoU."""
    from .._tensor import cpu_channels_last, suppress_classes
    from ..metrics import confusion_matrix, segmentation_metrics

    seg = OnnxSegmenter(path, threads=threads)
    suppress = list((meta.get("inference") or {}).get("suppress", []))
    c = int(meta["model"]["num_classes"])
    cm_t, cm_o = np.zeros((c, c), np.int64), np.zeros((c, c), np.int64)
    diff, agree, total, t_t, t_o = 0.0, 0, 0, [], []
    model = model.eval()
    cpu_channels_last(model, "cpu")
    ignore = check["spec"].ignore_index if check["spec"] is not None else 255
    with _torch_threads(threads), torch.inference_mode():
        warm = seg.preprocess([read_rgb(check["pairs"][0][0])])  # first calls are slow: not timed
        model(torch.from_numpy(warm).contiguous(memory_format=torch.channels_last))
        seg.session.run(None, {"image": warm})
        for img_path, mask_path in progress_iter(check["pairs"], f"checking {precision}", show=None if progress else False):
            image = read_rgb(img_path)
            h, w = image.shape[:2]
            x = seg.preprocess([image])
            t0 = time.perf_counter()
            xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            ref = suppress_classes(model(xt).float(), suppress)[..., :h, :w].numpy()
            t1 = time.perf_counter()
            got = seg.session.run(None, {"image": x})[0][..., :h, :w]
            t_o.append(time.perf_counter() - t1)
            t_t.append(t1 - t0)
            keep = np.ones(c, bool)
            keep[suppress] = False
            diff = max(diff, float(np.abs(got[:, keep] - ref[:, keep]).max()))
            a, b = ref[0].argmax(0), got[0].argmax(0)
            agree += int((a == b).sum())
            total += a.size
            if mask_path is not None:
                cm_t += _cm(a, mask_path, check["spec"], c, ignore, confusion_matrix)
                cm_o += _cm(b, mask_path, check["spec"], c, ignore, confusion_matrix)
    has_masks = any(m is not None for _, m in check["pairs"])
    names = list(meta.get("classes") or [])
    miou = (lambda cm: segmentation_metrics(cm, names)["miou"]) if has_masks else (lambda cm: None)
    return ExportReport(path, precision, len(check["pairs"]), diff, agree / max(total, 1), miou(cm_t), miou(cm_o),
                        1000 * float(np.median(t_t)), 1000 * float(np.median(t_o)))


def _cm(pred: np.ndarray, mask_path: Path, spec: Any, c: int, ignore: int, confusion_matrix: Any) -> np.ndarray:
    from ..data import read_mask

    mask = read_mask(mask_path, spec)
    if mask.shape != pred.shape:
        raise DataError(f"{mask_path}: mask size {mask.shape} differs from its image {pred.shape}")
    return confusion_matrix(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None], c, ignore).numpy()


def _compare_int8(model: torch.nn.Module, path: Path, check: dict[str, Any], meta: dict[str, Any], threads: int,
                  progress: bool, target: Path) -> ExportReport:
    try:
        return _compare(model, path, check, meta, threads, "int8", progress)
    except SegtuneError:
        raise
    except Exception as e:  # onnxruntime kernels that fail on a quantised graph
        first = str(e).split("Status Message:")[-1].strip().splitlines()[0][:160]
        raise SegtuneError(
            f"{target}: not written: onnxruntime cannot run the INT8 model of this architecture ({first}); "
            "export it in float (without --int8)"
        ) from None


# ----------------------------------------------------------------------------- phase: gates
def _gate_fp32(r: ExportReport, min_agreement: float, target: Path) -> None:
    if r.agreement < min_agreement:
        raise SegtuneError(
            f"{target}: not written: ONNX and PyTorch agree on only {100 * r.agreement:.3f}% of pixels "
            f"(need {100 * min_agreement:.2f}%; max |logit diff| {r.max_abs_diff:.3g}); report this model's "
            "arch/encoder as an export bug, or lower min_agreement if the difference is acceptable"
        )


def _gate_int8(r: ExportReport, max_drop: float | None, target: Path) -> None:
    change = r.miou_change
    if change is not None and max_drop is not None and -change > max_drop:
        raise SegtuneError(
            f"{target}: not written: INT8 loses {-change:.2f} mIoU points on the check images (limit "
            f"{max_drop:g}); calibrate on more representative images (--calibration DATA), keep more op "
            "types in float, or allow it with --max-miou-drop"
        )
    if change is None and max_drop is not None and r.agreement < 0.95:
        raise SegtuneError(
            f"{target}: not written: INT8 agrees with PyTorch on only {100 * r.agreement:.2f}% of pixels "
            "(need 95%); calibrate on more representative images or pass --check DATA with masks"
        )
