"""Resolve what the user passed as ``model`` into an :class:`ArchSpec` (and a config when needed).

Accepted: a hub id (offline catalog first, then the local Hugging Face cache, then, when online and
``HF_HUB_OFFLINE`` is unset, a download of ``config.json`` only, never weights), a local directory or
``config.json`` path, a ``transformers.PretrainedConfig``, a ``dict`` of config fields with a
``model_type``, or a loaded ``nn.Module`` / ``PeftModel``.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import ArchSpec
from .catalog import lookup, nearest_ids
from .config_loader import read_config_file, remote_code_note, validate_config, without_remote_code
from .errors import ModelNotFoundError, UnsupportedModelError


@dataclass
class ResolvedModel:
    """A model the planner and the doctor can reason about."""

    name: str
    source: str                      # "catalog" | "cache" | "hub" | "local" | "config" | "module"
    arch: ArchSpec
    config_dict: dict | None = None  # config fields when known without torch
    module: Any = field(default=None, repr=False)   # the user's loaded model, if they gave one
    _config: Any = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)  # what the planner should tell (e.g. custom code not run)

    def config(self) -> Any:
        """The ``transformers.PretrainedConfig`` (imports transformers)."""
        if self._config is None:
            if self.module is not None:
                self._config = _base_model(self.module).config
            else:
                self._config = config_from_dict(self.config_dict or {})
        return self._config

    def meta_model(self) -> Any:
        """A fresh copy of the model on the meta device (nothing allocated)."""
        from .introspect import build_meta_model

        return build_meta_model(self.config())


def config_from_dict(fields: dict) -> Any:
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise UnsupportedModelError("config has no 'model_type'; pass the model's config.json")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        if "Unrecognized model identifier" in str(exc) or "unrecognized" in str(exc).lower():
            raise UnsupportedModelError(f"transformers does not know model_type {model_type!r}") from None
        raise UnsupportedModelError(f"invalid {model_type} config: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # e.g. a field of the wrong type (TypeError from the config's validation)
        raise UnsupportedModelError(f"invalid {model_type} config: {type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0][:200]}") from None


def resolve(model: Any) -> ResolvedModel:
    """Turn any accepted ``model`` argument into a ResolvedModel. Raises LoraDoctorError subclasses."""
    if isinstance(model, ResolvedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _resolve_name(str(model))
    if isinstance(model, dict):
        return _from_fields(model, name=None, source="config", where="config dict")
    if _is_module(model):
        from .introspect import arch_from_model

        base = _base_model(model)
        name = getattr(getattr(base, "config", None), "_name_or_path", "") or type(base).__name__
        return ResolvedModel(name, "module", arch_from_model(base), module=model)
    if hasattr(model, "model_type") and hasattr(model, "to_dict"):  # a PretrainedConfig
        validate_config(model.to_dict(), type(model).__name__)
        note = remote_code_note({"model_type": model.model_type, "auto_map": getattr(model, "auto_map", None)})
        if note is not None:  # a copy without auto_map: transformers then never considers the custom code
            model = copy.deepcopy(model)
            model.auto_map = {}
        resolved = _from_config(model, name=getattr(model, "_name_or_path", "") or model.model_type, source="config")
        resolved.notes += [note] if note else []
        return resolved
    raise UnsupportedModelError(
        f"cannot plan for a {type(model).__name__}: pass a hub id, a path, a PretrainedConfig or a model"
    )


def _is_module(obj: Any) -> bool:
    try:
        import torch.nn as nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, nn.Module)


def _base_model(model: Any) -> Any:
    """The transformers model inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _from_config(config: Any, *, name: str, source: str, fields: dict | None = None) -> ResolvedModel:
    from .introspect import arch_from_model, build_meta_model
    from .introspect_towers import check_fields

    if fields is not None:
        check_fields(fields)   # a VLM config without its vision section
    arch = arch_from_model(build_meta_model(config), config)
    if fields is None:
        fields = config.to_diff_dict()
        fields["model_type"] = config.model_type
    return ResolvedModel(name, source, arch, config_dict=fields, _config=config)


def _from_fields(fields: Any, *, name: str | None, source: str, where: str) -> ResolvedModel:
    """Validate raw config fields (sizes, types, custom code) before building anything from them."""
    fields = validate_config(fields, where)
    note = remote_code_note(fields)
    if note is not None:
        fields = without_remote_code(fields)
    name = name or str(fields.get("_name_or_path") or "") or fields["model_type"]
    resolved = _from_config(config_from_dict(fields), name=name, source=source, fields=fields)
    resolved.notes += [note] if note else []
    return resolved


def _read_config_file(path: Path, name: str, source: str) -> ResolvedModel:
    return _from_fields(read_config_file(path), name=name, source=source, where=_shorten(str(path)))


# A Hugging Face repo id: "name" or "owner/name", letters, digits, '-', '_', '.', each part at most 96.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _local_path(text: str) -> Path | None:
    """The file or directory ``text`` names, or None when nothing is there. Path errors are one line."""
    if "\x00" in text:
        raise ModelNotFoundError("model name contains a NUL character")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~nosuchuser/x"
        raise ModelNotFoundError(f"cannot expand {_shorten(text)}: no such user's home directory") from None
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # name too long, symlink loop, permission denied ...
        if _looks_like_path(text):
            raise ModelNotFoundError(f"cannot read {_shorten(text)}: {exc.strerror or exc}") from None
        return None
    return path


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.endswith(".json") or os.sep in text.strip("/").replace("/", "", 1)


def _shorten(text: str) -> str:
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def _resolve_name(text: str) -> ResolvedModel:
    if not text.strip():
        raise ModelNotFoundError("no model given: pass a hub id, a local directory or a config.json path")
    path = _local_path(text)
    if path is not None and path.is_dir():
        if not os.path.exists(path / "config.json"):
            raise ModelNotFoundError(f"{_shorten(str(path))} has no config.json")
        return _read_config_file(path / "config.json", name=str(path), source="local")
    if path is not None:  # a file, or something that is not (a device, a pipe): the loader says which
        return _read_config_file(path, name=str(path), source="local")
    if _looks_like_path(text):
        raise ModelNotFoundError(f"no such file or directory: {_shorten(text)}")
    entry = lookup(text)  # catalog ids include variants that are not hub ids (google/gemma-3-4b-it:text)
    if entry is not None:
        return ResolvedModel(entry.model_id, "catalog", entry.arch, config_dict=entry.config)
    if not _HUB_ID.match(text.strip()):
        raise ModelNotFoundError(f"{_shorten(text)!r} is neither a file nor a hub id (owner/name of letters, digits, "
                                 "'-', '_', '.'); pass a hub id, a local directory or a config.json path")

    cached = _config_from_hf_cache(text)
    if cached is not None:
        return _read_config_file(cached, name=text, source="cache")
    if not _offline():
        downloaded = _download_config(text)
        if downloaded is not None:
            return _read_config_file(downloaded, name=text, source="hub")
    near = nearest_ids(text)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise ModelNotFoundError(
        f"unknown model {text!r}: not in the offline catalog or the local Hugging Face cache"
        f"{' (offline, so not downloaded)' if _offline() else ' and config.json could not be downloaded'}.{hint} "
        "Pass a local directory or config.json path instead, or run `lora-doctor catalog` to list the offline catalog."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _config_from_hf_cache(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid repo id syntax and the like
        return None
    return Path(found) if isinstance(found, str) else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP connect to the hub endpoint, so an offline machine fails in milliseconds
    instead of sitting through huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except Exception:
        return False


def _download_config(repo_id: str) -> Path | None:
    """Fetch config.json only (a few KB). Any failure (no network, gated, 404) returns None."""
    if not _hub_reachable():
        return None
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury our one-line error
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json", etag_timeout=5))
    except Exception:
        return None
    finally:
        hub_logger.setLevel(level)
