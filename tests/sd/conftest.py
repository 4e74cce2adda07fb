"""Fixtures of the latent-diffusion tests: a tiny SD-architecture pipeline with random weights,
built here, saved with ``save_pretrained`` and loaded back through ``load_pipeline`` (the hub's code
path)."""

import pytest

from geomlib.sd import pipelines
from geomlib.sd.mini.build import build_pipeline
from geomlib.sd.mini.world import World


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """(folder, pipeline as built): scaling_factor 0.5 so that forgetting it shows."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    built = build_pipeline(World(seed=0, n_memorised=4).vocabulary, "tiny", seed=3)
    built.vae.register_to_config(scaling_factor=0.5)
    built.save_pretrained(folder)
    return folder, built


@pytest.fixture(scope="module")
def pipe(saved_pipeline):
    return pipelines.load_pipeline(saved_pipeline[0], device="cpu")
