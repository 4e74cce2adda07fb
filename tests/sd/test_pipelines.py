"""geomlib.sd.pipelines: loading a saved pipeline through the hub's code path, and failing fast
with a message that says what to download when the weights are not there."""

import time

import pytest
import torch

from geomlib.sd import pipelines


def test_load_pipeline_round_trips_the_weights(saved_pipeline, pipe):
    _, built = saved_pipeline
    for name in ("vae", "unet", "text_encoder"):
        expected, loaded = getattr(built, name).state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), name
    assert pipe.vae.config.scaling_factor == 0.5
    assert pipe.tokenizer("a red circle").input_ids == built.tokenizer("a red circle").input_ids


def test_missing_local_directory_fails_at_once_with_a_clear_message(tmp_path):
    with pytest.raises(pipelines.WeightsNotFoundError, match="no such local directory"):
        pipelines.load_pipeline(tmp_path / "nowhere")
    with pytest.raises(pipelines.WeightsNotFoundError, match="model_index.json"):
        pipelines.load_pipeline(tmp_path)  # exists, but is no pipeline


@pytest.mark.parametrize("offline", [True, False])
def test_missing_hub_weights_fail_fast_and_say_what_to_download(monkeypatch, tmp_path, offline):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
        monkeypatch.setattr(pipelines, "_offline", lambda: False)
    started = time.monotonic()
    with pytest.raises(pipelines.WeightsNotFoundError) as error:
        pipelines.load_pipeline(pipelines.SD14)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert f"hf download {pipelines.SD14}" in message and "data/mini-sd" in message


def test_dtype_by_name_or_a_clear_error(saved_pipeline):
    folder, _ = saved_pipeline
    assert pipelines.load_pipeline(folder, device="cpu", dtype="float16").vae.dtype == torch.float16
    with pytest.raises(ValueError, match="not one of"):
        pipelines.load_pipeline(folder, device="cpu", dtype="half-ish")
    with pytest.raises(TypeError, match="floating torch.dtype"):
        pipelines.load_pipeline(folder, device="cpu", dtype=torch.int8)
