"""The first GPU check: peaks, training steps against them, memory, loader, packing (<= 5 min on CUDA).

One run, on one GPU, writes a markdown report (``--output``, also printed):

* matmul peak in tf32, bf16 and fp16 (8192^3 on CUDA), the ceilings of the ratios below;
* U-Net (depth 4, base 32, batch 8) and EssNet (default sizes: 2 generators ngf 64 / 9 blocks,
  2 PatchGANs, S; batch 4) training steps at 256^2 in each precision (through
  ``liverlab.train.precision``: autocast + GradScaler for fp16), channels-last off/on, and
  ``torch.compile`` for the auto precision where time allows; each as a ratio to the same-dtype
  peak (FLOPs per step counted with ``FlopCounterMode``), with the GPU memory peak per step;
* the U-Net loader (``UNetData``, augmentation on) with and without ``pin_memory`` and workers,
  against what the fastest U-Net step consumes;
* packing: 4 U-Net trials one at a time, each alone on the GPU (``resources.gpu: 1``), then 4 at
  once at 0.25 each (``liverlab sweep`` on a local Ray restricted to one GPU), as trials per hour.

Targets: the EssNet step at 256^2 >= 35 % of bf16 peak; 4 packed trials >= 2.5x the trials per hour of 1.

    python benchmarks/bench_gpu.py                        # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --size 64 # the CPU-only parts (no compile, logical GPU packing)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_models import cpu_name, step_flops  # noqa: E402
from liverlab import verbosity  # noqa: E402
from liverlab.train import precision as P  # noqa: E402

ESSNET_TARGET, PACKING_TARGET = 0.35, 2.5


class Clock:
    """Wall-clock timing that waits for the GPU (CUDA kernels are asynchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def median_s(self, fn: Callable[[], Any], warmup: int, iters: int, best: bool = False) -> float:
        """Median (or with ``best``, minimum) seconds per call after ``warmup`` untimed calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return min(times) if best else statistics.median(times)


def matmul_peaks(device: torch.device, n: int, clock: Clock) -> dict[str, float]:
    """Best TFLOP/s of an n^3 matmul per dtype; fp32 runs as TF32 on CUDA (what fp32 training gets)."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        try:
            peaks[name] = 2 * n**3 / clock.median_s(lambda a=a, b=b: torch.mm(a, b), warmup=2, iters=10, best=True) / 1e12
        except RuntimeError:  # e.g. no bf16 GEMM on an older GPU
            peaks[name] = float("nan")
    return peaks


# ----------------------------------------------------------------------------- training steps


def unet_step(device: torch.device, size: int, prec: str, cl: bool) -> tuple[Callable[[], None], int]:
    from liverlab.losses import dice_ce_loss
    from liverlab.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", depth=4, base_features=32).to(device)
    x = torch.randn(8, 1, size, size, device=device)
    y = (torch.rand(8, size, size, device=device) > 0.7).long()
    if cl:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = P.grad_scaler(device, prec)
    state = {"model": model}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with P.autocast(device, prec):
            out = state["model"](x)
        scaler.scale(dice_ce_loss(out.float(), y)).backward()
        scaler.step(opt)
        scaler.update()

    step.state = state  # type: ignore[attr-defined]  # lets --compile swap in the compiled model
    return step, 8


def essnet_step(device: torch.device, size: int, prec: str, cl: bool) -> tuple[Callable[[], None], int]:
    from liverlab.config import EssNetConfig
    from liverlab.train.essnet import EssNet, ImagePool, build_optimizers, essnet_train_step

    torch.manual_seed(0)
    cfg = EssNetConfig()
    net = EssNet(cfg).to(device)
    n = cfg.batch_size
    ct, mri = (torch.rand(n, 1, size, size, device=device) * 2 - 1 for _ in range(2))
    mask = (torch.rand(n, size, size, device=device) > 0.7).long()
    if cl:
        net = net.to(memory_format=torch.channels_last)
        ct, mri = ct.contiguous(memory_format=torch.channels_last), mri.contiguous(memory_format=torch.channels_last)
    opt = build_optimizers(net, cfg)
    pools = {"mri": ImagePool(cfg.pool_size, 0), "ct": ImagePool(cfg.pool_size, 1)}
    scalers = {"g": P.grad_scaler(device, prec), "d": P.grad_scaler(device, prec)}

    def step() -> None:
        essnet_train_step(net, opt, pools, cfg, ct, mask, mri, P.autocast(device, prec), scalers)

    step.state = net  # type: ignore[attr-defined]
    return step, n


def compiled(step: Callable[[], None]) -> None:
    """torch.compile the networks behind ``step`` in place (U-Net: the model; EssNet: each of its nets)."""
    state = step.state  # type: ignore[attr-defined]
    if isinstance(state, dict):
        state["model"] = torch.compile(state["model"])
    else:
        for name in ("g_mri", "g_ct", "d_mri", "d_ct", "seg"):
            if getattr(state, name, None) is not None:
                setattr(state, name, torch.compile(getattr(state, name)))


def bench_row(make: Callable[..., Any], device: torch.device, size: int, prec: str, cl: bool, compile_: bool,
              flops: dict[str, float], clock: Clock, iters: int) -> dict[str, Any]:
    step, images = make(device, size, prec, cl)
    key = make.__name__
    if key not in flops:  # the same FLOPs in every precision and layout: count once, eagerly
        flops[key] = step_flops(step)
    if compile_:
        compiled(step)
    t0 = time.perf_counter()
    step()  # first step: cudnn.benchmark autotuning, compilation
    first_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s = clock.median_s(step, warmup=2 if clock.cuda else 0, iters=iters)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"model": key.replace("_step", ""), "precision": prec, "cl": cl, "compile": compile_, "step_s": s,
            "img_s": images / s, "tflops": flops[key] / s / 1e12, "gflop": flops[key] / 1e9, "mem_mib": mem,
            "first_s": first_s}


# ----------------------------------------------------------------------------- loader and packing


def experiment_raw(root: Path, size: int, iterations: int) -> dict[str, Any]:
    return {
        "name": "bench_gpu", "stage": "unet", "precision": "auto",
        "data": {"root": str(root), "size": size, "split": {"val": 0.2, "test": 0.0, "seed": 0}},
        "unet": {"model": {"depth": 4, "base_features": 32}, "batch_size": 8, "iterations": iterations,
                 "val_every": iterations},
    }


def loader_rates(root: Path, size: int, device: torch.device, batches: int) -> list[dict[str, Any]]:
    """img/s of the U-Net's training data (augmented) delivered onto ``device``."""
    from liverlab.config import config_from_dict
    from liverlab.train.unet import UNetData

    data = UNetData(config_from_dict(experiment_raw(root, size, 10)))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = [(0, False), (min(4, cpus), False)]
    if device.type == "cuda":
        settings += [(0, True), (min(4, cpus), True), (min(8, cpus), True)]
    rows = []
    for workers, pin in dict.fromkeys(settings):
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=8, shuffle=True, drop_last=True,
                                             num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
        it, n = iter(loader), 0
        next(it)  # worker start-up is not the steady rate
        t0 = time.perf_counter()
        for _ in range(batches):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            batch["image"].to(device, non_blocking=pin)
            n += len(batch["image"])
        Clock(device).sync()
        rows.append({"workers": workers, "pin": pin, "img_s": n / (time.perf_counter() - t0)})
    return rows


def packing(root: Path, size: int, iterations: int, device: torch.device, work: Path) -> list[dict[str, Any]]:
    """Trials per hour of 4 U-Net trials: one at a time with the whole GPU, then all 4 at once at 0.25 GPU each.

    Both runs hold 4 trials, so worker start-up (paid once per worker: ``reuse_actors``) weighs the same.
    """
    import ray
    import yaml
    from mlflow.tracking import MlflowClient

    from liverlab.sweep.devices import TEST_GPU_AS_CPU
    from liverlab.sweep.runner import SweepOptions, run_sweep

    if device.type != "cuda":  # Ray's logical GPU, trials on CPU: shows the plumbing, not GPU packing
        os.environ[TEST_GPU_AS_CPU] = "1"
    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level=verbosity.ray_logging_level())
    (work / "base.yaml").write_text(yaml.safe_dump(experiment_raw(root, size, iterations)))
    rows = []
    try:
        for at_once, gpu in ((1, 1.0), (4, 0.25)):
            name = f"pack{at_once}"
            space = {"name": name, "base": "base.yaml", "seeds": [0, 1, 2, 3], "scheduler": {"type": "none"},
                     "budget": {"max_concurrent": at_once, "max_failures": 0},
                     "resources": {"cpu": max(cpus // 4, 1) if cpus >= 4 else cpus / 4, "gpu": gpu}}
            (work / f"{name}.yaml").write_text(yaml.safe_dump(space))
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the sweep's own summary table
                run_sweep(SweepOptions(space=str(work / f"{name}.yaml"), storage=str(work / "sweeps"), live=False,
                                       report=False))
            wall = time.perf_counter() - t0
            client = MlflowClient(f"sqlite:///{work / 'sweeps' / name / 'mlflow.db'}")
            experiment = client.get_experiment_by_name(name)
            runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
            span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
            rows.append({"at_once": at_once, "gpu": gpu, "span_s": span, "per_hour": 3600 * len(runs) / span, "wall_s": wall,
                         "device": runs[0].data.tags.get("liverlab.device", "?")})
    finally:
        ray.shutdown()
    return rows


# ----------------------------------------------------------------------------- report


def _mib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"  # NaN: no GPU


def report(info: dict[str, Any], peaks: dict[str, float], rows: list[dict[str, Any]], loader: list[dict[str, Any]],
           packed: list[dict[str, Any]], notes: list[str]) -> str:
    peak_name = {"fp32": "tf32" if info["cuda"] else "fp32", "bf16": "bf16", "fp16": "fp16"}
    out = [f"Device: **{info['device']}**; torch {torch.__version__}; `precision: auto` resolves to "
           f"**{info['auto']}** here. Size {info['size']}^2. {info['elapsed']:.0f} s.", "",
           "| matmul | " + " | ".join(peak_name[k] for k in peaks) + " |", "|---|" + "---:|" * len(peaks),
           f"| peak TFLOP/s ({info['n']}^3) | " + " | ".join(f"{v:.2f}" for v in peaks.values()) + " |", "",
           "| model | precision | layout | compile | GFLOP/step | step ms | img/s | TFLOP/s | / same-dtype peak "
           "| GPU memory peak MiB | first step s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {peak_name[r['precision']]} | {'channels_last' if r['cl'] else 'NCHW'} | "
                   f"{'on' if r['compile'] else 'off'} | {r['gflop']:.0f} | {1000 * r['step_s']:.1f} | {r['img_s']:.1f} "
                   f"| {r['tflops']:.2f} | {r['tflops'] / peaks[r['precision']]:.0%} | "
                   f"{_mib(r['mem_mib'])} | {r['first_s']:.1f} |")
    ess = [r["tflops"] / peaks["bf16"] for r in rows if r["model"] == "essnet" and r["precision"] == "bf16"]
    if ess:
        out += ["", f"EssNet step, best bf16 row: **{max(ess):.0%} of bf16 peak** (target >= {ESSNET_TARGET:.0%}: "
                    f"{'met' if max(ess) >= ESSNET_TARGET else 'NOT met'})."]
    else:
        fp16 = [r["tflops"] / peaks["fp16"] for r in rows if r["model"] == "essnet" and r["precision"] == "fp16"]
        out += ["", "No bf16 rows on this device (the EssNet target is stated for bf16)"
                + (f"; best fp16 EssNet row: {max(fp16):.0%} of fp16 peak." if fp16 else ".")]
    if loader:
        best = max((r["img_s"] for r in rows if r["model"] == "unet"), default=float("nan"))
        out += ["", f"| U-Net loader (augmented, batch 8) | img/s | vs fastest U-Net step ({best:.0f} img/s) |",
                "|---|---:|---:|"]
        out += [f"| workers {r['workers']}, pin_memory {'on' if r['pin'] else 'off'} | {r['img_s']:.0f} | "
                f"{r['img_s'] / best:.2f}x |" for r in loader]
    if packed:
        out += ["", "| packing: 4 U-Net trials via `liverlab sweep` | trials span s | trials/hour | speed-up | command s |",
                "|---|---:|---:|---:|---:|"]
        for r in packed:
            how = "one at a time, 1 GPU each" if r["at_once"] == 1 else f"{r['at_once']} at once, {r['gpu']:g} GPU each"
            out.append(f"| {how} (trials on {r['device']}) | {r['span_s']:.1f} | "
                       f"{r['per_hour']:.0f} | {r['per_hour'] / packed[0]['per_hour']:.2f}x | {r['wall_s']:.1f} |")
        if len(packed) == 2:
            x = packed[1]["per_hour"] / packed[0]["per_hour"]
            out += ["", f"Packing: **{x:.2f}x** the trials per hour of one at a time (target >= {PACKING_TARGET}x: "
                        f"{'met' if x >= PACKING_TARGET else 'NOT met'})."]
    return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--size", type=int, help="image size (default 256 on CUDA, 64 on CPU)")
    ap.add_argument("--iters", type=int, help="timed steps per row (default 10 on CUDA, 2 on CPU)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="compile rows (last) start only before this")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-packing", action="store_true")
    ap.add_argument("--pack-iterations", type=int, help="U-Net iterations per packing trial (default 500 CUDA, 10 CPU)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs on a shared machine: 1)")
    ap.add_argument("--output", type=Path, default=Path("bench_gpu.md"))
    args = ap.parse_args(argv)
    verbosity.configure(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    size, iters = args.size or (256 if cuda else 64), args.iters or (10 if cuda else 2)
    notes: list[str] = []
    if cuda:
        P.configure_cuda(tf32=True, cudnn_benchmark=True)  # liverlab's defaults (config `cuda:`)
        cap = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]})"
    else:
        name, cap = f"CPU: {cpu_name()}, torch threads: {torch.get_num_threads()}", None
        notes.append("CPU run: no tf32 (fp32 rows are plain fp32), no fp16 step rows (CPU fp16 kernels are "
                     "slower than fp32; tests/test_precision.py runs both stages in fp16), no GPU memory figures, "
                     "no torch.compile, loader without pin_memory, packing on Ray's logical GPU with the trials "
                     "on CPU (LIVERLAB_TEST_GPU_AS_CPU): this shows that the script works, not GPU figures.")
    auto = P.device_precision("auto", device)
    clock = Clock(device)
    n = 8192 if cuda else 1024
    peaks = matmul_peaks(device, n, clock)
    print(f"{name}: matmul peaks " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()) + " TFLOP/s", flush=True)
    precs = [p for p in ("fp32", "bf16", "fp16") if (p != "fp16" or cuda) and not (cuda and p == "bf16" and cap < (8, 0))]
    flops: dict[str, float] = {}
    rows = []
    for make in (unet_step, essnet_step):
        for prec in precs:
            for cl in (False, True):
                rows.append(bench_row(make, device, size, prec, cl, False, flops, clock, iters))
                r = rows[-1]
                print(f"{r['model']:7s} {prec} {'CL  ' if cl else 'NCHW'} {r['img_s']:8.1f} img/s "
                      f"{r['tflops']:.3f} TFLOP/s ({r['tflops'] / peaks[prec]:.0%} of peak)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        from liverlab.data.phantoms import generate_phantoms

        root = generate_phantoms(Path(tmp) / "phantoms", patients=6, size=size, slices=16, seed=0, progress=False)
        loader = loader_rates(root, size, device, batches=50 if cuda else 10)
        if cuda:
            torch.cuda.empty_cache()  # the trials below share this GPU with this process
        print("loader: " + ", ".join(f"w{r['workers']} pin {r['pin']}: {r['img_s']:.0f} img/s" for r in loader), flush=True)
        packed = [] if args.no_packing else packing(root, size, args.pack_iterations or (500 if cuda else 10), device, Path(tmp))
        for r in packed:
            print(f"packing {r['at_once']} at once x {r['gpu']:g} GPU: {r['per_hour']:.0f} trials/hour", flush=True)
    if args.no_compile or not cuda:
        notes.append("torch.compile rows skipped" + ("" if cuda else " on CPU"))
    else:
        for make in (unet_step, essnet_step):
            for cl in (False, True):
                if time.perf_counter() - t_start > args.budget_s:
                    notes.append(f"compile row {make.__name__} {auto} cl={cl} skipped: --budget-s {args.budget_s:g} spent")
                    continue
                try:
                    rows.append(bench_row(make, device, size, auto, cl, True, flops, clock, iters))
                except Exception as exc:  # noqa: BLE001 - "where it works": a failed compile is a finding
                    notes.append(f"torch.compile failed for {make.__name__} ({auto}, cl={cl}): {type(exc).__name__}: {exc}")
    info = {"device": name, "auto": auto, "size": size, "n": n, "cuda": cuda, "elapsed": time.perf_counter() - t_start}
    text = report(info, peaks, rows, loader, packed, notes)
    args.output.write_text(text)
    print("\n" + text + f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
