"""EssNet: step order, gradients, learning, checkpoints and resume (tiny phantoms)."""

from __future__ import annotations

import torch

from conftest import ReportLog, tiny_config
from liverlab.train.common import load_checkpoint
from liverlab.train.essnet import EssNet, ImagePool, build_optimizers, discriminator_step, generator_step, train_essnet


def _batch(n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ct = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    mri = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    mask = (torch.rand(n, size, size, generator=g) > 0.5).long()
    return ct, mask, mri


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_generator_step_leaves_discriminators_without_gradient(phantom_root):
    cfg = tiny_config(phantom_root).essnet
    net = EssNet(cfg)
    opt = build_optimizers(net, cfg)
    ct, mask, mri = _batch()
    losses, _, _ = generator_step(net, opt["g"], cfg, ct, mask, mri)
    assert not _has_grad(net.d_mri) and not _has_grad(net.d_ct)
    assert _has_grad(net.g_mri) and _has_grad(net.g_ct) and _has_grad(net.seg)
    assert losses["train/loss_seg"] > 0
    # The discriminators are trainable again for their own step, and only they change there.
    g_before = [p.clone() for p in net.g_mri.parameters()]
    fake_mri, fake_ct = net.g_mri(ct).detach(), net.g_ct(mri).detach()
    pools = {"mri": ImagePool(4), "ct": ImagePool(4)}
    discriminator_step(net, opt, pools, ct, mri, fake_mri, fake_ct)
    assert _has_grad(net.d_mri) and _has_grad(net.d_ct)
    assert all(torch.equal(a, b) for a, b in zip(g_before, net.g_mri.parameters()))


def test_cyclegan_arm_never_builds_or_runs_the_segmenter(phantom_root):
    cfg = tiny_config(phantom_root, synthesis="cyclegan").effective_essnet()
    assert cfg.lambda_seg == 0
    net = EssNet(cfg)
    assert net.seg is None  # S receives no gradient because it does not exist
    losses, _, _ = generator_step(net, build_optimizers(net, cfg)["g"], cfg, *_batch())
    assert losses["train/loss_seg"] == 0
    # With lambda_seg > 0 the same config builds S and gives it gradient (see above).
    assert EssNet(tiny_config(phantom_root).essnet).seg is not None


def test_zero_weights_switch_terms_off(phantom_root):
    cfg = tiny_config(phantom_root, **{"essnet.lambda_adv": 0.0, "essnet.lambda_idt": 0.0}).essnet
    net = EssNet(cfg)
    losses, _, _ = generator_step(net, build_optimizers(net, cfg)["g"], cfg, *_batch())
    assert losses["train/loss_adv"] == 0 and losses["train/loss_idt"] == 0
    assert losses["train/loss_cycle"] > 0


def test_image_pool_returns_history_and_keeps_size():
    pool = ImagePool(3, seed=0)
    seen = [pool.query(torch.full((1, 1, 2, 2), float(i))) for i in range(20)]
    assert len(pool.images) == 3
    # Once full, some queries return an older fake instead of the new one.
    assert any(float(out.mean()) != i for i, out in enumerate(seen[3:], start=3))
    assert torch.equal(ImagePool(0).query(seen[0]), seen[0])


def test_short_run_improves_ssim_against_true_mri(phantom_root, tmp_path):
    from liverlab.train.essnet_data import EssNetData
    from liverlab.train.essnet import validate_essnet

    config = tiny_config(phantom_root, **{
        "essnet.epochs": 1, "essnet.steps_per_epoch": 30, "essnet.lambda_idt": 0.5,
        "essnet.generator.ngf": 8, "essnet.generator.n_blocks": 2,
    })
    torch.manual_seed(config.seed)
    data = EssNetData(config)
    assert data.val_true_mri is not None, "phantom CT and MRI validation slices must pair up"
    before = validate_essnet(EssNet(config.essnet), data, torch.device("cpu"))["val/ssim"]
    log = ReportLog()
    metrics = train_essnet(config, log, None, tmp_path)
    assert metrics["val/ssim"] > before + 0.05, (before, metrics["val/ssim"])
    assert 0.0 <= metrics["val/shape_dice"] <= 1.0 and 0.0 <= metrics["val/seg_dice"] <= 1.0
    assert (tmp_path / "panels" / "essnet_epoch_001.png").stat().st_size > 0


def test_checkpoint_loads_weights_only_and_resume_continues(phantom_root, tmp_path):
    config = tiny_config(phantom_root, **{"essnet.epochs": 2, "essnet.steps_per_epoch": 2})
    log = ReportLog()
    train_essnet(config, log, None, tmp_path)
    assert [m["epoch"] for m in log.metrics] == [1, 2]
    state = load_checkpoint(log.checkpoints[-1])  # weights_only=True inside
    assert state["epoch"] == 2 and state["kind"] == "essnet"

    # Ask for 3 epochs in the same folder: only epoch 3 runs, from epoch 2's weights.
    longer = tiny_config(phantom_root, **{"essnet.epochs": 3, "essnet.steps_per_epoch": 2})
    resumed = ReportLog()
    train_essnet(longer, resumed, None, tmp_path)
    assert [m["epoch"] for m in resumed.metrics] == [3]


def test_learning_rate_is_constant_then_decays_linearly_per_epoch(phantom_root, tmp_path):
    """CycleGAN's schedule: lr for `epochs`, then 1 - k/(decay_epochs + 1) in the k-th decay epoch."""
    config = tiny_config(phantom_root, **{"essnet.epochs": 1, "essnet.decay_epochs": 2, "essnet.steps_per_epoch": 2,
                                          "essnet.reference_steps": 0})
    lrs: list[float] = []

    def report(metrics: dict, checkpoint: str | None = None) -> None:
        optim = load_checkpoint(checkpoint)["optim"]  # the rate of the epoch's last step, for all three optimisers
        lrs.append({o["param_groups"][0]["lr"] for o in optim.values()})

    train_essnet(config, report, None, tmp_path)
    lr = config.essnet.optim.lr
    assert lrs == [{lr}, {lr * (1 - 1 / 3)}, {lr * (1 - 2 / 3)}]


def test_every_arm_is_judged_by_the_same_judge(phantom_root, tmp_path):
    """val/shape_dice comes from a frozen real-MRI U-Net, so CycleGAN and EssNet compare."""
    from liverlab.train.judge import judge_key

    sets = {"essnet.epochs": 1, "essnet.steps_per_epoch": 2, "essnet.reference_steps": 10}
    cyclegan = train_essnet(tiny_config(phantom_root, synthesis="cyclegan", **sets), ReportLog(), None, tmp_path / "c")
    essnet = train_essnet(tiny_config(phantom_root, synthesis="essnet", **sets), ReportLog(), None, tmp_path / "e")
    assert 0.0 <= cyclegan["val/shape_dice"] <= 1.0 and "val/seg_dice" not in cyclegan
    assert 0.0 <= essnet["val/seg_dice"] <= 1.0 and "val/shape_dice" in essnet
    # The judge's own held-out IoU on real MRI is logged beside every shape_dice, the same in both arms.
    assert 0.0 <= cyclegan["val/judge_iou"] <= 1.0 and cyclegan["val/judge_iou"] == essnet["val/judge_iou"]
    key = judge_key(tiny_config(phantom_root, **sets))[:24]
    folder = phantom_root / "mri" / ".cache" / "reference_segmenter" / key  # its first name, kept on disk
    assert (folder / "judge.pt").is_file() and (folder / "judge.json").is_file()  # trained once, shared


def test_judge_is_the_unet_recipe_and_its_cache_follows_the_recipe(phantom_root):
    """The judge trains with train_unet's recipe; another recipe is another judge, the same one a cache hit."""
    from liverlab.train.judge import judge_config, judge_iterations, judge_key

    base = tiny_config(phantom_root, **{"essnet.reference_steps": None, "unet.iterations": 37, "unet.val_every": 50})
    assert judge_iterations(base) == 37
    cfg = judge_config(base.model_copy(update={"seed": 5}))
    assert cfg.seed == 0 and cfg.unet.iterations == 37 and cfg.unet.val_every == 37 and cfg.unet.mixing_ratio == 0
    assert judge_iterations(tiny_config(phantom_root, **{"essnet.reference_steps": 0})) == 0
    k = judge_key(base)
    assert judge_key(base.model_copy(update={"seed": 9})) == k  # the trial's seed is not the judge's
    assert judge_key(tiny_config(phantom_root, **{"essnet.reference_steps": None, "unet.iterations": 38})) != k
    other_aug = tiny_config(phantom_root, **{"essnet.reference_steps": None, "unet.iterations": 37, "unet.val_every": 50,
                                             "unet.augment.rotate_degrees": 3.0})
    assert judge_key(other_aug) != k
