"""The trained fusion network (weights shipped with the package; no training at run time)."""

from __future__ import annotations

from . import fusion_operation

OPERATIONS = (
    fusion_operation(
        "network", "Fusion network",
        "Feature-level fusion network trained offline (training/train_fusion.py): one shared encoder per "
        "input, attention fusion of the features, a decoder that gives every input a per-pixel gain. "
        "The contribution maps are each input's share of the fused intensity. Volumes are fused plane "
        "by plane along their first axis. The first image is the anatomical one.",
    ),
)
