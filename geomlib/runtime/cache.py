"""Results on disk: atomic writes, settings keys, model fingerprints and a keyed result cache.

Every long computation of the chapters (descriptor chunks, trajectories, reward shards, checkpoints)
is written through these, so an interrupted run leaves whole files or none, and results of one
model or setting are never read for another.

One key policy: a key is the first :data:`KEY_LENGTH` hex digits of the SHA-256 of the settings'
canonical JSON (sorted keys, dataclasses as dicts, anything else by ``str``). Every folder or file
named after settings uses :func:`settings_key`; a content fingerprint (weights, data) hashes bytes
with :func:`content_key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` to a file beside ``path``, then rename it to ``path`` (atomic on POSIX)."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def save_atomic(state: object, path: Path) -> None:
    """``torch.save(state, path)`` through :func:`atomic_write`: never a torn checkpoint or shard."""
    atomic_write(Path(path), lambda partial: torch.save(state, partial))


#: Hex digits of every key and fingerprint (64 bits: no collision in any cache of this size).
KEY_LENGTH = 16


def canonical_json(value: object) -> str:
    """The JSON text a key is computed from: sorted keys, dataclasses as dicts, others by ``str``."""

    def plain(item: object) -> object:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        return str(item)

    return json.dumps(value, sort_keys=True, default=plain)


def settings_key(**settings) -> str:
    """The key of JSON-able settings (dataclasses too): names caches, shards and checkpoints."""
    return content_key(canonical_json(settings).encode())


def content_key(data: bytes) -> str:
    """The key of raw bytes (weights, a data set): a content fingerprint under the same policy."""
    return hashlib.sha256(data).hexdigest()[:KEY_LENGTH]


def model_fingerprint(pipe, modules: Sequence[str] = ("vae", "unet", "text_encoder")) -> str:
    """A short hash of the weights (a sum per parameter) and configs of the pipeline's ``modules``,
    so cached results of one model are never read for another. Chapter 04 needs only the VAE: its
    cache survives a retrained UNet."""
    sums = [p.detach().double().sum() for name in modules for p in getattr(pipe, name).parameters()]
    data = torch.stack(sums).cpu().numpy().tobytes()
    for name in modules:  # the configs too: e.g. the VAE's scaling_factor changes the decoder of z
        config = getattr(pipe, name).config
        fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers / diffusers
        fields = {k: v for k, v in fields.items() if not k.startswith("_") and k != "transformers_version"}
        data += canonical_json(fields).encode()  # (paths, versions dropped)
    return content_key(data)


class ResultCache:
    """Results on disk, one file per key, in a folder named by a hash of ``settings``.

    Everything that changes a result (model fingerprint, descriptor settings, image sample) goes
    into ``settings``; a run with other settings uses another folder, so nothing stale is read.
    JSON values (:meth:`load`, :meth:`save`) and tensors (:meth:`load_tensors`,
    :meth:`save_tensors`) live side by side. Files are written atomically: an interrupted run
    leaves whole files or none.
    """

    def __init__(self, root: str | os.PathLike, settings: dict):
        text = canonical_json(settings)
        self.settings = json.loads(text)
        self.folder = Path(root) / settings_key(**settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(text)

    def path(self, key: Sequence, suffix: str = ".json") -> Path:
        """The file of ``key`` (a tuple of JSON-able values)."""
        return self.folder / (content_key(canonical_json(list(key)).encode()) + suffix)

    def load(self, key: Sequence) -> dict | None:
        """The JSON value stored under ``key``, or ``None``."""
        path = self.path(key)
        return json.loads(path.read_text())["value"] if path.exists() else None

    def save(self, key: Sequence, value: dict) -> None:
        """Store ``value`` (JSON-able) under ``key``."""
        atomic_write(self.path(key), lambda p: p.write_text(json.dumps({"key": list(key), "value": value})))

    def load_tensors(self, key: Sequence) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key``, or ``None``."""
        path = self.path(key, ".pt")
        return torch.load(path, weights_only=True) if path.exists() else None

    def save_tensors(self, key: Sequence, tensors: dict[str, torch.Tensor]) -> None:
        """Store a dict of tensors under ``key``."""
        atomic_write(self.path(key, ".pt"), lambda p: torch.save(tensors, p))

    def __len__(self) -> int:
        return sum(
            1 for p in self.folder.iterdir() if p.suffix in (".json", ".pt") and p.name != "settings.json"
        )
