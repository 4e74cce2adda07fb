"""The paper dry run's stand-ins (the run itself is `make paper-dry`, a CI step of its own): an
SD-1.4-shaped pipeline that every chapter treats as Stable Diffusion, an ImageNet-style folder, and
prompt files of every format; and budgets whose dry run changes the counts only."""

import dataclasses

import pytest
import torch

import geomlib
from geomlib.book import paper_dry
from geomlib.chapters import (
    corruptions,
    cpwl_toy,
    jacobian_sketches,
    latent_slices,
    level_sets,
    low_rank,
    memorisation,
    reward_guidance,
    toy_ddpm,
    trajectories,
)
from geomlib.runtime.profiles import DRY_RUN
from geomlib.sd import images, pipelines

BUDGETS = [
    jacobian_sketches.SKETCHING_BUDGETS,
    cpwl_toy.CPWL_BUDGETS,
    toy_ddpm.TOY_DDPM_BUDGETS,
    latent_slices.SLICE_BUDGETS,
    corruptions.CORRUPTION_BUDGETS,
    trajectories.TRAJECTORY_BUDGETS,
    reward_guidance.REWARD_BUDGETS,
    low_rank.LOWRANK_BUDGETS,
    memorisation.MEMORISATION_BUDGETS,
    level_sets.LEVEL_SET_BUDGETS,
]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return paper_dry.fixtures(tmp_path_factory.mktemp("paper-dry"))


def test_the_pipeline_has_sd14s_classes_and_takes_every_sd_branch(stand_ins):
    pipe = pipelines.load_pipeline(stand_ins["model"], device="cpu")
    names = {
        n: type(getattr(pipe, n)).__name__ for n in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
    }
    assert names == {
        "vae": "AutoencoderKL",
        "unet": "UNet2DConditionModel",
        "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer",
        "scheduler": "PNDMScheduler",
    }
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == 77
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert pipelines.world_for_model(stand_ins["model"]) is None  # no procedural world: SD branches
    assert latent_slices.default_prompts(stand_ins["model"]) == ["a cat", "a dog", "a fox"]
    assert pipelines.pickle_only_components(pipelines.resolve_local(stand_ins["model"])) == []


def test_the_image_folder_is_imagenet_shaped_with_every_format(stand_ins):
    files = images.image_files(stand_ins["imagenet_folder"])
    assert {p.suffix.lower() for p in files} == {".jpeg", ".png", ".tif"}
    assert len({p.parent for p in files}) >= 3
    assert min(min(images.image_size(p)) for p in files) >= 512
    sample = images.ImageFolderImages(stand_ins["imagenet_folder"], 8, size=64, seed=0)
    assert len(set(sample.labels)) == 4 and sample[0:8].shape == (8, 64, 64, 3)


def test_the_prompt_files_read_the_same_in_every_format(stand_ins, tmp_path):
    files = paper_dry.write_prompt_files(tmp_path)
    assert {p.suffix for p in files.values()} == {".txt", ".json", ".csv", ".tsv", ".parquet"}
    assert images.read_prompts(stand_ins["memorised_prompts"]) == list(paper_dry.MEMORISED_PROMPTS)
    assert images.read_prompts(stand_ins["normal_prompts"]) == list(paper_dry.NORMAL_PROMPTS)


@pytest.mark.parametrize("budgets", BUDGETS, ids=lambda b: type(b["paper"]).__name__)
def test_a_dry_run_changes_the_counts_and_nothing_else(budgets):
    paper = geomlib.select_budget(budgets, "paper")
    dry = geomlib.select_budget(budgets, "paper", dry_run=True)
    counted = {f.name for f in dataclasses.fields(paper) if DRY_RUN in f.metadata}
    assert counted, "a budget with nothing to shrink"
    for field in dataclasses.fields(paper):
        expected = field.metadata[DRY_RUN] if field.name in counted else getattr(paper, field.name)
        assert getattr(dry, field.name) == expected, field.name


def test_the_dry_pipeline_generates_and_decodes(stand_ins):
    from geomlib.sd import sampling

    pipe = pipelines.load_pipeline(stand_ins["model"], device="cpu")
    out = sampling.generate(pipe, ["a cat"], num_inference_steps=2)
    assert out.images.shape == (1, 64, 64, 3) and torch.isfinite(out.latents).all()


def test_only_passes_the_fixtures_its_chapters_declare():
    """``--only 07`` must not fail on the fixtures only other chapters read (chapter 07 reads none)."""
    from geomlib.book import runner

    fixtures = {"imagenet_folder": "/x", "cache_dir": "/y"}
    assert paper_dry.declared_fixtures(runner.discover(only=["07"]), fixtures) == {}
    everything = paper_dry.declared_fixtures(runner.discover(), fixtures)
    assert everything == fixtures
