"""Auxiliary losses as pure tensor functions: KLAL (attention toward a target map) and LLL (the
logit lens of visual tokens toward their concept's words)."""

from lookhere.losses.klal import klal_loss, klal_per_sample
from lookhere.losses.lll import concept_log_probs, lll_loss, lll_per_sample

__all__ = ["concept_log_probs", "klal_loss", "klal_per_sample", "lll_loss", "lll_per_sample"]
