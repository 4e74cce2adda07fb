"""geomlib.sd.images: one suffix list for every reader, images at their bit depth, the class-balanced
ImageNet sampler, and the one prompt reader for every file type."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geomlib.sd import images


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    deep, shallow = images.read_image(tmp_path / "g16.png"), images.read_image(tmp_path / "g8.png")
    torch.testing.assert_close(deep, torch.from_numpy(ramp / 65535).float().expand(3, -1, -1))
    assert (deep - shallow).abs().max() <= 1 / 255  # the 8-bit copy, within its rounding
    assert float(deep.mean()) == pytest.approx(0.5, abs=0.01)  # was 1.0: every value clipped to white
    crop = images.center_square(Image.open(tmp_path / "g16.png"), 32)
    assert abs(int(crop.mean()) - 127) <= 1


def test_every_reader_uses_one_suffix_list(tmp_path):
    for name in ("a.png", "b.JPG", "c.tif", "d.tiff", "e.webp", "f.bmp", "notes.txt"):
        (tmp_path / "cls").mkdir(exist_ok=True)
        if name.endswith(".txt"):
            (tmp_path / "cls" / name).write_text("not an image")
        else:
            Image.new("RGB", (40, 40)).save(tmp_path / "cls" / name)
    found = [p.name for p in images.image_files(tmp_path)]
    assert found == ["a.png", "b.JPG", "c.tif", "d.tiff", "e.webp", "f.bmp"]
    sample = images.ImageFolderImages(tmp_path, 6, size=32)
    assert sorted(p.name for p in sample.paths) == sorted(found)  # .tif/.tiff too (was skipped)


@pytest.mark.parametrize("suffix", [".txt", ".json", ".csv", ".tsv", ".parquet"])
def test_prompt_files_of_every_type_read_the_same(tmp_path, suffix):
    prompts = ["a cat", "a dog, sitting", "  ", "a fox"]
    path = tmp_path / f"p{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(prompts))
    elif suffix == ".json":
        path.write_text(json.dumps([{"prompt": p} for p in prompts]))
    elif suffix == ".parquet":
        pd.DataFrame({"caption": prompts}).to_parquet(path)
    else:
        pd.DataFrame({"prompt": prompts}).to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    assert images.read_prompts(path) == ["a cat", "a dog, sitting", "a fox"]


def test_bad_prompt_files_name_the_problem(tmp_path):
    (tmp_path / "p.yaml").write_text("- a cat")
    with pytest.raises(images.InputError, match="unsupported prompt file type"):
        images.read_prompts(tmp_path / "p.yaml")
    (tmp_path / "p.json").write_text(json.dumps({"prompt": "a cat"}))
    with pytest.raises(images.InputError, match="holds a list"):
        images.read_prompts(tmp_path / "p.json")
    with pytest.raises(images.InputError, match="does not exist"):
        images.read_prompts(tmp_path / "nothing.txt")
