"""COCO vs ImageNet starting weights on CamVid (torchvision DeepLabV3-ResNet50), when available.

For each condition the script first asks segtune for the weights exactly as a user would
(``create_model(..., weights=W)``, which reads the torch / Hugging Face caches and, unless
``SEGTUNE_OFFLINE=1``, tries the network with a 3 s connection timeout). It records where the
weights came from, or the one-line refusal and how long the refusal took (the "never hangs"
promise, measured). Only when **every** pretrained condition resolves does it train them all,
like for like: ``segtune.train`` on ``examples/camvid.yaml`` (the first ``--images`` training
images, ``--val`` val images, crop 352, batch 4), strategy ``discriminative`` (encoder at 0.1x
the head LR 1e-3), ``--steps`` optimiser steps, seeds ``--seeds``; the val mIoU is recorded. A
comparison with one side missing would not be like for like, so nothing is trained then.

Conditions: ``deeplabv3_resnet50`` with ``coco`` (torchvision ``COCO_WITH_VOC_LABELS_V1``,
class layer re-initialised), with ``imagenet`` (torchvision's ResNet-50 ``IMAGENET1K_V1``
backbone, the one its segmentation models are built on), and ``none`` (random init, the
baseline; trained only together with the others).

    python benchmarks/weight_sources.py                    # resolve + train when all weights are there
    python benchmarks/weight_sources.py --write-results    # also benchmarks/weight_sources.json + its RESULTS.md section
    python benchmarks/weight_sources.py --from-json benchmarks/weight_sources.json   # the section from the JSON alone
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402
from _common import REPO  # noqa: E402

CAMVID_YAML = REPO / "examples" / "camvid.yaml"
MARK_START, MARK_END = "<!-- weight_sources:start -->", "<!-- weight_sources:end -->"
ARCH = "deeplabv3_resnet50"
PRETRAINED = ("coco", "imagenet")
NUM_CLASSES = 11


def resolve(weights: str) -> dict[str, Any]:
    """Ask for ``weights`` as a user would; the source, or the refusal line and its latency."""
    from segtune.errors import WeightsError
    from segtune.models import create_model

    t = time.perf_counter()
    try:
        m = create_model(ARCH, num_classes=NUM_CLASSES, weights=weights)
        return {"weights": weights, "available": True, "source": m.weights_info,
                "seconds": round(time.perf_counter() - t, 2)}
    except WeightsError as e:
        return {"weights": weights, "available": False, "error": str(e),
                "seconds": round(time.perf_counter() - t, 2)}


def train_one(weights: str, seed: int, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    import segtune

    cfg = {
        "data": {"root": str(CAMVID_YAML), "max_train_images": a.images, "max_val_images": a.val,
                 "crop_size": 352, "batch_size": 4},
        "model": {"arch": ARCH, "weights": weights},
        "strategy": {"name": "discriminative" if weights != "none" else "scratch"},
        "optim": {"lr": 1e-3},
        "train": {"max_steps": a.steps, "epochs": 1000, "seed": seed, "out": str(out),
                  "name": f"{weights}-s{seed}", "progress": False, "early_stopping": 0, "memory": 0,
                  "num_overlays": 0},
    }
    t = time.perf_counter()
    run = segtune.train(cfg)
    return {"weights": weights, "seed": seed, "val_miou": run.metrics["miou"],
            "steps": run.summary["steps"], "seconds": round(time.perf_counter() - t, 1)}


def _section(res: dict[str, Any], json_path: str) -> str:
    lines = [
        "## Starting weights: COCO vs ImageNet (torchvision DeepLabV3-ResNet50, CamVid)",
        "",
        f"Command: `{res['command']}` ({res['date']}; {res['machine']}; "
        f"`SEGTUNE_OFFLINE={res['offline_env'] or 'unset'}`). Raw: `{json_path}`.",
        "",
        "| `--weights` | available | source or refusal | time to answer (s) |",
        "|---|---|---|---|",
    ]
    for r in res["resolved"]:
        what = r.get("source") or r.get("error", "")
        lines.append(f"| `{r['weights']}` | {'yes' if r['available'] else 'no'} | {what} | {r['seconds']} |")
    lines.append("")
    if not res["runs"]:
        lines += [
            "**Not measured.** The COCO-vs-ImageNet comparison on CamVid could not be run here: this",
            "machine is offline and neither checkpoint is in its torch or Hugging Face cache, so segtune",
            "refused both with the one-line errors above, without waiting on the network (the time",
            "column is the whole call, building the model included; the first one also imports the",
            "libraries). No training was done and no number is claimed. On a machine",
            "with the files in `$TORCH_HOME/hub/checkpoints/` (or with network access), run:",
            "",
            "```bash",
            "python benchmarks/weight_sources.py --steps 300 --images 96 --val 32 --seeds 0 1 2 --write-results",
            "```",
        ]
        return "\n".join(lines)
    lines += ["| `--weights` | seed | val mIoU | steps | seconds |", "|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| `{r['weights']}` | {r['seed']} | {r['val_miou']:.4f} | {r['steps']} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--from-json", metavar="JSON")
    a = ap.parse_args(argv)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        _common.write_section(_section(res, a.from_json), MARK_START, MARK_END)
        return res
    _common.src_on_path()
    import torch

    torch.set_num_threads(a.threads)
    resolved = [resolve(w) for w in PRETRAINED]
    for r in resolved:
        print(json.dumps(r), flush=True)
    runs: list[dict[str, Any]] = []
    if all(r["available"] for r in resolved):
        with tempfile.TemporaryDirectory() as tmp:
            for seed in a.seeds:
                for w in (*PRETRAINED, "none"):
                    runs.append(train_one(w, seed, a, Path(tmp)))
                    print(json.dumps(runs[-1]), flush=True)
    res = {
        "command": "python benchmarks/weight_sources.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": _common.machine(a.threads),
        "offline_env": os.environ.get("SEGTUNE_OFFLINE", ""),
        "resolved": resolved,
        "runs": runs,
    }
    if a.write_results:
        path = HERE / "weight_sources.json"
        path.write_text(json.dumps(res, indent=1) + "\n")
        _common.write_section(_section(res, "benchmarks/weight_sources.json"), MARK_START, MARK_END)
    return res


if __name__ == "__main__":
    main()
