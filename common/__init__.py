"""Shared helpers for postclip's stages: config, data, models, losses, metrics, training loop, checkpoints."""
