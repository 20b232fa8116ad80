"""VargptProcessor: parity with the released processor's token ids and pixels, generation prompts, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from transformers_vargpt.configuration_vargpt import VargptConfig
from transformers_vargpt.processing_vargpt import VARGPTLlavaProcessor, VargptProcessor

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TINY = FIXTURES / "vargpt-original-tiny"
SIZES = {"patch_nums": [1, 2, 3, 4], "image_gen_size": 64}
T2I_TEXT = "Please design a drawing of a butterfly on a flower."


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((TINY / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden_tensors() -> dict[str, torch.Tensor]:
    return load_file(TINY / "golden.safetensors")


@pytest.fixture(scope="module")
def processor() -> VargptProcessor:
    return VargptProcessor.from_pretrained(TINY, **SIZES)


@pytest.fixture(scope="module")
def und_image() -> PIL.Image.Image:
    with PIL.Image.open(TINY / "und_image.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def auto_registered() -> None:
    # what the package __init__ registers; idempotent, so harmless once the package does it itself
    AutoProcessor.register(VargptConfig, VargptProcessor, exist_ok=True)
    AutoProcessor.register("vargpt_llava", VARGPTLlavaProcessor, exist_ok=True)


def test_chat_template_renders_released_prompt(processor, golden):
    prompt = processor.apply_chat_template(golden["und_conversation"], add_generation_prompt=True)
    assert prompt == golden["und_prompt"]


def test_understanding_inputs_match_released_processor(processor, golden, golden_tensors, und_image):
    inputs = processor(images=und_image, text=golden["und_prompt"], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden_tensors["und_input_ids"])
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 16
    torch.testing.assert_close(inputs["pixel_values"], golden_tensors["und_pixel_values"], atol=1e-5, rtol=0)


def test_image_path_is_read_like_the_opened_image(processor, golden, golden_tensors):
    inputs = processor(images=str(TINY / "und_image.png"), text=golden["und_prompt"], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden_tensors["und_input_ids"])
    torch.testing.assert_close(inputs["pixel_values"], golden_tensors["und_pixel_values"], atol=1e-5, rtol=0)


def test_text_to_image_prompt_matches_released_ids(processor, golden, golden_tensors):
    assert processor.build_text_to_image_prompt(T2I_TEXT) == golden["t2i_prompt"] + "<|image_gen_start|>"
    inputs = processor(text=T2I_TEXT, generation_mode="image", return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden_tensors["t2i_input_ids"])
    # the same ids as a plain list (what a generation config's negative_prompt_ids holds)
    assert processor.text_to_image_prompt_ids(T2I_TEXT) == golden_tensors["t2i_input_ids"][0].tolist()
    with pytest.raises(ValueError, match="empty"):
        processor.text_to_image_prompt_ids("  ")


def test_image_gen_marker_expands_to_released_generation_sequence(processor, golden, golden_tensors):
    inputs = processor(text=golden["gen_prompt"] + "<image_gen>", return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden_tensors["gen_input_ids"])
    assert (inputs["input_ids"] == processor.image_gen_pad_token_id).sum() == 1 + 4 + 9 + 16


def test_released_defaults_expand_image_gen_to_680_pads(processor):
    released = VargptProcessor(processor.image_processor, processor.tokenizer, chat_template=processor.chat_template)
    ids = released(text="Here it is.<image_gen>")["input_ids"][0]
    assert released.patch_nums == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16] and released.image_gen_size == 256
    assert ids.count(released.image_gen_pad_token_id) == 680


def test_batched_text_to_image_prompts_are_left_padded(processor, golden_tensors):
    inputs = processor(text=["a cat", T2I_TEXT], generation_mode="image", return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert torch.equal(ids[1:], golden_tensors["t2i_input_ids"])
    assert (ids[:, -1] == processor.image_gen_start_token_id).all()
    num_pad = int((mask[0] == 0).sum())
    assert num_pad > 0 and (ids[0, :num_pad] == processor.tokenizer.pad_token_id).all()
    assert torch.equal(mask[0], torch.cat([torch.zeros(num_pad), torch.ones(ids.shape[1] - num_pad)]).long())


def test_padding_side_right_for_training(processor):
    inputs = processor(text=["a cat", T2I_TEXT], generation_mode="image", padding_side="right", return_tensors="pt")
    assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    assert inputs["input_ids"][0, -1] == processor.tokenizer.pad_token_id
    assert inputs["attention_mask"][0, -1] == 0 and inputs["attention_mask"][1].all()


def test_pixel_gen_values_are_short_side_resized_center_cropped_in_unit_range(processor):
    # 512x128: black | white (middle half) | black; short side 128 -> 64 keeps only the white middle after the crop
    bands = np.zeros((128, 512, 3), dtype=np.uint8)
    bands[:, 128:384] = 255
    black = PIL.Image.new("RGB", (80, 100))
    texts = ["one <image_gen>", "two <image_gen>"]
    inputs = processor(text=texts, gen_images=[PIL.Image.fromarray(bands), black], return_tensors="pt")
    values = inputs["pixel_gen_values"]
    assert values.shape == (2, 3, 64, 64) and values.dtype == torch.float32
    torch.testing.assert_close(values[0], torch.ones(3, 64, 64))
    torch.testing.assert_close(values[1], -torch.ones(3, 64, 64))


@pytest.mark.parametrize("num_images", [0, 2])
def test_gen_images_count_must_match_markers(processor, num_images):
    with pytest.raises(ValueError, match=r"1 <image_gen> placeholder\(s\) but"):
        processor(text="Here it is.<image_gen>", gen_images=[PIL.Image.new("RGB", (64, 64))] * num_images)


@pytest.mark.parametrize(("text", "num_images"), [("<image>\nWhat?", 2), ("<image><image>\nWhat?", 1), ("<image>", 0)])
def test_images_must_match_image_placeholders(processor, text, num_images):
    images = [PIL.Image.new("RGB", (40, 40))] * num_images or None
    with pytest.raises(ValueError, match=r"<image> placeholder\(s\) but"):
        processor(text=text, images=images)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"text": ""}, ValueError, "empty prompt"),
        ({"text": ["a cat", "   "]}, ValueError, "empty prompt"),
        ({"text": "a cat", "generation_mode": "video"}, ValueError, "generation_mode must be one of"),
        ({"text": "a cat", "padding_side": "middle"}, ValueError, "padding_side must be"),
        ({"text": 3}, TypeError, "text must be a string"),
        ({"text": "<image>", "images": [3]}, TypeError, "images must be PIL images, numpy arrays"),
        ({"text": "<image>", "images": "/no/such/image.png"}, ValueError, "is not a file"),
        ({"text": "<image>", "images": str(TINY / "golden.json")}, ValueError, "is not an image file"),
        ({"text": "<image>", "images": np.zeros((5, 5, 2))}, ValueError, "image array must be"),
        ({"text": "<image>", "images": -np.ones((4, 4, 3))}, ValueError, "image values must lie in"),
    ],
)
def test_bad_inputs_raise_specific_errors(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(**kwargs)


def test_truncated_image_file_is_rejected(processor, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((TINY / "und_image.png").read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        processor(text="<image>", images=str(truncated))


def _pixels(processor: VargptProcessor, image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"]


def test_other_image_formats_are_converted_to_rgb(processor, und_image):
    white, gray = PIL.Image.new("RGB", (40, 40), (255, 255, 255)), PIL.Image.new("RGB", (40, 40), (128, 128, 128))
    transparent = PIL.Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    torch.testing.assert_close(_pixels(processor, transparent), _pixels(processor, white))
    torch.testing.assert_close(_pixels(processor, PIL.Image.new("L", (40, 40), 128)), _pixels(processor, gray))
    sixteen_bit = PIL.Image.fromarray(np.full((40, 40), 128 * 257, dtype=np.uint16))
    assert sixteen_bit.mode.startswith("I")
    torch.testing.assert_close(_pixels(processor, sixteen_bit), _pixels(processor, gray))
    expected = _pixels(processor, und_image)
    array = np.array(und_image)
    torch.testing.assert_close(_pixels(processor, torch.from_numpy(array).permute(2, 0, 1)), expected)
    torch.testing.assert_close(_pixels(processor, array.astype(np.float32) / 255), expected)


def test_unknown_image_token_is_rejected(processor):
    with pytest.raises(ValueError, match="has no '<img>' token"):
        VargptProcessor(processor.image_processor, processor.tokenizer, image_token="<img>")


def test_decoding_drops_special_tokens(processor, golden, golden_tensors):
    ids = golden_tensors["gen_input_ids"]
    assert processor.post_process_image_text_to_text(ids) == [golden["gen_prompt"]]
    assert processor.post_process_image_text_to_text(ids[0]) == [golden["gen_prompt"]]
    assert processor.batch_decode(ids) == processor.tokenizer.batch_decode(ids)
    assert "<|image_gen_pad|>" in processor.decode(ids[0])


def test_save_and_reload_keeps_generation_sizes_and_ids(processor, golden, golden_tensors, und_image, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["patch_nums"] == [1, 2, 3, 4] and saved["image_gen_size"] == 64 and saved["patch_size"] == 8
    reloaded = VargptProcessor.from_pretrained(tmp_path)
    assert reloaded.patch_nums == [1, 2, 3, 4] and reloaded.image_gen_size == 64
    assert "patch_nums" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    inputs = reloaded(images=und_image, text=golden["und_prompt"], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden_tensors["und_input_ids"])


def test_auto_processor_loads_released_and_saved_processors(auto_registered, golden, golden_tensors, tmp_path):
    released = AutoProcessor.from_pretrained(TINY, **SIZES)
    assert isinstance(released, VargptProcessor) and released.patch_nums == [1, 2, 3, 4]
    ids = released(text=T2I_TEXT, generation_mode="image", return_tensors="pt")["input_ids"]
    assert torch.equal(ids, golden_tensors["t2i_input_ids"])
    VargptProcessor.from_pretrained(TINY, **SIZES).save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is VargptProcessor and reloaded.image_gen_size == 64


def test_images_gen_is_the_deprecated_name_of_gen_images(processor):
    image = PIL.Image.new("RGB", (64, 64), "red")
    expected = processor(text="one <image_gen>", gen_images=[image], return_tensors="pt")
    with pytest.warns(FutureWarning, match="gen_images"):
        old = processor(text="one <image_gen>", images_gen=[image], return_tensors="pt")
    assert torch.equal(old["pixel_gen_values"], expected["pixel_gen_values"])
    assert torch.equal(old["input_ids"], expected["input_ids"])
    with pytest.raises(ValueError, match="once"):
        processor(text="one <image_gen>", gen_images=[image], images_gen=[image])
