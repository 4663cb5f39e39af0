"""Where a model's weights come from: a local directory or a Hugging Face hub id.

Rule for `ml.load_model(name, kind, source)`:
- a source that starts with `/`, `~`, `./` or `../`, or names an existing directory, is a local directory;
  a relative one is resolved against the worker's working directory (where `pgsight worker` was started),
  on the worker's machine — the error says which absolute path was tried;
- anything else is a hub id (`openai/clip-vit-base-patch32`). It loads from the local hub cache when it is
  there; otherwise the hub must be reachable. When it is not (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set,
  or the hub does not answer within 3 s) the load fails at once saying so, with the local-directory hint.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

HINT = ("download the checkpoint where the hub is reachable (`hf download ID --local-dir DIR`) and give its "
        "directory: ml.load_model('name', 'kind', '/path/to/checkpoint')")
_TRUE = {"1", "true", "yes", "on"}
_probe: dict[str, tuple[float, str | None]] = {}
_probe_lock = threading.Lock()


class SourceError(Exception):
    pass


def is_local(source: str) -> bool:
    return source.startswith(("/", "~", "./", "../")) or source in (".", "..") or Path(source).is_dir()


def resolve_local(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    path = path.resolve()
    if not path.is_dir():
        raise SourceError(f"model directory {path} does not exist on this worker ({socket.gethostname()}; relative "
                          f"paths are resolved against the worker's working directory {Path.cwd()})")
    return path


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached from here, or None when it can. Cached for a minute."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    with _probe_lock:
        at, reason = _probe.get(endpoint, (0.0, None))
        if time.monotonic() - at < 60:
            return reason
        url = urlparse(endpoint)
        host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reason = None
        except OSError as e:
            reason = f"{host}:{port} cannot be reached ({e.strerror or e})"
        _probe[endpoint] = (time.monotonic(), reason)
        return reason


def in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def go_offline() -> None:
    """Make the hub libraries use their cache only (no 40 s of retries against an unreachable hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def resolve(kind: str, source: str | None) -> str | None:
    """The source to load: a local directory made absolute, or the hub id unchanged (see the module's rule)."""
    from pgsight.worker.models.kinds import BUILTIN as KINDS

    if not source or kind == "pixels" or kind not in KINDS:  # other kinds read their sources their own way
        return source
    if is_local(source):
        return str(resolve_local(source))
    reason = offline_reason()
    if reason is None:
        return source
    if in_hub_cache(source):
        go_offline()
        return source
    raise SourceError(f"{source!r} is not a local directory and not in the hub cache, and the Hugging Face hub is "
                      f"not reachable from this worker ({reason}): {HINT}")
