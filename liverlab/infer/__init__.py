"""Using trained models: segment a dataset, score it (CHAOS metrics), synthesise MRI from CT.

``evaluate`` (slice prediction and metrics on both grids) is also what the
U-Net's training loop validates and tests with, and ``synthesize`` is what the
pipeline mixes in, so ``liverlab.train`` imports these modules; from
``liverlab.train`` they use only the shared plumbing (``train.common``:
checkpoints, device, autocast; ``train.data``: datasets and splits), never a
stage module, so no import runs in a circle.
"""
