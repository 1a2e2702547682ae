"""Exports of liverlab datasets to other tools' formats (nnU-Net v2 raw datasets)."""
