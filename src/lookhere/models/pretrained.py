"""Checkpoints shipped inside the package, loaded offline by name (``lookhere:<name>``): the names
and folders live in the torch-free `lookhere.config.shipped` (configs resolve them without
torch) and are named here too, beside the loaders (`lookhere.models.loading`)."""

from lookhere.config.shipped import PREFIX, SHIPPED, WEIGHTS, pretrained_path, resolve

__all__ = ["PREFIX", "SHIPPED", "WEIGHTS", "pretrained_path", "resolve"]
