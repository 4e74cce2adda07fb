"""No loader of the project runs code from a file: every ``torch.load`` asks for plain tensors
(``weights_only=True``), checkpoints crafted to run code are refused, and pipelines are read from
safetensors unless the caller opts in to pickle files."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "geomlib"


def _torch_loads_without_weights_only() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_every_torch_load_asks_for_weights_only():
    assert _torch_loads_without_weights_only() == []


class _Payload:
    """Unpickling this touches a file: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"identity": _Payload(marker), "state": {}, "model_state": {}}, path)
    return path


def test_crafted_checkpoints_are_refused_without_running(tmp_path):
    from geomlib.chapters.reward_guidance import load_reward_model
    from geomlib.chapters.toy_ddpm import load_checkpoint

    marker = tmp_path / "ran"
    for load in (load_reward_model, load_checkpoint):
        with pytest.raises(pickle.UnpicklingError):
            load(_crafted(tmp_path / "evil.pt", marker))
        assert not marker.exists(), f"{load.__name__} ran the file's code"


def test_a_pipeline_with_pickle_weights_only_is_refused_unless_allowed(tmp_path):
    from geomlib.sd import pipelines

    pipe = pipelines.tiny_random_pipeline(tmp_path / "pipe")
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert pipelines.pickle_only_components(tmp_path / "pickled") == [
        "unet",
        "vae",
    ]  # transformers: safetensors
    with pytest.raises(pipelines.UnsafeWeightsError, match="allow_pickle=True"):
        pipelines.load_pipeline(tmp_path / "pickled", device="cpu")
    loaded = pipelines.load_pipeline(tmp_path / "pickled", device="cpu", allow_pickle=True)
    torch.testing.assert_close(next(loaded.unet.parameters()), next(pipe.unet.parameters()))
    assert pipelines.pickle_only_components(tmp_path / "pipe") == []  # what the builders save
