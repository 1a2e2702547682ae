"""Typed, frozen experiment configs: load YAML, apply dotted overrides, validate.

Every experiment is one ``ExperimentConfig``. Unknown keys and out-of-range
values are errors *before* any compute starts, and the error names the file,
the dotted key and what was expected. ``--set a.b=c`` overrides go through the
same validation as the file itself.

The public names are below; the modules behind them are private:

    _base.py      the frozen, unknown-keys-rejected base of every section
    _data.py      data: phantoms, imports, splits, preprocessing
    _augment.py   U-Net augmentation and mask post-processing
    _schema.py    models, stages, tracking, ExperimentConfig; config_paths
    _loader.py    YAML, --set overrides, path resolution, validation, dump

    from liverlab.config import load_config, ExperimentConfig
"""

from __future__ import annotations

from liverlab._flatten import flatten
from liverlab.config._augment import AugmentConfig, PostprocessConfig, RandomRangeConfig, TTAConfig
from liverlab.config._data import (
    ChaosImportConfig,
    DataConfig,
    ImportSpec,
    NiftiImportConfig,
    PhantomConfig,
    SplitConfig,
)
from liverlab.config._loader import (
    config_from_dict,
    dump_config,
    format_validation_error,
    load_config,
    parse_override,
    read_yaml,
    set_dotted,
)
from liverlab.config._schema import (
    DiscriminatorConfig,
    EssNetConfig,
    ExperimentConfig,
    GeneratorConfig,
    OptimConfig,
    SegmenterConfig,
    TrackingConfig,
    UNetConfig,
    UNetModelConfig,
    UNetOptimConfig,
    config_paths,
)

__all__ = [
    # sections and the experiment
    "AugmentConfig",
    "ChaosImportConfig",
    "DataConfig",
    "DiscriminatorConfig",
    "EssNetConfig",
    "ExperimentConfig",
    "GeneratorConfig",
    "ImportSpec",
    "NiftiImportConfig",
    "OptimConfig",
    "PhantomConfig",
    "PostprocessConfig",
    "TTAConfig",
    "RandomRangeConfig",
    "SegmenterConfig",
    "SplitConfig",
    "TrackingConfig",
    "UNetConfig",
    "UNetModelConfig",
    "UNetOptimConfig",
    # loading and helpers
    "config_from_dict",
    "config_paths",
    "dump_config",
    "flatten",
    "format_validation_error",
    "load_config",
    "parse_override",
    "read_yaml",
    "set_dotted",
]
