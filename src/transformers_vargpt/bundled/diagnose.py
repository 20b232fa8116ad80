"""Where a shapes-world VARGPT's wrong drawings go wrong: the VQVAE, or which scale of the generator.

    python -m transformers_vargpt.bundled.diagnose --model DIR [--seeds 0 1 2 3] [--output FILE.json]

Generation rows of the bundled recipe draw the shape in one fixed box (`bundled.dataset.DRAWING_BOX`), so every prompt
has one right picture: the scene rendered in that box, whose codes the VQVAE's encoder gives. Two measurements on the
held-out combinations (the pixel checker of `shapes_world` judges every picture):

- **the VQVAE's ceiling**: the share of those right pictures that read right after the VQVAE's round trip (encode,
  decode). A combination that fails here cannot be drawn right by a generator that learnt the encoder's codes.
- **forced scales**: drawings whose first `k` scales are forced to the right picture's codes, the later scales sampled
  with the model's saved settings, for every `k` from 0 (ordinary drawing) to all scales (the round trip). The `k` at
  which a combination starts reading right is the scale where the generator's own choices go wrong.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..shapes_world import GENERATION_PROMPTS, Scene, check_image, held_out_combinations, render
from .dataset import DRAWING_BOX, scaled_box

Combination = tuple[str, str, str]  # (colour, shape, background)


class ForcedScales(LogitsProcessor):
    """Makes the code sampler pick `codes`' values at the first `num_forced_scales` scales (later scales unchanged).

    codes: (B, L) code indices of whole images, all scales concatenated; `scale_sizes` gives each scale's side.
    """

    def __init__(self, codes: torch.LongTensor, scale_sizes: list[int] | tuple[int, ...], num_forced_scales: int):
        self.codes = codes
        self.scale_ends = np.cumsum([side * side for side in scale_sizes])
        self.num_forced_scales = num_forced_scales

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: the B×l codes drawn so far; scores: (B·s²)×V for the scale being drawn, image-major
        done = input_ids.shape[1]
        scale_index = int(np.searchsorted(self.scale_ends, done, side="right"))
        if scale_index >= self.num_forced_scales:
            return scores
        wanted = self.codes[:, done : int(self.scale_ends[scale_index])].reshape(-1).to(scores.device)
        if wanted.numel() != scores.shape[0]:
            raise ValueError(f"scale {scale_index} has {scores.shape[0]} score rows but the forced codes give "
                             f"{wanted.numel()}: the codes' batch must match the prompts'")
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(wanted.numel(), device=scores.device), wanted] = 0.0
        return forced


def right_pictures(combinations: list[Combination], box: tuple[int, int, int, int]) -> list[Scene]:
    """Each combination's scene drawn in `box`: the one right picture of its prompts."""
    return [Scene(shape=shape, color=color, background=background, box=box) for color, shape, background in combinations]


def pixel_values(scenes: list[Scene], image_size: int) -> torch.Tensor:
    """Rendered scenes as the VQVAE reads them: B×3×H×W in [-1, 1] (as `training.vqvae.images_to_tensor`, which
    needs the `train` extra to import)."""
    arrays = np.stack([np.asarray(render(scene, image_size), dtype=np.float32) for scene in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """B×3×H×W floats in `value_range` → B×H×W×3 uint8."""
    low, high = value_range
    scaled = (images.float().clamp(low, high) - low) / (high - low)
    return (scaled.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def vqvae_ceiling(model, combinations: list[Combination], box: tuple[int, int, int, int]) -> dict:
    """Which combinations' right pictures (drawn in `box`) read right after the VQVAE's round trip."""
    vqvae = model.model.vqvae
    scenes = right_pictures(combinations, box)
    pixels = pixel_values(scenes, vqvae.config.image_size).to(model.device, vqvae.dtype)
    pictures = to_uint8(vqvae.decode(vqvae.tokenize(pixels)), (-1.0, 1.0))
    checked = [check_image(picture) for picture in pictures]
    missed = [{"combination": list(c), "read_as": [k.color, k.shape, k.background]}
              for c, k, s in zip(combinations, checked, scenes) if not k.matches(s)]
    return {"accuracy": 1 - len(missed) / len(combinations), "num_combinations": len(combinations), "missed": missed}


@torch.no_grad()
def forced_scale_accuracy(model, processor, combinations: list[Combination], seeds: list[int],
                          num_forced_scales: int, box: tuple[int, int, int, int], batch_size: int = 24) -> dict:
    """Drawings of every combination × phrasing × seed with the first `num_forced_scales` scales forced to the right
    picture's codes; accuracy and the combinations missed most."""
    vqvae = model.model.vqvae
    image_config = model.image_generation_config()
    requests = [(c, template, seed) for seed in seeds for template in range(len(GENERATION_PROMPTS)) for c in combinations]
    # each combination's right codes, encoded once (every phrasing and seed forces the same ones)
    all_scenes = right_pictures(combinations, box)
    all_codes = vqvae.tokenize(pixel_values(all_scenes, vqvae.config.image_size).to(model.device, vqvae.dtype))
    row_of = {c: row for row, c in enumerate(combinations)}
    right = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        rows = [row_of[c] for c, _, _ in chunk]
        scenes = [all_scenes[row] for row in rows]
        codes = all_codes[rows]
        inputs = processor(text=[scene.prompt(template) for scene, (_, template, _) in zip(scenes, chunk)],
                           generation_mode="image", return_tensors="pt").to(model.device)
        generator = torch.Generator(model.device).manual_seed(1000 * chunk[0][2] + start)
        forcing = ForcedScales(codes, vqvae.config.scale_sizes, num_forced_scales)
        output = model.generate_images(inputs["input_ids"], inputs["attention_mask"], generator=generator,
                                       generation_config=image_config, logits_processor=LogitsProcessorList([forcing]))
        pictures = to_uint8(output.images, (0.0, 1.0))
        right += [check_image(picture).matches(scene) for picture, scene in zip(pictures, scenes)]
    missed = Counter(" ".join(c) for (c, _, _), ok in zip(requests, right) if not ok)
    return {"forced_scales": num_forced_scales, "num_images": len(right), "accuracy": sum(right) / len(right),
            "missed": dict(missed.most_common())}


def diagnose(model_path: str, seeds: list[int], device: str = "cpu") -> dict:
    from transformers import AutoProcessor

    from ..modeling_vargpt import VargptForConditionalGeneration

    model = VargptForConditionalGeneration.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    combinations = held_out_combinations()
    box = scaled_box(DRAWING_BOX, model.config.vq_config.image_size)
    num_scales = len(model.config.vq_config.scale_sizes)
    return {
        "model": str(model_path),
        "drawing_box": list(box),
        "seeds": seeds,
        "vqvae_ceiling": vqvae_ceiling(model, combinations, box),
        "forced_scales": [forced_scale_accuracy(model, processor, combinations, seeds, k, box)
                          for k in range(num_scales + 1)],
    }


def summary(report: dict) -> str:
    ceiling = report["vqvae_ceiling"]
    lines = [f"VQVAE round trip of the right pictures: {100 * ceiling['accuracy']:.1f}% of "
             f"{ceiling['num_combinations']} held-out combinations read right"
             + "".join(f"; {' '.join(m['combination'])} reads as {' '.join(map(str, m['read_as']))}"
                       for m in ceiling["missed"])]
    for row in report["forced_scales"]:
        missed = ", ".join(f"{name} {count}" for name, count in list(row["missed"].items())[:4])
        lines.append(f"first {row['forced_scales']} scales forced: {100 * row['accuracy']:.1f}% of {row['num_images']}"
                     + (f" (missed most: {missed})" if missed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (e.g. transformers_vargpt.BUNDLED_MODEL)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="sampling seeds per prompt")
    parser.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    report = diagnose(args.model, args.seeds, args.device)
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))


if __name__ == "__main__":
    main()
