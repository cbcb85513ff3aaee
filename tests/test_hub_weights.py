"""Pretrained weights from the torch / Hugging Face caches (segtune.hub), never the network.

Every test points TORCH_HOME and HF_HOME at a temporary folder and sets SEGTUNE_OFFLINE=1,
then places synthetic checkpoints (random tensors with the real key layout) where a download
would have put them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segtune.errors import WeightsError
from segtune.hub import hf_hub_cache, offline_reason, torch_hub_dir
from segtune.models import create_model


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SEGTUNE_OFFLINE", "1")
    return tmp_path


def _hf_place(repo: str, state: dict[str, torch.Tensor], rev: str = "0123abc") -> Path:
    root = hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    f = root / "snapshots" / rev / "model.safetensors"
    f.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(f))
    return f


def _random_state(module: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in module.state_dict().items()}


def test_caches_follow_the_environment(caches: Path) -> None:
    assert torch_hub_dir() == caches / "torch" / "hub" / "checkpoints"
    assert hf_hub_cache() == caches / "hf" / "hub"


def test_offline_switches_answer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGTUNE_OFFLINE", "1")
    t = time.perf_counter()
    assert offline_reason("example.invalid") == "SEGTUNE_OFFLINE=1"
    monkeypatch.delenv("SEGTUNE_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_reason("example.invalid") == "HF_HUB_OFFLINE=1"
    assert time.perf_counter() - t < 0.5


@pytest.mark.parametrize("where", ["hf", "torch"])
def test_timm_encoder_imagenet_from_cache(caches: Path, where: str, capsys) -> None:
    import timm

    full = timm.create_model("resnet18", pretrained=False)
    state = _random_state(full)
    if where == "hf":
        _hf_place("timm/resnet18.a1_in1k", state)
    else:
        torch_hub_dir().mkdir(parents=True)
        torch.save(state, torch_hub_dir() / "resnet18_a1_0-d63eafa0.pth")
    m = create_model("unet", "resnet18", num_classes=3, weights="imagenet")
    enc = m.encoder.model
    assert torch.equal(enc.conv1.weight, state["conv1.weight"])
    assert torch.equal(enc.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(enc.layer2[0].bn1.running_var, state["layer2.0.bn1.running_var"])
    assert "timm resnet18.a1_in1k" in m.weights_info and "encoder" in m.weights_info
    assert "tensors into the resnet18 encoder (unused: fc)" in capsys.readouterr().err


def test_timm_file_missing_a_tensor_is_refused(caches: Path) -> None:
    import timm

    state = _random_state(timm.create_model("resnet18", pretrained=False))
    del state["layer3.0.conv1.weight"]
    _hf_place("timm/resnet18.a1_in1k", state)
    with pytest.raises(WeightsError, match=r"model.safetensors: does not fit timm resnet18"):
        create_model("unet", "resnet18", num_classes=3, weights="imagenet")


def test_smp_vgg16_encoder_imagenet_from_hf_cache(caches: Path) -> None:
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    state = _random_state(get_encoder("vgg16", weights=None))
    rev = encoders["vgg16"]["pretrained_settings"]["imagenet"]["revision"]
    _hf_place("smp-hub/vgg16.imagenet", state, rev=rev)
    m = create_model("unet", "smp-vgg16", num_classes=3, weights="imagenet")
    assert m.encoder_name == "smp-vgg16"
    for k in ("features.0.weight", "features.28.bias"):
        assert torch.equal(m.encoder.state_dict()[k], state[k])
    assert len(m.encoder_stages()) == 5  # strides 1, 2, 4, 8, 16 (the last max-pool joins 16)
    assert m.describe()["encoder"] == "smp-vgg16"  # what model.yaml records, to rebuild it


def test_missing_weights_give_one_line_naming_file_and_place(caches: Path) -> None:
    with pytest.raises(WeightsError) as e:
        create_model("unet", "resnet18", num_classes=3, weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "SEGTUNE_OFFLINE=1" in msg
    assert "resnet18_a1_0-d63eafa0.pth" in msg and str(torch_hub_dir()) in msg
    with pytest.raises(WeightsError) as e:
        create_model("unet", "smp-resnet50", num_classes=3, weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "smp-hub/resnet50.imagenet" in msg and str(hf_hub_cache()) in msg
    with pytest.raises(WeightsError, match=r"deeplabv3_resnet50_coco-cd0a2569\.pth.*put it in"):
        create_model("deeplabv3_resnet50", num_classes=3, weights="coco")
    with pytest.raises(WeightsError, match="no coco weights for unet"):
        create_model("unet", "resnet18", num_classes=3, weights="coco")


def test_torchvision_coco_lraspp_replaces_class_layer(caches: Path, capsys) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    tv = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    state = _random_state(tv)
    torch_hub_dir().mkdir(parents=True)
    torch.save(state, torch_hub_dir() / "lraspp_mobilenet_v3_large-d234d4ea.pth")
    m = create_model("lraspp_mobilenet_v3_large", num_classes=3, weights="coco")
    sd = m.state_dict()
    assert torch.equal(sd["net.backbone.4.block.0.0.weight"], state["backbone.4.block.0.0.weight"])
    assert torch.equal(sd["net.classifier.cbr.0.weight"], state["classifier.cbr.0.weight"])
    assert sd["net.classifier.high_classifier.weight"].shape[0] == 3
    err = capsys.readouterr().err
    assert "class layer classifier.high_classifier, classifier.low_classifier (21 classes in the file)" in err
    assert "re-initialised for 3 classes" in err and "backbone" in err


def test_torchvision_coco_deeplabv3_file_with_aux_head(caches: Path, capsys) -> None:
    """The downloaded file passed by path loads the same way; the aux head is reported unused."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    state = _random_state(tv)
    f = caches / "deeplabv3_resnet50_coco-cd0a2569.pth"
    torch.save(state, f)
    m = create_model("deeplabv3_resnet50", num_classes=5, weights=str(f))
    sd = m.state_dict()
    assert torch.equal(sd["net.backbone.layer3.2.conv2.weight"], state["backbone.layer3.2.conv2.weight"])
    assert torch.equal(sd["net.classifier.0.project.0.weight"], state["classifier.0.project.0.weight"])
    assert sd["net.classifier.4.weight"].shape == (5, 256, 1, 1)
    n_aux = sum(k.startswith("aux_classifier.") for k in state)
    assert n_aux and f"unused: {n_aux} tensors (aux_classifier {n_aux})" in capsys.readouterr().err


def test_torchvision_imagenet_backbone_from_torch_cache(caches: Path) -> None:
    from torchvision.models import mobilenet_v3_large

    state = _random_state(mobilenet_v3_large(weights=None))
    torch_hub_dir().mkdir(parents=True)
    torch.save(state, torch_hub_dir() / "mobilenet_v3_large-8738ca79.pth")
    m = create_model("lraspp_mobilenet_v3_large", num_classes=3, weights="imagenet")
    assert torch.equal(m.state_dict()["net.backbone.16.0.weight"], state["features.16.0.weight"])


def test_weight_sources_benchmark_section_matches_its_json() -> None:
    """The committed RESULTS.md section is what the committed JSON renders to; nothing trained
    when a pretrained source was refused (the comparison would not be like for like)."""
    import json

    from conftest import BENCH, load_benchmark

    bench = load_benchmark("weight_sources")
    res = json.loads((BENCH / "weight_sources.json").read_text())
    section = bench._section(res, "benchmarks/weight_sources.json")
    results = (BENCH / "RESULTS.md").read_text()
    assert section in results
    if not all(r["available"] for r in res["resolved"]):
        assert res["runs"] == [] and "**Not measured.**" in section
        assert all(r["error"].startswith("model.weights=") and "\n" not in r["error"] for r in res["resolved"])


def test_cli_missing_weights_exit_2_one_line_no_run_folder(caches: Path, squares: Path, capsys) -> None:
    from segtune.cli import main

    out = caches / "runs"
    rc = main(["train", str(squares), "--encoder", "resnet18", "--weights", "imagenet", "--out", str(out),
               "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: model.weights=imagenet: timm resnet18.a1_in1k weights: not in the local caches")
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_timm_checkpoint_file_with_renamed_features_loads_through_timm(caches: Path, capsys) -> None:
    """DenseNet's ``features.conv0`` is ``features_conv0`` in the encoder: a downloaded timm
    checkpoint passed by path still loads (through timm), all tensors checked."""
    import timm

    state = _random_state(timm.create_model("densenet121", pretrained=False))
    f = caches / "densenet121.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(f))
    m = create_model("unet", "densenet121", num_classes=3, weights=str(f))
    assert "(unused: classifier)" in capsys.readouterr().err
    enc = m.encoder.state_dict()
    assert torch.equal(enc["model.features_conv0.weight"], state["features.conv0.weight"])
    assert torch.equal(enc["model.features_denseblock4.denselayer16.conv2.weight"],
                       state["features.denseblock4.denselayer16.conv2.weight"])
    wrong = caches / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _random_state(timm.create_model("resnet18")).items()}, str(wrong))
    with pytest.raises(WeightsError, match="only 0 of .* encoder tensors found by name"):
        create_model("unet", "densenet121", num_classes=3, weights=str(wrong))


@pytest.mark.parametrize("arch, encoder", [("unet", "smp-vgg11"), ("deeplabv3", "smp-resnet18")])
def test_smp_native_encoder_stages_partition_every_parameter(arch: str, encoder: str) -> None:
    """The probed stages hold every encoder parameter once, each stage some; a dilated encoder
    (DeepLabV3) gets the same 5 stages as an undilated one."""
    from segtune.strategies import partition

    m = create_model(arch, encoder, num_classes=3, weights="none")
    *stages, head = partition(m)
    assert len(stages) == 5 and all(u.params for u in stages) and head.params
    seen = [id(p) for u in (*stages, head) for _, p in u.params]
    assert len(seen) == len(set(seen)) and set(seen) == {id(p) for p in m.parameters()}
    assert {id(p) for u in stages for _, p in u.params} == {id(p) for p in m.encoder.parameters()}
