"""Data-layer throughput: phantom generation and the slice cache, cold vs warm.

Measures, in a temporary folder:

(a) phantom generation: 20 patients at 128 x 128 x 32, CT + MRI, written as
    NIfTI with manifests (the target is < 10 s on 2 cores);
(b) slice throughput through ``SegmentationSlices`` (what a training epoch
    reads), over every slice of the 20 MRI phantoms at size 128:
    * cold: ``load_slices`` builds the cache from NIfTI (decode, normalise,
      resize, write memmaps), then one pass over all items;
    * warm: ``load_slices`` finds the cache (a new process or trial would do
      the same) and one pass over all items reads the memmaps.

    python benchmarks/bench_data.py [--patients 20] [--size 128] [--slices 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def _pass(slice_set: object) -> int:
    """Iterate every item once, as a training epoch would (no augmentation)."""
    from liverlab.data.datasets import SegmentationSlices

    ds = SegmentationSlices(slice_set)  # type: ignore[arg-type]
    n = 0
    for i in range(len(ds)):
        item = ds[i]
        n += int(item["image"].shape[0])
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="warm passes (best is reported)")
    args = ap.parse_args()

    import torch

    from liverlab.data.cache import load_slices
    from liverlab.data.phantoms import generate_phantoms

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp) / "phantoms"
        t0, c0 = time.perf_counter(), time.process_time()
        generate_phantoms(root, patients=args.patients, size=args.size, slices=args.slices, seed=0, progress=False)
        gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
        shape = f"{args.size}x{args.size}x{args.slices}"
        rows.append(
            (
                f"phantoms: {args.patients} patients {shape} (CT+MRI, NIfTI, manifests)",
                f"{gen_s:.2f} s wall ({gen_cpu:.2f} s CPU)",
            )
        )

        kw = dict(size=args.size, empty_slice_fraction=1.0)
        t0 = time.perf_counter()
        cold = load_slices(root / "mri", "mri", **kw)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        n = _pass(cold)
        cold_s = time.perf_counter() - t0
        rows.append((f"cache build only ({n} slices from NIfTI)", f"{build_s:.2f} s = {n / build_s:,.0f} slices/s"))
        rows.append(
            ("cold: build + one pass through SegmentationSlices", f"{cold_s:.2f} s = {n / cold_s:,.0f} slices/s")
        )

        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            warm = load_slices(root / "mri", "mri", **kw)  # type: ignore[arg-type]
            assert warm.build_id == cold.build_id  # reused, not rebuilt
            _pass(warm)
            best = min(best, time.perf_counter() - t0)
        rows.append(
            ("warm: reuse memmap + one pass through SegmentationSlices", f"{best:.3f} s = {n / best:,.0f} slices/s")
        )
        rows.append(("warm / cold speed-up", f"{cold_s / best:.0f}x"))

    width = max(len(k) for k, _ in rows)
    cpu = platform.processor() or platform.machine()
    print(f"liverlab data benchmark  ({cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})")
    print(f"load average {os.getloadavg()[0]:.2f} (other processes share the CPUs when > 0)")
    print("-" * (width + 28))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
