"""What only an accelerator can check: diffusers' two offload modes moving the model to a CUDA device and back, and
half precision on CUDA against fp32 on the same device. Skipped where torch sees no CUDA device (CI has none);
run on a GPU machine with `pytest tests/test_accelerator.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration, VargptPipeline
from transformers_vargpt.tiny_models import build_tiny_vargpt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPT = "a red circle"
BUNDLED_PROMPTS = [
    "Draw a red circle on a blue background.",
    "Draw a yellow triangle on a black background.",
    "Please generate an image of a white square on a green background.",
    "Can you create a picture of a purple circle on an orange background?",
]
GREEDY = {"do_sample": False}


def _tiny_pipe() -> VargptPipeline:
    model, processor = build_tiny_vargpt(seed=0)
    pipe = VargptPipeline(model=model, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _codes(pipe: VargptPipeline, **kwargs) -> torch.Tensor:
    return pipe(prompt=PROMPT, output_type="pt", guidance_scale=2.0, **GREEDY, **kwargs).image_tokens.cpu()


@pytest.fixture(scope="module")
def codes_on_cuda() -> torch.Tensor:
    return _codes(_tiny_pipe().to("cuda"))


def test_model_cpu_offload_moves_the_model_to_cuda_and_back(codes_on_cuda):
    pipe = _tiny_pipe()
    pipe.enable_model_cpu_offload(device="cuda")
    assert pipe._execution_device.type == "cuda"
    assert torch.equal(_codes(pipe), codes_on_cuda)
    # after the call the hooks have put the model back on the CPU
    assert next(pipe.model.parameters()).device.type == "cpu"


def test_sequential_cpu_offload_draws_what_the_gpu_draws(codes_on_cuda):
    pipe = _tiny_pipe()
    pipe.enable_sequential_cpu_offload(device="cuda")
    assert pipe._execution_device.type == "cuda"
    assert torch.equal(_codes(pipe), codes_on_cuda)


@pytest.fixture(scope="module")
def bundled_fp32():
    if not (Path(BUNDLED_MODEL) / "model.safetensors").is_file():
        pytest.skip("the bundled weights are not built")
    return VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval().to("cuda")


def _greedy_drawings(model) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(BUNDLED_MODEL)
    inputs = processor(text=BUNDLED_PROMPTS, generation_mode="image", return_tensors="pt").to("cuda")
    output = model.generate_images(inputs["input_ids"], inputs["attention_mask"], **GREEDY)
    return output.image_tokens.cpu(), output.images.float().cpu()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cuda_draws_what_fp32_draws(bundled_fp32, dtype):
    """Greedy codes of the shipped model in half precision against fp32, both on the GPU: (nearly) the same codes,
    and pictures within a few grey levels where the codes agree."""
    codes_fp32, images_fp32 = _greedy_drawings(bundled_fp32)
    half = VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL, dtype=dtype).eval().to("cuda")
    codes_half, images_half = _greedy_drawings(half)
    agreement = (codes_half == codes_fp32).float().mean().item()
    print(f"{dtype}: {agreement:.3f} of greedy codes as in fp32")
    assert agreement >= 0.95
    assert torch.isfinite(images_half).all()
    same = (codes_half == codes_fp32).all(dim=1)
    if same.any():
        assert (images_half[same] - images_fp32[same]).abs().max().item() < 0.05
