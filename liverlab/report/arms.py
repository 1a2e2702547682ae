"""Arms: their names, their plain-words labels, and which arm each is compared with.

An arm is the canonical string of a sweep's enumerated factors, e.g.
``synthesis=essnet,unet.mixing_ratio=0.5`` (tag ``liverlab.arm``). This
module parses it (:func:`arm_factors`), says it in words (:func:`arm_label`),
and picks the baseline every other arm is paired with
(:func:`resolve_baseline`, :func:`matched_baselines`). No statistics here:
those are ``liverlab.report.stats``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from liverlab.errors import LiverlabError

_SYNTH_LABEL = {"none": "real only", "essnet": "real + EssNet", "cyclegan": "real + CycleGAN",
                "intensity": "real + intensity remap"}
# A comma starts a new factor only when a `key=` follows: values may hold commas (lists).
_SPLIT_FACTORS = re.compile(r",(?=[\w.\-]+=)")


def arm_factors(arm: str | None) -> dict[str, str]:
    """``'synthesis=none,unet.mixing_ratio=0.5'`` -> ``{'synthesis': 'none', 'unet.mixing_ratio': '0.5'}``."""
    if not arm or "=" not in arm:
        return {}
    return dict(part.split("=", 1) for part in _SPLIT_FACTORS.split(arm) if "=" in part)


def arm_label(arm: str) -> str:
    """Plain words for an arm: 'real + EssNet (mixing ratio 0.5)'."""
    factors = arm_factors(arm)
    if not factors:
        return arm
    synth = factors.pop("synthesis", None)
    head = _SYNTH_LABEL.get(synth or "", f"synthesis {synth}" if synth else "")
    rest = [
        f"mixing ratio {v}" if k.endswith("mixing_ratio")
        else (f"{v} real training patients" if v != "1" else "1 real training patient") if k == "data.train_patients"
        else f"{k} {v}" for k, v in sorted(factors.items())
    ]
    if head and rest:
        return f"{head} ({', '.join(rest)})"
    return head or ", ".join(rest)


def drop_factor(arm: str, factor: str) -> str:
    """``'data.split.fold=2,synthesis=none'`` without ``factor`` -> ``'synthesis=none'`` ('default' if none is left)."""
    factors = arm_factors(arm)
    if factor not in factors:
        return arm
    return ",".join(f"{k}={v}" for k, v in factors.items() if k != factor) or "default"


def arm_synthesis(runs: pl.DataFrame) -> dict[str, str | None]:
    """Arm -> its synthesis value, from the ``synthesis`` arm factor, else ``param.synthesis``."""
    out: dict[str, str | None] = {}
    for arm in runs["arm"].unique().sort().to_list():
        synth = arm_factors(arm).get("synthesis")
        if synth is None and "param.synthesis" in runs.columns:
            values = runs.filter(pl.col("arm") == arm)["param.synthesis"].drop_nulls().unique().to_list()
            synth = values[0] if len(values) == 1 else None
        out[arm] = synth
    return out


def resolve_baseline(runs: pl.DataFrame, baseline: str | None) -> tuple[str | None, str]:
    """(baseline arm or None, a sentence saying how it was chosen).

    Explicit ``baseline`` must be one of the arms (LiverlabError listing them);
    otherwise the arm whose synthesis is ``none`` (real MRI only).
    """
    arms = sorted(runs["arm"].unique().to_list())
    if baseline is not None:
        if baseline not in arms:
            raise LiverlabError(
                f"--baseline {baseline!r} is not an arm with finished runs in this sweep; arms: {', '.join(arms)}"
            )
        return baseline, f"baseline `{baseline}` (chosen with --baseline)"
    real_only = [a for a, s in arm_synthesis(runs).items() if s == "none"]
    if not real_only:
        return None, "no baseline: no arm has synthesis = none (pass --baseline ARM)"
    note = f"baseline `{real_only[0]}` (the arm with synthesis = none, real MRI only)"
    if len(real_only) > 1:
        note += f"; {len(real_only)} arms have synthesis = none, the first was taken (use --baseline to choose)"
    return real_only[0], note


def matched_baselines(arms: Sequence[str], baseline: str | None, synthesis: dict[str, str | None]) -> dict[str, str]:
    """Arm -> the baseline arm it is compared with.

    An explicit ``baseline``: every other arm against it. Otherwise the
    real-only arms (``synthesis`` none) are the baselines; when they differ in
    some factor (e.g. ``data.train_patients``), each arm is compared with the
    real-only arm that has its values of those factors (none: not compared).
    """
    if baseline is not None:
        return {a: baseline for a in arms if a != baseline}
    bases = sorted(a for a in arms if synthesis.get(a) == "none")
    if not bases:
        return {}
    strata = sorted({k for b in bases for k in arm_factors(b) if k != "synthesis"
                     and len({arm_factors(x).get(k) for x in bases}) > 1})
    out: dict[str, str] = {}
    for a in arms:
        if a in bases:
            continue
        fa = arm_factors(a)
        hit = [b for b in bases if all(arm_factors(b).get(k) == fa.get(k) for k in strata)]
        if hit:
            out[a] = hit[0]
    return out


def control_pairs(units: pl.DataFrame) -> dict[str, str]:
    """EssNet arm -> the ``synthesis: intensity`` arm (the non-GAN control) with the same values of every
    other factor."""
    synth = arm_synthesis(units)
    ctrl = [a for a, s in synth.items() if s == "intensity"]

    def rest(arm: str) -> dict[str, str]:
        return {k: v for k, v in arm_factors(arm).items() if k != "synthesis"}

    return {a: hit[0] for a, s in synth.items() if s == "essnet"
            for hit in [[c for c in ctrl if rest(c) == rest(a)]] if hit}
