"""geomlib.sd.mini: the procedural world, the one pipeline builder, resumable training, and the
shipped model's quality gates on a few samples.

Truth: the world's palette and geometry, combinatorics of the grammar, the published parameter
counts of SD 1.4, an uninterrupted training run, and the world's own labels for generated images.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geomlib.sd import pipelines, sampling
from geomlib.sd.mini import quality, train
from geomlib.sd.mini.build import build_pipeline, build_tokenizer, parameter_counts
from geomlib.sd.mini.world import ATTRIBUTES, COLOURS, Attributes, World, all_attributes, caption, load_world

MODEL = pipelines.MINI_MODEL
shipped = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="data/mini-sd not trained yet")


def test_world_is_deterministic_under_its_seed():
    first, second, other = World(seed=0), World(seed=0), World(seed=1)
    images, scenes = first.dataset(8, seed=1)
    again, scenes_again = second.dataset(8, seed=1)
    np.testing.assert_array_equal(images, again)
    assert scenes == scenes_again and first.memorised_captions == second.memorised_captions
    assert first.memorised_captions != other.memorised_captions
    assert first.novel_attributes != other.novel_attributes


def test_shapes_turn_within_the_worlds_rotation_limit_and_old_worlds_keep_any_angle(tmp_path):
    default = World(seed=0)
    angles = np.degrees([scene.angle for scene in default.sample_scenes(500, np.random.default_rng(0))])
    assert default.max_rotation == 15 and np.abs(angles).max() <= 15 and np.abs(angles).max() > 14
    tilted = World(seed=0, max_rotation=40)
    angles = np.degrees([scene.angle for scene in tilted.sample_scenes(500, np.random.default_rng(0))])
    assert 39 < np.abs(angles).max() <= 40
    with pytest.raises(ValueError, match="max_rotation"):
        World(max_rotation=181)
    # a world.json from before the limit: load_world rebuilds the any-angle world exactly
    described = World(seed=0, max_rotation=180).description()
    described.pop("max_rotation")
    (tmp_path / "world.json").write_text(json.dumps(described))
    loaded = load_world(tmp_path)
    angles = np.array([scene.angle for scene in loaded.memorised])
    assert loaded.max_rotation == 180 and angles.min() >= 0 and angles.max() > np.pi
    assert loaded.memorised == World(seed=0, max_rotation=180).memorised != World(seed=0).memorised


def test_novel_combinations_never_reach_training():
    world = World(seed=0)
    n_all = (
        5 * 8 * 7 * 2 * 5 * 4
    )  # shapes x colours x other background colours x sizes x positions x textures
    assert len(all_attributes()) == n_all
    assert len(world.novel_attributes) == round(0.1 * n_all)
    training = world.sample_scenes(3000, np.random.default_rng(0))
    assert not any(world.is_novel(scene.attributes) for scene in training)
    assert all(
        world.is_novel(scene.attributes)
        for scene in world.sample_scenes(50, np.random.default_rng(0), novel=True)
    )


def test_renders_have_the_palettes_colours_and_the_shapes_area():
    world = World(seed=0)
    attributes = Attributes("circle", "red", "blue", "large", "in the center", "plain")
    scene = world.random_scene(attributes, np.random.default_rng(3))
    image = world.render([scene])[0].astype(float)
    jitter = np.array(scene.jitter)
    cx, cy = (int(c * 32) for c in scene.centre)
    np.testing.assert_allclose(image[cy, cx], np.clip(np.array(COLOURS["red"]) + jitter, 0, 255), atol=1)
    np.testing.assert_allclose(image[0, 0], np.clip(np.array(COLOURS["blue"]) + jitter, 0, 255), atol=1)
    red = np.clip(np.array(COLOURS["red"]) + jitter, 0, 255)
    blue = np.clip(np.array(COLOURS["blue"]) + jitter, 0, 255)
    coverage = ((image - blue) @ (red - blue) / np.sum((red - blue) ** 2)).clip(0, 1)  # anti-aliased mask
    assert coverage.sum() == pytest.approx(math.pi * (scene.radius * 32) ** 2, rel=0.03)


def test_colour_mask_covers_the_shape_and_ignores_the_texture():
    world = World(seed=0)
    attributes = Attributes("square", "yellow", "blue", "large", "in the center", "checkered")
    scene = world.random_scene(attributes, np.random.default_rng(4))
    image = quality.to_tensor(world.render([scene]))
    yellow = torch.tensor([list(ATTRIBUTES["colour"]).index("yellow")])
    area = float(quality.colour_mask(image, yellow).sum())
    side = 0.9 * np.sqrt(2) * scene.radius * 32 * np.sqrt(2)  # the square's circumradius is 0.9 sqrt(2) r
    assert area == pytest.approx(side**2, rel=0.1)
    blue = torch.tensor([list(ATTRIBUTES["colour"]).index("blue")])
    assert float(quality.colour_mask(image, blue).sum()) < 32 * 32 - area  # only the background's first tone


def test_captions_follow_the_grammar_and_memorised_ones_are_unique():
    world = World(seed=0)
    attributes = Attributes("star", "green", "white", "small", "on the left", "striped")
    assert caption(attributes) == "a small green star on the left on a striped white background"
    assert caption(attributes, {"size", "position", "texture"}) == "a green star on a white background"
    words = set(world.vocabulary)
    assert set(caption(attributes).split()) <= words
    assert len(set(world.memorised_captions)) == len(world.memorised) == 40
    for text, scene in zip(world.memorised_captions, world.memorised, strict=True):
        assert text.startswith(caption(scene.attributes) + " named ") and set(text.split()) <= words


def test_tokenizer_gives_every_word_one_token_and_spells_unknown_words():
    world = World(seed=0)
    tokenizer = build_tokenizer(world.vocabulary)
    for word in world.vocabulary:
        assert len(tokenizer(word).input_ids) == 3, word  # BOS, the word, EOS
    text = world.memorised_captions[0]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    inner = tokenizer("a zebra").input_ids[1:-1]
    assert len(inner) > 2 and tokenizer.eos_token_id not in inner  # spelt out, not mapped to EOS


def test_builder_is_deterministic_and_leaves_the_global_rng_alone():
    words = World(seed=0, n_memorised=2).vocabulary
    state = torch.random.get_rng_state()
    first, second = build_pipeline(words, "tiny", seed=1), build_pipeline(words, "tiny", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = build_pipeline(words, "tiny", seed=2)
    for a, b in zip(first.unet.parameters(), second.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, c) for a, c in zip(first.unet.parameters(), other.unet.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="size"):
        build_pipeline(words, "huge")


def test_sd14_builder_has_the_published_parameter_counts():
    from accelerate import init_empty_weights

    with init_empty_weights():  # shapes only: no 4 GB of random weights
        pipe = build_pipeline(World(seed=0, n_memorised=0).vocabulary, "sd14")
    assert parameter_counts(pipe) == {"vae": 83_653_863, "unet": 859_520_964, "text_encoder": 123_060_480}


def test_vae_training_resumes_exactly_where_it_stopped(tmp_path):
    world = World(seed=0, image_size=16, n_memorised=2)
    images, _ = world.dataset(16, seed=0)
    images = quality.to_tensor(np.concatenate([images, world.render(world.memorised)])) * 2 - 1
    config = train.TrainConfig(vae_steps=4, vae_batch=4, checkpoint_every=2, log_every=1)

    def vae(seed: int = 0):
        return build_pipeline(world.vocabulary, "tiny", seed=seed).vae

    straight, _ = train.train_vae(
        vae(), images, 16, config, tmp_path / "a", _log(tmp_path / "a"), resume=False
    )

    class Interrupt(Exception):
        pass

    def stop_at_step_3(message: str) -> None:
        if "step 3/" in message:
            raise Interrupt

    (tmp_path / "b").mkdir()
    with pytest.raises(Interrupt):
        train.train_vae(vae(), images, 16, config, tmp_path / "b", stop_at_step_3, resume=False)
    # a different initialisation: only a loaded checkpoint can make the result equal to the straight run
    resumed, _ = train.train_vae(
        vae(seed=5), images, 16, config, tmp_path / "b", _log(tmp_path / "b"), resume=True
    )
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_classifier_phase_adds_the_vae_reconstructions_of_the_first_renders(tmp_path, monkeypatch):
    world = World(seed=0, image_size=16, n_memorised=2)
    renders, scenes = world.dataset(12, seed=0)
    images = quality.to_tensor(renders) * 2 - 1
    pipe = build_pipeline(world.vocabulary, "tiny", seed=0)
    pipe.vae.register_to_config(scaling_factor=0.7)
    latents = train.encode_dataset(pipe.vae, images)
    seen = {}

    def record(images, labels, **options):
        seen.update(images=images, labels=labels)
        return quality.AttributeClassifier()

    monkeypatch.setattr(quality, "train_classifier", record)
    config = train.TrainConfig(classifier_reconstructions=5)
    train._classifier_phase(pipe, images, latents, scenes, 10, config, tmp_path, _log(tmp_path), False)
    labels = quality.attribute_labels(scenes)
    assert seen["images"].shape == (15, 3, 16, 16)
    torch.testing.assert_close(seen["images"][:10], quality.to_tensor(renders[:10]))
    # the independent path: encode the same renders again and decode
    expected = quality.vae_reconstructions(pipe, quality.to_tensor(renders[:5]))
    torch.testing.assert_close(seen["images"][10:], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(seen["labels"], torch.cat([labels[:10], labels[:5]]))


def _log(folder: Path) -> train.Log:
    folder.mkdir(exist_ok=True)
    return train.Log(folder / "train.log")


@pytest.fixture(scope="module")
def mini():
    return pipelines.load_pipeline(MODEL, device="cpu"), load_world(MODEL), quality.load_classifier(MODEL)


@shipped
def test_shipped_model_is_small_sd_shaped_and_documented(mini):
    pipe, world, _ = mini
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20
    assert [type(getattr(pipe, n)).__name__ for n in ("vae", "unet", "text_encoder")] == [
        "AutoencoderKL",
        "UNet2DConditionModel",
        "CLIPTextModel",
    ]
    card = (MODEL / "MODEL_CARD.md").read_text()
    assert "python -m geomlib.sd.mini.train" in card and "PSNR" in card and "git rev-parse HEAD" in card
    assert (MODEL / "train_log.txt").exists() and world.memorised_captions[0] in (
        MODEL / "world.json"
    ).read_text()


@shipped
def test_shipped_vae_reconstructs_held_out_images(mini):
    pipe, world, _ = mini
    images, _ = world.dataset(16, seed=123, novel=True)
    assert quality.vae_psnr(pipe, quality.to_tensor(images)).mean() > 20


@shipped
def test_shipped_model_follows_novel_prompts(mini):
    pipe, world, classifier = mini
    scenes = world.sample_scenes(12, np.random.default_rng(7), novel=True)
    out = sampling.generate(
        pipe, [caption(s.attributes) for s in scenes], seed=0, guidance_scale=7.5, num_inference_steps=15
    )
    scores = quality.accuracy(classifier, quality.to_tensor(out.images), quality.attribute_labels(scenes))
    for name in ("colour", "background", "shape"):
        assert scores[name] >= 3 / len(ATTRIBUTES[name]), (name, scores)  # well above chance


@shipped
def test_shipped_model_reproduces_memorised_images(mini):
    pipe, world, _ = mini
    memorised = sampling.generate(
        pipe, world.memorised_captions[:4], seed=0, guidance_scale=7.5, num_inference_steps=15
    )
    own = quality.to_tensor(world.render(world.memorised[:4]))
    d_own = (quality.to_tensor(memorised.images) - own).pow(2).flatten(1).mean(1).sqrt()
    train_images = quality.to_tensor(world.dataset(2000, seed=0)[0])
    scenes = world.sample_scenes(4, np.random.default_rng(8), novel=True)
    novel = sampling.generate(
        pipe, [caption(s.attributes) for s in scenes], seed=0, guidance_scale=7.5, num_inference_steps=15
    )
    d_novel, _ = quality.nearest_distances(quality.to_tensor(novel.images), train_images)
    assert d_own.median() < 0.5 * d_novel.median(), (d_own, d_novel)


@shipped
def test_prompt_fidelity_agrees_with_the_classifiers_predictions_and_falls_for_wrong_captions(mini):
    _, world, classifier = mini
    images, scenes = world.dataset(24, seed=321)
    images, labels = quality.to_tensor(images), quality.attribute_labels(scenes)
    fidelity = quality.prompt_fidelity(classifier, images, labels, batch_size=10)  # batches split rows
    predicted = classifier.predict(images, labels[:, quality.COLOUR_INDEX])
    brute = torch.stack([predicted[name] == labels[:, i] for i, name in enumerate(ATTRIBUTES)], 1)
    torch.testing.assert_close(fidelity["accuracy"], brute.double().mean(1))
    assert (
        fidelity["accuracy"].mean() > 0.9
        and ((fidelity["confidence"] >= 0) & (fidelity["confidence"] <= 1)).all()
    )
    wrong = labels.roll(1, dims=0)  # every image judged against another scene's caption
    assert (
        quality.prompt_fidelity(classifier, images, wrong)["confidence"].mean()
        < fidelity["confidence"].mean() - 0.2
    )
    with pytest.raises(ValueError, match="labels must have shape"):
        quality.prompt_fidelity(classifier, images, labels[:, :3])


def test_model_card_gate_table_marks_each_gate_met_or_missed():
    """The card's gate rows against hand-computed thresholds (3x chance, a guidance gain, 2x closer)."""
    from geomlib.sd.mini.card import _gate_summary

    accuracy = dict.fromkeys(ATTRIBUTES, 0.9)
    results = {
        "chance": {name: 1 / len(values) for name, values in ATTRIBUTES.items()},
        "prompt_accuracy": {"1.0": {**accuracy, "shape": 0.1}, "7.5": {**accuracy, "shape": 0.5}},
        "memorisation": {"distance_novel": {"median": 0.2}, "distance_to_own_image": {"median": 0.1}},
    }
    rows = {
        line.split(" | ")[0].strip("| "): line.rsplit("|", 2)[1].strip()
        for line in _gate_summary(results).splitlines()[4:]
    }
    assert rows == {
        "colour accuracy at guidance 7.5 (3x chance)": "met",
        "background accuracy at guidance 7.5 (3x chance)": "met",
        "shape accuracy at guidance 7.5 (3x chance)": "missed",  # 0.5 < 3 / 5
        "mean accuracy, guidance 7.5 minus guidance 1.0": "met",
        "median distance: novel to nearest / memorised to own image": "met",  # exactly 2x
    }


@shipped
def test_chapters_default_to_the_shipped_model_with_a_portable_label():
    """Every latent chapter's default in smoke/book is the offline model, labelled without the
    machine's absolute path (figures in the published book name it); paper asks for SD 1.4."""
    assert Path(pipelines.default_model("book")) == MODEL
    assert pipelines.default_model("paper") == pipelines.SD14
    _, label = pipelines.open_model(pipelines.default_model("smoke"), "cpu")
    assert label == "mini-sd (data/mini-sd)"


@shipped
def test_shipped_model_card_is_exactly_what_the_script_writes(tmp_path):
    """No hand edits: the card re-rendered from the shipped JSON records equals the shipped card."""
    import shutil

    from geomlib.sd.mini.card import rerender

    for name in ("training.json", "quality.json", "world.json"):
        shutil.copy(MODEL / name, tmp_path / name)
    assert rerender(tmp_path).read_text() == (MODEL / "MODEL_CARD.md").read_text()


@shipped
def test_model_card_names_the_software_that_trained_the_model_not_the_one_rendering_it(tmp_path, monkeypatch):
    """The card renders the versions recorded in training.json; upgrading a package later (here,
    in-process) must not change it."""
    import shutil

    import diffusers
    import transformers

    from geomlib.sd.mini.card import rerender

    for name in ("training.json", "quality.json", "world.json"):
        shutil.copy(MODEL / name, tmp_path / name)
    before = rerender(tmp_path).read_text()
    monkeypatch.setattr(transformers, "__version__", "99.0.0")
    monkeypatch.setattr(diffusers, "__version__", "98.0.0")
    monkeypatch.setattr(torch, "__version__", "97.0.0")
    after = rerender(tmp_path).read_text()
    assert after == before and "99.0.0" not in after and "transformers 5.23.0" in after


def test_training_records_its_software_and_the_card_renders_the_record():
    from geomlib.sd.mini.card import _software_clause

    record = train.software_record()
    assert record["torch"] == torch.__version__ and record["numpy"] == np.__version__
    assert set(record) == {"python", "platform", "torch", "diffusers", "transformers", "numpy"}
    clause = _software_clause({"software": record})
    assert f"torch {torch.__version__}" in clause and record["platform"] in clause
    assert "not recorded" not in clause
    assert "not recorded" in _software_clause({"software": {"torch": "2.0"}})
    assert _software_clause({}) == "The training run recorded no software versions"
