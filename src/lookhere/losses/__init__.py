"""Auxiliary losses as pure tensor functions: KLAL (attention toward a target map)."""

from lookhere.losses.klal import klal_loss, klal_per_sample

__all__ = ["klal_loss", "klal_per_sample"]
