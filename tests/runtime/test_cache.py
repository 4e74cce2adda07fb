"""geomlib.runtime.cache: atomic writes survive interruption; settings keys are stable and discriminating."""

from dataclasses import dataclass

import pytest
import torch

from geomlib.runtime.cache import KEY_LENGTH, atomic_write, content_key, save_atomic, settings_key


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic({"step": 1}, path)

    def crash(partial):
        partial.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert torch.load(path) == {"step": 1}


def test_settings_key_ignores_order_and_sees_dataclass_fields():
    @dataclass
    class Budget:
        k: int

    assert settings_key(a=1, b=Budget(3)) == settings_key(b=Budget(3), a=1)
    assert settings_key(a=1, b=Budget(3)) != settings_key(a=1, b=Budget(4))
    assert len(settings_key(a=1)) == KEY_LENGTH and settings_key(a=1) == content_key(b'{"a": 1}')
