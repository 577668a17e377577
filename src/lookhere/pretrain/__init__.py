"""Pretraining a miniature VLM with LLaVA-1.5's recipe (`lookhere pretrain`)."""
