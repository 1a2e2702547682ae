"""What a pipeline study costs: FLOPs per training step of every stage, steps, total, and time.

For a search space (default ``search_spaces/chaos_study.yaml``) this counts,
without touching any data:

* the distinct translators its trials need (one per ``pipeline.essnet_key``:
  trials that differ only in ``data.train_patients``, or in the seed when
  ``essnet.seed`` is fixed, share one), the judge (once), and the U-Net trials;
* the FLOPs of **one training step** of each, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` around the real step functions
  (``liverlab.train.essnet.essnet_train_step``; for the U-Net AdamW + forward
  + Dice/CE + backward, as ``train_unet`` does), convolutions and matmuls only;
* the steps each runs (translator: ``(epochs + decay_epochs) x
  steps_per_epoch``, which must be set; judge: ``essnet.reference_steps`` or
  ``unet.iterations``; U-Net: ``unet.iterations``) and the total.

``--time N`` also times N steps of each on this machine (median wall and
process CPU seconds per step, after one warm-up step, with ``--threads``
torch threads): CPU-s per step at one thread is what a 1-CPU trial costs on
an idle core even when the machine is shared. ``--tflops R`` turns the total
FLOPs into device-hours at a sustained R TFLOP/s (GPU estimates).

    python benchmarks/bench_study_cost.py [--space S] [--set KEY=VALUE ...] [--time 5 --threads 1] [--tflops 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from liverlab.config import ExperimentConfig  # noqa: E402
from liverlab.sweep.space import load_space  # noqa: E402


def step_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call of ``step`` (forward and backward passes), as FlopCounterMode counts them."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def essnet_step(config: ExperimentConfig, device: torch.device) -> Callable[[], Any]:
    """One EssNet / CycleGAN training step (all five networks, both phases) on random slices."""
    from liverlab.train import common
    from liverlab.train.essnet import (
        EssNet,
        ImagePool,
        build_optimizers,
        essnet_train_step,
    )

    cfg = config.effective_essnet()
    torch.manual_seed(0)
    net = EssNet(cfg).to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizers(net, cfg)
    pools = {"mri": ImagePool(cfg.pool_size, 0), "ct": ImagePool(cfg.pool_size, 1)}
    b, s = cfg.batch_size, config.data.size
    ct, mri = (torch.rand(b, 1, s, s, device=device) * 2 - 1 for _ in range(2))
    mask = (torch.rand(b, s, s, device=device) > 0.7).long()
    amp = common.autocast(device, config.precision)
    return lambda: essnet_train_step(net, opt, pools, cfg, ct, mask, mri, amp)


def unet_step(config: ExperimentConfig, device: torch.device) -> Callable[[], Any]:
    """One U-Net training step as ``train_unet`` takes it (no data loading or augmentation)."""
    from liverlab.losses import dice_ce_loss
    from liverlab.train import common
    from liverlab.train.unet import build_unet, make_optimizer

    u = config.unet
    torch.manual_seed(0)
    model = build_unet(config).to(device)
    x = torch.randn(u.batch_size, 2 * u.model.context_slices + 1, config.data.size, config.data.size, device=device)
    if config.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(u.batch_size, config.data.size, config.data.size, device=device) > 0.7).long()
    opt = make_optimizer(model, u)
    amp = common.autocast(device, config.precision)

    def step() -> None:
        with amp:
            logits = model(x)
        loss = dice_ce_loss(logits.float(), y, dice_weight=u.dice_weight, ce_weight=u.ce_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step: Callable[[], Any], n: int, device: torch.device) -> dict[str, float]:
    """Median wall and process-CPU seconds per step over ``n`` steps, after one warm-up step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        step()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def translator_steps(config: ExperimentConfig) -> int:
    e = config.effective_essnet()
    if e.steps_per_epoch is None:
        raise SystemExit("essnet.steps_per_epoch is null: set it (the default depends on the data) to count steps")
    return (e.epochs + e.decay_epochs) * e.steps_per_epoch


def _translator_label(cfg: ExperimentConfig) -> str:
    seed = cfg.essnet.seed if cfg.essnet.seed is not None else cfg.seed
    up = cfg.essnet.generator.upsample
    return f"translator ({cfg.synthesis}, seed {seed}{'' if up == 'transpose' else f', upsample {up}'})"


def plan(space_path: str, extra_set: list[str]) -> list[dict[str, Any]]:
    """The study's work items: one row per translator trained, the judge, and the U-Net trials.

    Pipeline trials share a translator per ``essnet_key`` (the cache); essnet-stage trials each train one.
    """
    from liverlab.train.pipeline import essnet_key
    from liverlab.train.judge import judge_config, judge_iterations

    space = load_space(space_path, extra_set)
    trials = [space.config(arm, seed) for arm, seed, _ in space.trials()]
    translators: dict[str, ExperimentConfig] = {}
    for i, cfg in enumerate(trials):
        if cfg.stage == "essnet":
            translators[f"trial{i}"] = cfg
        elif cfg.stage == "pipeline" and cfg.synthesis in ("essnet", "cyclegan"):
            translators.setdefault(essnet_key(cfg), cfg)
    rows: list[dict[str, Any]] = [
        {"what": _translator_label(cfg), "kind": "essnet", "config": cfg, "count": 1, "steps": translator_steps(cfg)}
        for cfg in sorted(translators.values(), key=_translator_label)
    ]
    if translators:
        first = next(iter(translators.values()))
        if judge_iterations(first) > 0:
            rows.append({"what": "judge (real-only U-Net, seed 0)", "kind": "unet", "config": judge_config(first),
                         "count": 1, "steps": judge_iterations(first)})
    unets = [c for c in trials if c.stage in ("pipeline", "unet")]
    if unets:
        if len({c.unet.iterations for c in unets}) != 1:
            raise SystemExit("U-Net trials differ in unet.iterations: this counter assumes one budget for every arm")
        rows.append({"what": f"U-Net trials ({len(space.arms())} arms x {len(space.space.seeds)} seeds)", "kind": "unet",
                     "config": unets[0], "count": len(unets), "steps": unets[0].unet.iterations})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "chaos_study.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `liverlab sweep --set`")
    ap.add_argument("--time", type=int, default=0, metavar="N", help="time N steps of each stage (0: FLOPs only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --time (default 1: one trial per core)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tflops", type=float, help="sustained TFLOP/s to turn total FLOPs into device-hours")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = plan(args.space, args.set)
    total = 0.0
    print("| stage | count | GFLOP / step | steps each | PFLOP total | wall s / step | CPU s / step | CPU-h total |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    cpu_h = 0.0
    for r in rows:
        cfg = r["config"].model_copy(update={"device": args.device})
        step = essnet_step(cfg, device) if r["kind"] == "essnet" else unet_step(cfg, device)
        flops = step_flops(step)
        pflop = flops * r["steps"] * r["count"] / 1e15
        total += pflop
        t = time_steps(step, args.time, device) if args.time else None
        ch = t["cpu_s"] * r["steps"] * r["count"] / 3600 if t else 0.0
        cpu_h += ch
        timing = f"{t['wall_s']:.3f} | {t['cpu_s']:.3f} | {ch:.2f}" if t else "- | - | -"
        print(f"| {r['what']} | {r['count']} | {flops / 1e9:.1f} | {r['steps']} | {pflop:.3f} | {timing} |", flush=True)
    print(f"\ntotal: {total:.3f} PFLOP of training steps (convolutions and matmuls)")
    if args.time:
        print(f"training steps alone: {cpu_h:.2f} CPU-h at {args.threads} thread(s); on 2 such cores at least "
              f"{cpu_h / 2:.2f} h of wall time, more along the critical path (docs/chaos.md), plus loading, "
              "augmentation, evaluation and trial overheads")
    if args.tflops:
        print(f"at a sustained {args.tflops:g} TFLOP/s: {total * 1e15 / (args.tflops * 1e12) / 3600:.2f} device-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
