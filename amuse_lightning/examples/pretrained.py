"""Whether timm can get a model's pretrained weights, answered in seconds.

``pretrained: true`` without a network makes timm's hub download retry for about a minute before
it fails with a traceback. :func:`check_pretrained_weights` answers first: the weights are in the
local cache (Hugging Face hub cache, or torch hub's for URL-hosted weights), or their host
accepts a connection within :data:`TIMEOUT_S` seconds; otherwise a
:class:`~amuse_lightning.lightning.errors.ConfigError` says to set ``pretrained_file`` or
``pretrained: false``. ``HF_HUB_OFFLINE=1`` with nothing cached is refused without a probe.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from amuse_lightning.lightning.errors import ConfigError

__all__ = ["TIMEOUT_S", "check_pretrained_weights", "hf_cache_dir"]

#: How long the host of the weights gets to accept a connection.
TIMEOUT_S = 3.0

#: The files timm loads from a hub repository (safetensors first).
_HUB_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)

_HINT = (
    "set model.init_args.pretrained_file to a local weights file (.safetensors, .npz or .pth), "
    "or pretrained: false to start from random weights"
)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as ``huggingface_hub`` reads it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "huggingface" / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _has_hub_client() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # timm then downloads from the URL
        return False
    return True


def _in_hub_cache(hub_id: str) -> bool:
    repo = hub_id.split("@")[0]
    snapshots = hf_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
    return any(any(snapshots.glob(f"*/{name}")) for name in _HUB_FILES)


def _in_torch_cache(url: str) -> bool:
    home = os.environ.get("TORCH_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    )
    return (Path(home) / "hub" / "checkpoints" / Path(urlparse(url).path).name).is_file()


def _address(url: str) -> tuple[str, int]:
    """Where a connection to ``url`` goes: its host, or the proxy set for it."""
    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
         if os.environ.get(k)),
        None,
    )  # fmt: skip
    parsed = urlparse(proxy or url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "", port


def _connects(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` (name lookup
    included: it runs in a thread that is abandoned when the time is up)."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def check_pretrained_weights(model_name: str, timeout: float = TIMEOUT_S) -> None:
    """Raise :class:`ConfigError` (key ``pretrained``) when timm could not get the pretrained
    weights of ``model_name``: not cached, and offline or their host unreachable."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name)
    except Exception:  # an unknown name: check_timm_model_name reports it
        return
    if cfg is None or cfg.file or cfg.state_dict or cfg.source == "local-dir":
        return
    hub_id = cfg.hf_hub_id if _has_hub_client() else None
    if hub_id:
        if _in_hub_cache(hub_id):
            return
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        if _offline():
            raise ConfigError(
                f"timm's weights for {model_name} ({hub_id}) are not in the Hugging Face cache "
                f"({hf_cache_dir()}) and HF_HUB_OFFLINE is set; {_HINT}",
                key="pretrained",
            )
    elif cfg.url:
        if _in_torch_cache(cfg.url):
            return
        endpoint = cfg.url
    else:
        return
    host, port = _address(endpoint)
    if not _connects(host, port, timeout):
        where = hub_id or cfg.url
        raise ConfigError(
            f"timm's weights for {model_name} ({where}) are not cached and {host}:{port} did not "
            f"answer within {timeout:.0f} s (offline?); {_HINT}",
            key="pretrained",
        )
