"""Bridges to other libraries' factories; each module imports its library but no Lightning.

- :mod:`amuse_lightning.integrations.timm`: ``timm.optim.create_optimizer_v2(model, "amuse")``.
"""
