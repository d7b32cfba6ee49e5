"""Distillation models for ESPnet tasks (imports ESPnet)."""
