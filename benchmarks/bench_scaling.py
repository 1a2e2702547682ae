"""Benchmark: sweep throughput (trials per hour) on 1 node against 2 nodes.

The same fixed-work sweep runs twice through the real command line, against a
Ray cluster started the way docs/cluster.md starts one: ``ray start --head``
with token authentication (an isolated ``HOME`` holds the token), then
``liverlab sweep SPACE --address ...`` as the driver. First with the head
alone (1 CPU), then after ``ray start --address`` added a worker node (also
1 CPU); ``liverlab doctor`` confirms the second node before the second sweep.
Both nodes live on this machine (2 cores), so "node" here means one CPU.

Workload: U-Net stage, one arm, ``--trials`` seeds (one trial each), fixed
epochs (patience = epochs, no ASHA), 1 CPU per trial. Measured: the wall time
of the whole ``liverlab sweep`` command (start-up, preflight, MLflow and
checkpoints included, identical in both runs); trials per hour = trials /
wall time. A warm-up sweep first builds the phantoms and slice cache. As a
control, the same kind of work without Ray (two plain 1-thread U-Net
processes against one) gives the machine's own ceiling for two 1-CPU nodes.

    python benchmarks/bench_scaling.py [--trials 8] [--epochs 6] [--steps 80]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def write_space(root: Path, name: str, trials: int, epochs: int, steps: int) -> Path:
    base = yaml.safe_load((REPO / "experiments" / "tiny.yaml").read_text())
    base["data"]["root"] = str(root / "phantoms")
    base["data"]["phantom"] = {"patients": 6, "size": 64, "slices": 8, "seed": 0}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    space = {
        "name": name, "base": "base.yaml", "stage": "unet", "seeds": list(range(trials)),
        "set": {"data.size": 64, "unet.model.base_features": 8, "unet.batch_size": 8,
                "unet.iterations": steps * epochs, "unet.val_every": steps},
        "objective": {"metric": "val/iou", "mode": "max"}, "scheduler": {"type": "none"},
        "budget": {"samples_per_arm": 1, "max_concurrent": trials, "max_failures": 0},
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own session, so that the whole node stops by process group."""
    with log.open("wb") as out:
        return subprocess.Popen([RAY, "start", *args, "--num-cpus=1", "--block"], env=env,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def liverlab(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "liverlab.cli", *args], env=env, cwd=cwd,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"liverlab {' '.join(args)} failed ({out.returncode}):\n"
                         f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return wall, out.stdout


# The same kind of work as a trial, without Ray, liverlab or MLflow: U-Net train steps on one thread.
CEILING_SNIPPET = """
import time, torch
from liverlab.models.unet import UNet
torch.set_num_threads(1)
torch.manual_seed(0)
net = UNet(depth=3, base_features=8)
opt = torch.optim.Adam(net.parameters())
x, y = torch.randn(8, 1, 64, 64), torch.randint(0, 2, (8, 64, 64))
t0 = time.perf_counter()
for _ in range({steps}):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(time.perf_counter() - t0)
"""


def machine_ceiling(steps: int, env: dict[str, str]) -> float:
    """Speed-up of 2 concurrent 1-thread processes over 1 on this machine: what 2 one-CPU 'nodes' can give."""
    def run(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", CEILING_SNIPPET.format(steps=steps)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        times = [float(p.communicate()[0]) for p in procs]
        return sum(times) / len(times)

    run(1)  # warm-up: imports and page cache, so that the single run is not the slow first one
    return 2 * run(1) / run(2)


def trial_span(sweep_dir: Path) -> float:
    """Seconds from the first trial's start to the last trial's end, from the sweep's MLflow child runs."""
    import json

    from liverlab.tracking.client import client_for

    info = json.loads((sweep_dir / "liverlab_sweep.json").read_text())
    runs = client_for(info["tracking_uri"]).search_runs(
        [info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=80, help="U-Net steps per epoch (batch 8, 64 x 64)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]  # other work on this machine skews both runs: say how busy it was

    root = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths have a length limit
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(os.urandom(32).hex())
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LIVERLAB_STORAGE"):
        env.pop(key, None)
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    nodes: list[subprocess.Popen] = []
    rows: list[tuple[str, int, float, float]] = []
    ceiling = machine_ceiling(300, env)
    try:
        nodes.append(start_node(["--head", f"--port={port}", f"--temp-dir={ray_tmp}", "--include-dashboard=false"],
                                env, root / "head.log"))
        deadline = time.time() + 120
        while not (ray_tmp / "ray_current_cluster").is_file():
            if time.time() > deadline or nodes[0].poll() is not None:
                raise SystemExit("ray start --head failed:\n" + (root / "head.log").read_text()[-3000:])
            time.sleep(0.5)
        address = (ray_tmp / "ray_current_cluster").read_text().strip()
        common = ["--address", address, "--storage", str(root / "sweeps"), "--no-report"]

        warm = write_space(root, "warmup", 1, 1, 4)
        liverlab(["sweep", str(warm), *common], env, root)  # phantoms, slice cache, worker imports
        one = write_space(root, "one_node", args.trials, args.epochs, args.steps)
        wall, _ = liverlab(["sweep", str(one), *common], env, root)
        rows.append(("1 node x 1 CPU", 1, wall, trial_span(root / "sweeps" / "one_node")))

        nodes.append(start_node([f"--address={address}"], env, root / "worker.log"))
        deadline = time.time() + 120
        while True:
            _, out = liverlab(["doctor", "--address", address, "--storage", str(root / "sweeps")], env, root)
            if "2 node(s) alive" in out:
                break
            if time.time() > deadline:
                raise SystemExit("the worker node did not join:\n" + out)
            time.sleep(2)
        two = write_space(root, "two_nodes", args.trials, args.epochs, args.steps)
        wall, _ = liverlab(["sweep", str(two), *common], env, root)
        rows.append(("2 nodes x 1 CPU", 2, wall, trial_span(root / "sweeps" / "two_nodes")))
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    base_wall, base_span = (args.trials / rows[0][2] * 3600, args.trials / rows[0][3] * 3600)
    print(f"\nsweep of {args.trials} U-Net trials ({args.epochs} epochs x {args.steps} steps, batch 8, 64 x 64, "
          f"1 CPU each) through `liverlab sweep --address`; load average before: {load_before:.2f}")
    print(f"machine ceiling: 2 concurrent 1-thread U-Net processes (no Ray) give {ceiling:.2f}x one process")
    print("command: wall time of the whole `liverlab sweep` (start-up, preflight, parent run, summary); "
          "trials: first trial start to last trial end (MLflow child runs)")
    print("| cluster | command s | trials/hour (command) | speed-up | trials s | trials/hour (trials) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for label, _, wall, span in rows:
        tw, ts = args.trials / wall * 3600, args.trials / span * 3600
        print(f"| {label} | {wall:.1f} | {tw:.0f} | {tw / base_wall:.2f}x "
              f"| {span:.1f} | {ts:.0f} | {ts / base_span:.2f}x |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
