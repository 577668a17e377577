"""lookhere: visual grounding through the attention of vision-language models."""

__version__ = "0.1.0"
