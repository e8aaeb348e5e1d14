"""Checking a timm model name before anything is built, with the closest names as a hint."""

from __future__ import annotations

from amuse_lightning.lightning.errors import ConfigError, did_you_mean

__all__ = ["check_timm_model_name"]

_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def check_timm_model_name(name: str | None, key: str = "model_name") -> None:
    """Raise :class:`ConfigError` (naming ``key``) when timm has no model ``name``.

    ``arch.tag`` names are checked for the architecture and, when timm lists pretrained tags for
    it, for the tag; Hugging Face hub and local-folder names (``hf-hub:...``) are left to timm.
    """
    if name is None or name.startswith(_HUB_PREFIXES):
        return
    import timm
    from timm.models import get_deprecated_models

    arch, _, tag = name.partition(".")
    if not (timm.is_model(arch) or arch in get_deprecated_models()):
        raise ConfigError(
            f"timm has no model {name!r}{did_you_mean(arch, timm.list_models())} "
            "(timm.list_models('vit_*') lists the names)",
            key=key,
        )
    tagged = timm.list_pretrained(f"{arch}.*")
    if tag and tagged and name not in tagged:
        tags = [t.partition(".")[2] for t in tagged]
        raise ConfigError(
            f"timm has no pretrained tag {tag!r} for {arch}{did_you_mean(tag, tags)} "
            f"(tags: {', '.join(tags[:8])}{', ...' if len(tags) > 8 else ''})",
            key=key,
        )
