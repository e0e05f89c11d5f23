"""Attention maps of vision transformers (UNETR): at one block or rolled out across blocks."""

from __future__ import annotations

from .. import Operation, Param
from . import ATTRIBUTION, CORE, INPUTS, MARGIN, OUTPUTS, TARGET, explain

LAYER = Param("layer", str, None, "the attention block shown (rolled out up to), by name", auto="the last block")
ROLLOUT = Param("rollout", bool, False, "roll the attention out across blocks (with the skip connections)",
                label="roll out across blocks")


def run_attention(images, model, region=None, *, target, layer, rollout, margin, attribution, device=None,
                  seed=None):
    """Attention map (yields Progress)."""
    return (yield from explain("attention", images, model, region, device, target=target, layer=layer,
                               rollout=rollout, margin=margin, attribution=attribution))


OPERATIONS = (
    Operation("explain", "attention", "attention the region's tokens pay to every token (transformer models)",
              (TARGET, LAYER, ROLLOUT, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_attention,
              label="attention", core=CORE),
)
