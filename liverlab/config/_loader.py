"""Loading configs: YAML, dotted ``--set`` overrides, path resolution, validation (private; see liverlab.config).

Unknown keys and out-of-range values are errors *before* any compute starts,
and the error names the file, the dotted key and what was expected.
``--set a.b=c`` overrides go through the same validation as the file itself.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from liverlab.config._schema import ExperimentConfig
from liverlab.errors import LiverlabError


def format_validation_error(source: str, err: ValidationError) -> str:
    """A pydantic error as ``source: dotted.key: message (got value)``, one per problem, joined by ``; ``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{got_s}")
    return "; ".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise LiverlabError(f"{p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise LiverlabError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LiverlabError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``'a.b=3'`` -> ``('a.b', 3)``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise LiverlabError(f"--set {item!r}: expected KEY=VALUE, e.g. data.size=128")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise LiverlabError(f"--set {item!r}: empty key")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``raw[a][b] = value`` for ``key='a.b'``, creating mappings on the way."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise LiverlabError(f"{source}: {key}: {where} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make data paths absolute (Ray trials run in another working directory)."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "ct", "mri", "cache_dir"):
            v = data.get(key)
            if isinstance(v, str) and "://" not in v:
                data[key] = str((base / Path(v).expanduser()).resolve())
        imports = data.get("import")
        for spec in [imports] if isinstance(imports, dict) else imports if isinstance(imports, list) else []:
            for key in ("images", "labels", "root"):  # globs too: resolved like the folders above
                v = spec.get(key) if isinstance(spec, dict) else None
                if isinstance(v, str) and "://" not in v:
                    spec[key] = str((base / Path(v).expanduser()).resolve())
    unet = raw.get("unet")
    if isinstance(unet, dict) and isinstance(unet.get("synthetic"), str):
        unet["synthetic"] = str((base / Path(unet["synthetic"]).expanduser()).resolve())


def config_from_dict(
    raw: dict[str, Any],
    overrides: list[str] | dict[str, Any] | None = None,
    source: str = "<config>",
    base_dir: str | Path | None = None,
) -> ExperimentConfig:
    """Validate a raw mapping (+ overrides) into an ``ExperimentConfig``."""
    raw = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_dotted(raw, key, value)
    _resolve_paths(raw, Path(base_dir) if base_dir else Path.cwd())
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        src = source + (" (with --set overrides)" if overrides else "")
        raise LiverlabError(format_validation_error(src, err)) from None


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML, apply ``--set`` overrides, validate.

    Relative data paths are resolved against the current directory (the
    directory you run ``liverlab`` from), not the YAML's folder, so that the
    shipped experiments work from the repository root.
    """
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what ``show-config`` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
