"""``python -m geomlib describe / merge``: rows equal ``geomlib.describe`` on the encoded latents,
resume loses nothing and duplicates nothing, two accelerate processes equal one, bad input exits 2.

Every run uses the tiny random pipeline saved to disk and loaded by path (the hub's code path),
8x8 PNGs written here from known pixel arrays, a sketch of k = 8 and one thread.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import geomlib
from geomlib import cli, describe
from geomlib.runtime.profiles import torch_threads
from geomlib.sd import runs
from geomlib.sd.decoder import DescriptorSettings, encode_images, latent_decoder
from geomlib.sd.images import InputError
from geomlib.sd.pipelines import load_pipeline
from geomlib.sd.sampling import generate, initial_latents

DESCRIPTOR_OPTIONS = ["--k", "8", "--seed", "3", "--radius", "0.1", "--n-dirs", "2"]
QUIET = ["--threads", "1", "--no-progress"]
N_IMAGES = 5


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from geomlib.sd.pipelines import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_random_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """``N_IMAGES`` random 8x8 RGB PNGs, one in a subfolder; their pixels by expected id."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = {}
    for i in range(N_IMAGES):
        name = f"sub/img{i}.png" if i == 3 else f"img{i}.png"
        pixels[name] = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels[name]).save(folder / name)
    return folder, pixels


def describe_images(model: Path, folder: Path, out: Path, *extra: str) -> int:
    argv = ["describe", "--model", str(model), "--images", str(folder), "--out", str(out)]
    return cli.main([*argv, *DESCRIPTOR_OPTIONS, *QUIET, *extra])


def read(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tiny_model, images, tmp_path_factory) -> pd.DataFrame:
    """One complete single-process run, batch size 2 (three part files)."""
    out = tmp_path_factory.mktemp("reference") / "d.parquet"
    assert describe_images(tiny_model, images[0], out, "--batch-size", "2") == 0
    return read(out)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same ids in the same order, settings equal, descriptors equal up to float32 rounding."""
    assert got["id"].tolist() == want["id"].tolist()
    np.testing.assert_allclose(got["local_scaling"], want["local_scaling"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["local_rank"], want["local_rank"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["local_complexity"], want["local_complexity"])
    settings = ["method", "k", "seed", "radius", "n_dirs", "height", "width", "geomlib_version"]
    pd.testing.assert_frame_equal(got[settings], want[settings])


def test_rows_equal_describe_on_the_encoded_latents(tiny_model, images, reference, one_thread, describe_each):
    folder, pixels = images
    pipe = load_pipeline(tiny_model, device="cpu")
    ids = sorted(pixels)
    batch = torch.stack([torch.from_numpy(pixels[i]).permute(2, 0, 1).float() / 255 for i in ids])
    # one image per encoder call and one latent per describe call, as the command line does, so
    # that even δ is the same computation (batched calls move it: geomlib.BATCH_TOLERANCE)
    latents = encode_images(pipe, batch, batch_size=1)
    options = dict(method="projected", k=8, seed=3, radius=0.1, n_dirs=2)
    truth = describe_each(latent_decoder(pipe), latents, **options)

    assert reference["id"].tolist() == ids  # relative paths, sorted, subfolders included
    np.testing.assert_allclose(reference["local_scaling"], truth.local_scaling.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference["local_rank"], truth.local_rank.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(reference["local_complexity"], truth.local_complexity.numpy())
    assert reference["local_scaling"].nunique() == N_IMAGES  # distinct images, distinct values
    row = reference.iloc[0]
    assert (row["method"], row["k"], row["seed"], row["radius"], row["n_dirs"]) == ("projected", 8, 3, 0.1, 2)
    assert (row["height"], row["width"], row["dtype"]) == (8, 8, "float32")
    assert row["model"] == str(tiny_model) and row["geomlib_version"] == geomlib.__version__


def test_resume_after_a_subset_a_crash_and_a_lost_part(tiny_model, images, reference, tmp_path, monkeypatch):
    out = tmp_path / "d.parquet"
    assert describe_images(tiny_model, images[0], out, "--limit", "2", "--batch-size", "2") == 0
    assert len(read(out)) == 2

    calls = []
    real_rows = runs.image_rows

    def crash_on_second_batch(batch, job):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        return real_rows(batch, job)

    monkeypatch.setattr(runs, "image_rows", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        describe_images(tiny_model, images[0], out, "--batch-size", "2")
    assert calls == [2, 1] and len(read(out)) == 4  # the batch before the crash is kept
    monkeypatch.setattr(runs, "image_rows", real_rows)
    (out / ".part-rank0.tmp").write_bytes(b"torn write")  # what a kill mid-write leaves
    lost = sorted(out.glob("part-*.parquet"))[0]
    lost.unlink()

    assert describe_images(tiny_model, images[0], out, "--batch-size", "2") == 0
    resumed = read(out)
    assert not resumed["id"].duplicated().any()
    assert_same_rows(resumed, reference)
    parts = sorted(out.glob("part-*.parquet"))
    assert describe_images(tiny_model, images[0], out) == 0  # nothing left to do: nothing written
    assert sorted(out.glob("part-*.parquet")) == parts


def test_resume_with_other_settings_is_refused(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "d.parquet"
    assert describe_images(tiny_model, images[0], out, "--limit", "1") == 0
    argv = ["describe", "--model", str(tiny_model), "--images", str(images[0]), "--out", str(out)]
    assert cli.main([*argv, "--k", "4", *QUIET]) == cli.EXIT_BAD_INPUT
    assert "k=[8]" in capsys.readouterr().err
    assert len(read(out)) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_equal_one_after_merge(tiny_model, images, reference, tmp_path):
    out = tmp_path / "d.parquet"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    command = [*launch, "-m", "geomlib", "describe", "--model", str(tiny_model), "--images", str(images[0])]
    command += ["--out", str(out), *DESCRIPTOR_OPTIONS, "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2" in done.stderr and "rank 1/2" in done.stderr
    ranks = {path.stem.rsplit("rank", 1)[1] for path in out.glob("part-*.parquet")}
    assert ranks == {"0", "1"}  # both processes wrote their own parts
    assert len(pd.read_parquet(out)) == N_IMAGES  # disjoint shards: no item computed twice

    merged = tmp_path / "merged.parquet"
    assert cli.main(["merge", str(out), "--into", str(merged)]) == 0
    assert_same_rows(pd.read_parquet(merged), reference)


def test_merge_sorts_deduplicates_and_refuses_conflicts(tiny_model, images, reference, tmp_path, capsys):
    out = tmp_path / "d.parquet"
    assert describe_images(tiny_model, images[0], out, "--batch-size", "2") == 0
    first = sorted(out.glob("part-*.parquet"))[0]
    shutil.copy(first, out / "part-99999999-rank7.parquet")  # the same rows twice
    assert cli.main(["merge", str(out)]) == 0
    merged = pd.read_parquet(tmp_path / "d.merged.parquet")
    assert_same_rows(merged, reference)  # one row per id, sorted

    table = pq.read_table(first)
    shifted = table.to_pandas()
    shifted["local_scaling"] += 1.0
    pq.write_table(pa.Table.from_pandas(shifted, schema=table.schema), out / "part-99999999-rank7.parquet")
    assert cli.main(["merge", str(out)]) == cli.EXIT_BAD_INPUT
    assert "different values" in capsys.readouterr().err


def test_prompts_give_one_row_per_prompt_seed_and_step(tiny_model, tmp_path, one_thread):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \n")
    out = tmp_path / "t.parquet"
    argv = ["describe", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(out)]
    argv += [
        "--steps",
        "2",
        "--height",
        "8",
        "--width",
        "8",
        "--samples-per-prompt",
        "2",
        "--noise-seed",
        "5",
    ]
    assert cli.main([*argv, "--k", "8", "--batch-size", "3", *QUIET]) == 0
    rows = pd.read_parquet(out).sort_values(["prompt_index", "noise_seed", "step"]).reset_index(drop=True)
    assert len(rows) == 2 * 2 * 3 and not rows.duplicated(["id", "step"]).any()
    assert rows["step"].tolist() == [0, 1, 2] * 4
    assert set(rows["noise_seed"]) == {5, 6} and set(rows["prompt"]) == {"a red circle", "a blue square"}
    assert (rows.loc[rows["step"] == 2, "timestep"] == 0).all()

    pipe = load_pipeline(tiny_model, device="cpu")
    noise = torch.cat([initial_latents(pipe, 1, seed=6, height=8, width=8)])
    trajectory = generate(pipe, ["a blue square"], latents=noise, num_inference_steps=2).trajectory
    truth = describe(latent_decoder(pipe), trajectory[:, 0].contiguous(), method="projected", k=8)
    sample = rows[(rows["prompt"] == "a blue square") & (rows["noise_seed"] == 6)]
    np.testing.assert_allclose(sample["local_scaling"], truth.local_scaling.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sample["local_rank"], truth.local_rank.numpy(), rtol=1e-5, atol=1e-5)


def test_a_describe_run_from_python_is_the_command(tiny_model, images, reference, tmp_path):
    run = runs.DescribeRun(
        model=str(tiny_model),
        out=tmp_path / "d.parquet",
        source=runs.ImageInput(images[0]),
        descriptors=DescriptorSettings(k=8, seed=3, radius=0.1, n_dirs=2),
        batch_size=4,
        keep_sigma=True,
        progress=False,
    )
    with torch_threads(1):
        rows = runs.describe_to_table(run)
    assert_same_rows(rows, reference)
    sigma = np.stack(rows["singular_values"].to_numpy())
    assert sigma.shape == (N_IMAGES, 8)  # k = 8 values of the sketch per image
    np.testing.assert_allclose(np.log(sigma).sum(1), rows["local_scaling"], rtol=1e-4)
    with pytest.raises(InputError, match="no such folder"):
        runs.describe_to_table(
            runs.DescribeRun(
                model=str(tiny_model),
                out=tmp_path / "e.parquet",
                source=runs.ImageInput(tmp_path / "nowhere"),
            )
        )


def write_truncated_png(path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)  # incompressible: half the file still holds the header
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


def test_an_image_failing_mid_run_exits_2_and_keeps_the_rows(tiny_model, images, tmp_path, capsys):
    folder = tmp_path / "imgs"
    shutil.copytree(images[0], folder)
    write_truncated_png(folder / "z_truncated.png")
    out = tmp_path / "d.parquet"
    assert describe_images(tiny_model, folder, out, "--batch-size", "2") == cli.EXIT_BAD_INPUT
    assert "z_truncated.png" in capsys.readouterr().err
    assert len(read(out)) == 4  # two full batches before the failing one
    assert describe_images(tiny_model, folder, out, "--batch-size", "2", "--skip-unreadable") == 0
    assert read(out)["id"].tolist() == sorted(images[1])


def bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "ok.png")
    if kind == "unreadable":
        (folder / "broken.png").write_bytes(b"not an image")
    elif kind == "mixed":
        Image.fromarray(np.zeros((16, 8, 3), dtype=np.uint8)).save(folder / "tall.png")
    elif kind == "empty":
        (folder / "ok.png").unlink()
        (folder / "notes.txt").write_text("no images here")
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "no images found"),
        ("missing", "no such folder"),
        ("unreadable", "broken.png"),
        ("mixed", "16x8: 1 image(s), e.g. tall.png"),
        ("missing-model", "no-such-model"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tiny_model, tmp_path, capsys, kind, message):
    if kind == "missing":
        folder = tmp_path / "nowhere"
    else:
        folder = bad_folder(tmp_path, "ok" if kind == "missing-model" else kind)
    model = tmp_path / "no-such-model" if kind == "missing-model" else tiny_model
    assert describe_images(model, folder, tmp_path / "d.parquet") == cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("d.parquet/part-*"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--n-dirs", "4"], "give --radius"),
        (["--k", "0"], "--k must be a positive integer"),
        (["--steps", "3"], "only for --prompts"),
        (["--height", "8"], "add --resize"),
        (["--radius", "-1"], "--radius must be a positive number"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, options, message):
    argv = ["describe", "--model", "unused", "--images", str(tmp_path), "--out", str(tmp_path / "d")]
    assert cli.main([*argv, *options]) == cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_empty_prompt_file_and_file_as_out_exit_2(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("\n  \n")
    argv = [
        "describe",
        "--model",
        "unused",
        "--prompts",
        str(tmp_path / "p.txt"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "no prompts" in capsys.readouterr().err
    (tmp_path / "o").write_text("a file")
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "exists and is a file" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["describe", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    describe_parser = cli.build_parser()._subparsers._group_actions[0].choices["describe"]
    for action in describe_parser._actions:
        assert action.help and len(action.help) > 10, action.option_strings
        assert all(option in text for option in action.option_strings)
    for topic in ("accelerate launch", "geomlib merge", "resume", "exit status"):
        assert topic in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--device", "banana"], "--device banana"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:999"], "--device"),
        (["--radius", "0.1", "--n-dirs", "10000"], "latent dimension"),
        (["--chunk-size", "0"], "--chunk-size must be a positive integer"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
    ],
)
def test_mistakes_found_late_still_exit_2_in_one_line(tiny_model, images, tmp_path, capsys, options, message):
    """Mistakes that need the model or the device to be seen: still exit 2, one line, no traceback."""
    assert describe_images(tiny_model, images[0], tmp_path / "d.parquet", *options) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\nerror:") + err.startswith("error:") == 1


def test_an_out_that_cannot_be_written_fails_before_the_model_loads(
    tiny_model, images, tmp_path, capsys, monkeypatch
):
    """A folder that cannot be made (its parent is a file; read-only folders fail the same way for
    a user without root's rights)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(runs, "load_model", lambda *a: pytest.fail("the model must not load"))
    assert describe_images(tiny_model, images[0], tmp_path / "a-file" / "d.parquet") == cli.EXIT_BAD_INPUT
    assert "cannot write" in capsys.readouterr().err


def test_a_part_that_is_not_parquet_exits_2_and_says_which(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "d.parquet"
    out.mkdir()
    (out / "part-00000000-rank0.parquet").write_bytes(b"\x80\x04not a parquet file")
    assert describe_images(tiny_model, images[0], out) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "part-00000000-rank0.parquet" in err and "Traceback" not in err


def test_images_too_large_for_memory_exit_2_with_a_hint(tiny_model, tmp_path, capsys, monkeypatch):
    """Checked from an estimate before anything is allocated (here the free memory is made small)."""
    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    monkeypatch.setattr(runs, "free_memory", lambda device: 1024)
    argv = ["--radius", "0.1", "--n-dirs", "4"]
    assert describe_images(tiny_model, folder, tmp_path / "d.parquet", *argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "GiB are free" in err and "--resize" in err and "--chunk-size" in err


def test_the_memory_estimate_scales_with_the_pixels_and_the_vertices(tiny_model):
    from geomlib.sd.decoder import estimate_memory

    pipe = load_pipeline(tiny_model, device="cpu")
    small = estimate_memory(pipe, 16, 16, DescriptorSettings(k=8, radius=0.1, n_dirs=4))
    large = estimate_memory(pipe, 64, 64, DescriptorSettings(k=8, radius=0.1, n_dirs=4))
    chunked = estimate_memory(pipe, 64, 64, DescriptorSettings(k=8, radius=0.1, n_dirs=4, chunk_size=2))
    assert large.vertex_pass == pytest.approx(16 * small.vertex_pass, rel=0.01)
    assert chunked.vertex_pass == pytest.approx(large.vertex_pass / 4, rel=0.01)  # 2 of 8 vertices a pass


def test_one_pixel_images_exit_2_and_say_resize(tiny_model, tmp_path, capsys):
    folder = tmp_path / "dots"
    folder.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(folder / "a.png")
    assert describe_images(tiny_model, folder, tmp_path / "d.parquet") == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "multiples of the VAE factor" in err and "--resize" in err and "Traceback" not in err
