"""Attention maps of vision transformers (UNETR): at one block or rolled out across blocks."""

from __future__ import annotations

from .. import Operation, Param
from . import ATTRIBUTION, CORE, INPUTS, LAYER, MARGIN, OUTPUTS, TARGET, runner

ROLLOUT = Param("rollout", bool, False, "roll the attention out across blocks (with the skip connections)",
                label="roll out across blocks")

OPERATIONS = (
    Operation("explain", "attention", "attention the region's tokens pay to every token (transformer models)",
              (TARGET, LAYER, ROLLOUT, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, runner("attention"),
              label="attention", core=CORE),
)
