"""Evaluation: metrics and (later) evaluation loops."""
