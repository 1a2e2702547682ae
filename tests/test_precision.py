"""Precision: the auto rule over device capabilities, fp16 GradScaler plumbing, fp16 runs of both stages on CPU."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ReportLog, tiny_config
from liverlab.errors import LiverlabError
from liverlab.train import precision
from liverlab.train.common import load_checkpoint
from liverlab.train.essnet import EssNet, ImagePool, build_optimizers, essnet_train_step, train_essnet
from liverlab.train.unet import train_unet


@pytest.mark.parametrize(
    ("device", "capability", "bf16", "expected"),
    [
        ("cuda", (7, 5), False, "fp16"),  # Turing: RTX 2060 (the paper's GPU), T4
        ("cuda", (7, 0), False, "fp16"),  # Volta: V100
        ("cuda", (6, 0), False, "fp16"),  # P100: fast fp16, no tensor cores
        ("cuda", (6, 1), False, "fp32"),  # GTX 10xx: fp16 at 1/64 rate
        ("cuda", (8, 0), True, "bf16"),  # A100
        ("cuda", (8, 6), True, "bf16"),  # RTX 30xx
        ("cuda", (9, 0), True, "bf16"),  # H100
        ("cpu", None, True, "bf16"),  # AVX512-BF16 / AMX
        ("cpu", None, False, "fp32"),  # never fp16 on a CPU
        ("mps", None, False, "fp32"),
    ],
)
def test_auto_follows_the_device(device, capability, bf16, expected):
    assert precision.resolve_precision("auto", device, capability, bf16) == expected


@pytest.mark.parametrize("requested", ["fp32", "fp16"])
@pytest.mark.parametrize(("device", "capability", "bf16"), [("cuda", (7, 5), False), ("cuda", (9, 0), True), ("cpu", None, False)])
def test_explicit_choices_are_kept(requested, device, capability, bf16):
    assert precision.resolve_precision(requested, device, capability, bf16) == requested


def test_bf16_on_a_gpu_without_it_is_refused_with_the_way_out():
    with pytest.raises(LiverlabError, match=r"compute capability 7\.5.*precision: auto"):
        precision.resolve_precision("bf16", "cuda", (7, 5), False)
    assert precision.resolve_precision("bf16", "cpu", None, False) == "bf16"  # CPU emulates it (the old behaviour)
    with pytest.raises(LiverlabError, match="fp8"):
        precision.resolve_precision("fp8", "cpu", None, False)


def test_config_accepts_the_four_choices_and_names_a_wrong_one(phantom_root):
    for p in ("auto", "fp32", "bf16", "fp16"):
        assert tiny_config(phantom_root, precision=p).precision == p
    cfg = tiny_config(phantom_root)
    assert cfg.precision == "fp32" and cfg.cuda.tf32 and cfg.cuda.cudnn_benchmark
    with pytest.raises(LiverlabError, match="precision"):
        tiny_config(phantom_root, precision="fp8")


def test_auto_on_this_cpu_matches_its_bf16_support(phantom_root):
    amp = precision.prepare(tiny_config(phantom_root, precision="auto"), torch.device("cpu"))
    assert amp.precision == ("bf16" if precision.cpu_bf16_supported() else "fp32")
    assert amp.params()["resolved.precision"] == amp.precision


def test_scaler_is_enabled_for_fp16_only():
    cpu = torch.device("cpu")
    assert precision.grad_scaler(cpu, "fp16").is_enabled()
    assert not precision.grad_scaler(cpu, "bf16").is_enabled()
    assert not precision.grad_scaler(cpu, "fp32").is_enabled()


def test_fp16_scaler_skips_an_overflowed_step_and_lowers_the_scale():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = precision.grad_scaler(torch.device("cpu"), "fp16")
    x = torch.randn(2, 1, 8, 8)
    with precision.autocast(torch.device("cpu"), "fp16"):
        out = model(x)
    assert out.dtype == torch.float16
    scale = scaler.get_scale()
    # A loss of 1e30 times the scale gives gradients beyond fp16's range: the step must be skipped.
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(out.float().sum() * 1e30).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == scale / 2
    # A normal step goes through (unscaled gradients, so the update is the plain SGD one).
    opt.zero_grad()
    with precision.autocast(torch.device("cpu"), "fp16"):
        loss = model(x).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cuda_settings_switch_tf32_and_benchmark():
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        precision.configure_cuda(tf32=True, cudnn_benchmark=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
        precision.configure_cuda(tf32=False, cudnn_benchmark=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[1], saved[2]


def test_essnet_step_in_fp16_scales_each_optimiser_group(phantom_root):
    cfg = tiny_config(phantom_root).essnet
    torch.manual_seed(0)
    net = EssNet(cfg)
    opt = build_optimizers(net, cfg)
    pools = {"mri": ImagePool(4), "ct": ImagePool(4)}
    cpu = torch.device("cpu")
    scalers = {"g": precision.grad_scaler(cpu, "fp16"), "d": precision.grad_scaler(cpu, "fp16")}
    g = torch.Generator().manual_seed(0)
    ct, mri = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1, torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    mask = (torch.rand(2, 32, 32, generator=g) > 0.5).long()
    g_before = [p.detach().clone() for p in net.g_mri.parameters()]
    d_before = [p.detach().clone() for p in net.d_mri.parameters()]
    for _ in range(6):
        losses = essnet_train_step(net, opt, pools, cfg, ct, mask, mri, precision.autocast(cpu, "fp16"), scalers)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not all(torch.equal(a, b) for a, b in zip(g_before, net.g_mri.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, net.d_mri.parameters()))
    # G+S (loss ~13 with lambda_cycle 10) overflows fp16 at the initial scale 65536: its first steps are
    # skipped and its scale halves; the discriminators' own scaler is not dragged down with it, and it
    # was updated once per iteration (after stepping both D optimisers), not once per optimiser.
    assert scalers["g"].get_scale() < 65536.0
    assert scalers["d"].get_scale() == 65536.0 and scalers["d"]._get_growth_tracker() == 6


def _tracker(tmp_path):
    from liverlab.tracking.writer import open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return open_run(uri, "precision", run_name="fp16"), uri


def test_unet_trains_in_fp16_on_cpu_and_logs_the_resolved_precision(phantom_root, tmp_path):
    cfg = tiny_config(phantom_root, precision="fp16", **{"unet.iterations": 4, "unet.val_every": 2})
    tracker, uri = _tracker(tmp_path)
    log = ReportLog()
    final = train_unet(cfg, log, tracker, tmp_path / "run")
    tracker.finish("FINISHED")
    assert len(log.metrics) == 2 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in log.metrics)
    assert "test/iou" in final
    state = load_checkpoint(log.checkpoints[-1])
    assert state["scaler"]["scale"] > 0  # the fp16 scaler's state travels with the checkpoint
    params = MlflowClient(uri).get_run(tracker.run_id).data.params
    assert params["precision"] == "fp16" and params["resolved.precision"] == "fp16"
    assert params["resolved.device"] == "cpu"
    # Resume from that checkpoint: the scaler state loads back and training continues.
    more = tiny_config(phantom_root, precision="fp16", **{"unet.iterations": 6, "unet.val_every": 2})
    log2 = ReportLog()
    train_unet(more, log2, None, tmp_path / "run")
    assert [m["iteration"] for m in log2.metrics] == [6]


def test_essnet_trains_in_fp16_on_cpu(phantom_root, tmp_path):
    cfg = tiny_config(phantom_root, precision="fp16", **{"essnet.epochs": 1, "essnet.steps_per_epoch": 2,
                                                         "essnet.reference_steps": 0})
    log = ReportLog()
    metrics = train_essnet(cfg, log, None, tmp_path / "essnet")
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss_g", "train/loss_d_mri", "train/loss_d_ct"))
    state = load_checkpoint(log.checkpoints[-1])
    assert set(state["scalers"]) == {"g", "d"} and all(s["scale"] > 0 for s in state["scalers"].values())
