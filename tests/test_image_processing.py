"""image_processing_vargpt: loading images, the targets of images to draw, and post-processing drawn images."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import torch

from transformers_vargpt.image_processing_vargpt import load_rgb_image, postprocess, prepare_generation_target
from transformers_vargpt.tiny_models import build_tiny_vargpt


def drawn_images() -> torch.Tensor:
    """Two 8x6 images in [0, 1], as `generate_images` returns them: (2, 3, 8, 6)."""
    return torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))


def test_postprocess_output_types():
    images = drawn_images()
    tensor = postprocess(images, output_type="pt")
    torch.testing.assert_close(tensor, images, atol=0, rtol=0)

    array = postprocess(images, output_type="np")
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (2, 8, 6, 3)
    np.testing.assert_array_equal(array, images.permute(0, 2, 3, 1).numpy())

    pil = postprocess(images, output_type="pil")
    assert len(pil) == 2 and all(image.mode == "RGB" and image.size == (6, 8) for image in pil)
    np.testing.assert_array_equal(np.asarray(pil[1]), np.round(array[1] * 255).astype(np.uint8))


def test_postprocess_of_decoder_range_and_clamping():
    images = drawn_images()
    decoded = images * 2 - 1  # the VQVAE's [-1, 1]
    torch.testing.assert_close(postprocess(decoded, "pt", value_range=(-1, 1)), images, atol=1e-6, rtol=0)
    overshoot = torch.full((1, 3, 2, 2), 1.5)
    overshoot[..., 0, 0] = -0.5
    clamped = postprocess(overshoot, "pt")
    assert clamped.max() == 1 and clamped.min() == 0
    assert np.asarray(postprocess(overshoot, "pil")[0])[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.zeros(1, 3, 4, 4),), {"output_type": "latent"}, "output_type"),
        ((torch.zeros(1, 3, 4, 4),), {"value_range": (0, 255)}, "value_range"),
        ((torch.zeros(3, 4, 4),), {}, r"\(B, 3, H, W\)"),
        ((np.zeros((1, 3, 4, 4)),), {}, r"\(B, 3, H, W\)"),
    ],
)
def test_postprocess_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        postprocess(*args, **kwargs)


def test_generation_target_is_the_centre_crop_in_minus_one_to_one():
    size = 16
    # 3 squares side by side: black, white, black; the centre crop is the white one
    pixels = np.zeros((size, 3 * size, 3), dtype=np.uint8)
    pixels[:, size : 2 * size] = 255
    target = prepare_generation_target(PIL.Image.fromarray(pixels), size)
    assert target.shape == (3, size, size) and target.dtype == np.float32
    np.testing.assert_array_equal(target, np.ones((3, size, size), dtype=np.float32))

    red = prepare_generation_target(PIL.Image.new("RGB", (40, 30), "red"), size)
    np.testing.assert_allclose(red[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(red[1:], -1.0, atol=1e-6)


def test_load_rgb_image_reads_datasets_records(tmp_path):
    image = PIL.Image.new("RGBA", (5, 4), (0, 0, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "blue.png"
    image.save(path)
    for record in ({"bytes": buffer.getvalue(), "path": None}, {"bytes": None, "path": str(path)}):
        loaded = load_rgb_image(record)
        assert loaded.mode == "RGB" and loaded.size == (5, 4) and loaded.getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ValueError, match="without bytes or path"):
        load_rgb_image({"bytes": None, "path": None})
    with pytest.raises(TypeError, match="datasets image records"):
        load_rgb_image(3)


def test_processor_uses_them():
    _, processor = build_tiny_vargpt(seed=0)
    image = PIL.Image.new("RGB", (50, 40), "green")
    inputs = processor(images_gen=[image], return_tensors="np")
    np.testing.assert_array_equal(inputs["pixel_gen_values"][0], prepare_generation_target(image, 64))
    images = drawn_images()
    np.testing.assert_array_equal(processor.postprocess(images, output_type="np"), postprocess(images, "np"))
