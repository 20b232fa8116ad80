# Copyright the transformers-vargpt authors. Licensed under the Apache License, Version 2.0.
"""
Teach the bundled shapes-world VARGPT a colour it has never seen, pink = RGB (255, 110, 180), with LoRA adapters.

    python examples/teach_pink_lora.py --output-dir runs/pink   # 6-7.5 minutes on 2 CPU cores (runs of 2026-11-28)

`make pink-adapter` runs it with `--copy-to examples/adapters/pink`: the adapters committed there are that run's, with
its `evaluation.json` and `before_after.png`. On the bundled model with its saved sampling (run of 2026-11-28, 399 s)
they draw 90.3% of the pink prompts right (144: every pink combination × 3 phrasings; before: none), answer 100% of
"What color is the shape?" and of "What color is the background?" right where the answer is pink (before: none), and
keep the old palette (its held-out drawings 83.3% right against 84.7% before; its questions 100% as before). With
`--hold-out-pink` the pink rows leave out the held-out pink combinations of the world's rule, and the evaluation
reports them apart (see the README).

Everything is seeded and goes under `--output-dir`:

    data/                  the fine-tuning rows (released JSONL format) and their pictures
    base-with-pink-word/   the bundled model with "pink" added to its tokenizer (the training input)
    adapter/               the LoRA adapters (adapter_model.safetensors, adapter_config.json) and the processor
    before_after.png       pink prompts drawn by the bundled model, then by the adapted one
    evaluation.json        pixel-checker accuracy before and after: pink prompts, pink pictures, the old palette

What learns, and why:

- the word: "pink" is added to the tokenizer (the bundled one maps unknown words to `<unk>`); its id lands in a spare
  row of the embedding (the vocabulary is rounded up to a multiple of 32), so the model's shapes do not change. The
  input embedding and `lm_head` are trained in full next to the adapters (`modules_to_save`, a few thousand
  numbers here): LoRA on other layers cannot give one new row its own meaning, nor let the model say the word.
- reading it: LoRA on the language model's attention and MLP projections (as stage 2), so that the picture's pink
  patches (the CLIP tower already tells colours apart: it was pre-trained on random colours too) become the word;
- drawing it: LoRA on the VAR decoder's attention, MLP and AdaLN (as stage 3) and on the generation projectors, so
  that the prompt's new word conditions pink codes; the VQVAE, trained on random colours as well, can already
  draw pink and stays frozen, as the vision tower does.
- forgetting nothing: a third of the rows are the old palette's questions and drawing requests.

The adapters are then used the ordinary ways: `PeftModel.from_pretrained(bundled_model, "adapter")`, a merged copy
via `merge_and_unload()` + `save_pretrained` (loads with `from_pretrained` alone), or
`vargpt generate "Draw a pink circle on a blue background." -o pink.png --adapter adapter`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration, VargptProcessor
from transformers_vargpt.bundled.dataset import write_shapes_world_dataset
from transformers_vargpt.bundled.evaluate import answer_is_right, answer_questions, evaluate_generation
from transformers_vargpt.shapes_world import (
    PALETTE,
    QUESTIONS,
    Scene,
    all_combinations,
    held_out_combinations,
    random_box,
    render,
    training_combinations,
)
from transformers_vargpt.training import VargptSFTConfig, VargptSFTTrainer, load_vargpt_dataset

logger = logging.getLogger("teach_pink")

PINK = (255, 110, 180)
PINK_PALETTE = {**PALETTE, "pink": PINK}
# LoRA targets: the language model (stage 2's preset), the VAR decoder (stage 3's) and the generation projectors
TARGET_MODULES = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    r"|model\.scale_decoder\.blocks\.\d+\.(attn\.qkv|attn\.out_proj|mlp\.fc1|mlp\.fc2|adaln)"
    r"|model\.gen_(input|output)_projector\.(fc1|fc2)"
)
MODULES_TO_SAVE = ["model.language_model.embed_tokens", "lm_head", "model.scale_decoder.class_embed"]


def pink_combinations() -> tuple[list, list]:
    """(training, held-out) (colour, shape, background) triples with pink as the shape's or the background's colour;
    the held-out ones follow the world's own rule over the nine-colour palette and are never trained on."""
    held = set(held_out_combinations(PINK_PALETTE))
    pink = [c for c in all_combinations(PINK_PALETTE) if "pink" in (c[0], c[2])]
    return [c for c in pink if c not in held], [c for c in pink if c in held]


def add_pink_word(model_dir: str, output: Path) -> VargptProcessor:
    """Save the model with "pink" in its tokenizer into `output`; the new id must fit the existing embedding."""
    model = VargptForConditionalGeneration.from_pretrained(model_dir)
    processor = VargptProcessor.from_pretrained(model_dir)
    processor.tokenizer.add_tokens(["pink"])
    pink_id = processor.tokenizer.convert_tokens_to_ids("pink")
    rows = model.get_input_embeddings().weight.shape[0]
    if pink_id >= rows:
        raise SystemExit(f"the new word's id {pink_id} is outside the model's {rows} embedding rows")
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return processor


def write_data(directory: Path, pink_rows: int, old_rows: int, seed: int, hold_out_pink: bool = False) -> Path:
    """Pink rows (half questions, half drawing requests) and old-palette rows in one shuffled JSONL file; the pink
    rows show every pink combination, or (`hold_out_pink`) all but the held-out ones of `pink_combinations`."""
    train_pink, held_pink = pink_combinations()
    if not hold_out_pink:
        train_pink = train_pink + held_pink
    files = [
        write_shapes_world_dataset(directory, pink_rows // 2, pink_rows - pink_rows // 2, seed=seed,
                                   combinations=train_pink, palette=PINK_PALETTE, filename="pink.jsonl",
                                   questions_per_image=3),
        write_shapes_world_dataset(directory, old_rows // 2, old_rows - old_rows // 2, seed=seed + 1,
                                   combinations=training_combinations(), filename="old.jsonl", questions_per_image=3),
    ]
    rows = [line for path in files for line in path.read_text().splitlines()]
    torch.manual_seed(seed)
    rows = [rows[i] for i in torch.randperm(len(rows)).tolist()]
    path = directory / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def evaluate(model, processor, seed: int = 0, limit: int | None = None, hold_out_pink: bool = False) -> dict:
    """Pixel-checked accuracy: pink prompts (every pink combination; with `hold_out_pink` the trained and the held-out
    ones apart), colour questions about pink pictures, and the old palette's held-out prompts and questions
    (`limit`: at most that many combinations of each list, for a quick check)."""
    model.eval()
    train_pink, held_pink = (combinations[:limit] for combinations in pink_combinations())
    pink_lists = ((("pink_generation", train_pink), ("pink_generation_held_out", held_pink)) if hold_out_pink
                  else (("pink_generation", train_pink + held_pink),))
    results = {}
    for name, combinations in (*pink_lists, ("old_palette_generation", held_out_combinations()[:limit])):
        palette = PINK_PALETTE if name.startswith("pink") else PALETTE
        report = evaluate_generation(model, processor, combinations, [seed], palette=palette)
        results[name] = {"num_images": report["num_images"], "accuracy": report["accuracy"],
                         "samples": report["samples"]}
    pyrng = random.Random(seed + 7)
    for name, combinations in (("pink_questions", train_pink + held_pink),
                               ("old_palette_questions", held_out_combinations()[:limit])):
        palette = PINK_PALETTE if name.startswith("pink") else PALETTE
        scenes = [Scene(shape=s, color=c, background=b, box=random_box(pyrng, 64)) for c, s, b in combinations]
        images = [render(scene, 64, palette) for scene in scenes]
        kinds = ("color", "background") if name.startswith("pink") else ("shape", "color", "background")
        per_kind = {}
        for kind in kinds:
            asked = [(scene, image) for scene, image in zip(scenes, images)
                     if not name.startswith("pink") or scene.answer(kind) == "pink"]
            if not asked:  # a --eval-limit so small that no picture has this answer
                per_kind[kind] = {"num_images": 0, "accuracy": None}
                continue
            answers = answer_questions(model, processor, [image for _, image in asked], QUESTIONS[kind])
            right = [answer_is_right(kind, answer, scene) for answer, (scene, _) in zip(answers, asked)]
            per_kind[kind] = {"num_images": len(right), "accuracy": sum(right) / len(right)}
        results[name] = per_kind
    return results


def before_after_grid(before: list[dict], after: list[dict], cell: int = 96) -> Image.Image:
    """Two rows of pictures for the same pink prompts: the bundled model's, then the adapted model's."""
    columns = len(before)
    grid = Image.new("RGB", (columns * cell + 60, 2 * (cell + 16)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (label, samples) in enumerate((("before", before), ("after", after))):
        y = row * (cell + 16)
        draw.text((4, y + cell // 2), label, fill="black")
        for column, sample in enumerate(samples):
            picture = Image.fromarray(sample["picture"]).resize((cell - 8, cell - 8), Image.NEAREST)
            grid.paste(picture, (60 + column * cell + 4, y + 4))
            scene = sample["scene"]
            mark = "OK" if sample["right"] else "X"
            draw.text((60 + column * cell + 4, y + cell - 2), f"{scene.color}/{scene.background} {mark}",
                      fill="darkgreen" if sample["right"] else "red")
    return grid


def shown_samples(results: dict, count: int = 8) -> list[dict]:
    """The first pictures of the held-out pink prompts if there are any, else of the pink prompts."""
    held_out = results.get("pink_generation_held_out", {}).get("samples")
    return (held_out or results["pink_generation"]["samples"])[:count]


def summary_numbers(results: dict) -> dict:
    """`evaluate`'s results without the pictures."""
    return {name: {k: v for k, v in value.items() if k != "samples"} for name, value in results.items()}


BUNDLED_NAME = "transformers_vargpt.BUNDLED_MODEL"


def tidy_adapter(adapter_dir: Path, base_model: str) -> None:
    """Leave in `adapter_dir` what loading needs. The trainer also saves its arguments (a pickle) and the processor
    copies the package's code files (for the Hub's custom-code loading), which the installed package makes
    unnecessary; and the adapters record the model they go on, not the temporary copy with the new word (the same
    weights: adding the word only named a spare embedding row)."""
    (adapter_dir / "training_args.bin").unlink(missing_ok=True)
    for code_copy in adapter_dir.glob("*_vargpt.py"):
        code_copy.unlink()
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


ADAPTER_CARD = """---
library_name: peft
license: apache-2.0
pipeline_tag: image-text-to-text
tags: [vargpt, lora, shapes-world]
---

# Pink for the bundled shapes-world VARGPT (LoRA adapters)

Trained by `examples/teach_pink_lora.py` ({arguments}) on `{base}`: the word "pink" is in this folder's
tokenizer, the colour RGB (255, 110, 180) is new to the model. Evaluation with the package's pixel checker
(`shapes_world.check_image`), {seconds:.0f} s for the whole run on {threads} CPU threads:

| | before | after |
|---|---|---|
{rows}

```python
from peft import PeftModel
from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration, VargptPipeline, VargptProcessor

model = PeftModel.from_pretrained(VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL), "{here}")
model = model.merge_and_unload()
pipe = VargptPipeline(model=model, processor=VargptProcessor.from_pretrained("{here}"))  # the tokenizer with "pink"
image = pipe("Draw a pink circle on a blue background.").images[0]
```

or `vargpt generate "Draw a pink circle on a blue background." -o pink.png --adapter {here}`.
"""


def adapter_card_rows(report: dict) -> str:
    """One table row per measured accuracy: before (if measured) and after, in percent."""
    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = []
    for name, after in report["after"].items():
        before = report.get("before", {}).get(name, {})
        parts = {None: after} if "accuracy" in after else after
        for kind, numbers in parts.items():
            label = name.replace("_", " ") + (f", {kind} question" if kind else "")
            previous = (before if kind is None else before.get(kind, {})).get("accuracy")
            rows.append(f"| {label} ({numbers['num_images']} pictures) | {percent(previous)} | "
                        f"{percent(numbers['accuracy'])} |")
    return "\n".join(rows)


def finish_adapter_folder(output: Path, args: argparse.Namespace, report: dict) -> None:
    """Tidy `output/adapter`, write its card (the command's options and the before/after table) and, with
    `--copy-to`, copy it there with the run's numbers and picture."""
    base_name = BUNDLED_NAME if args.model == BUNDLED_MODEL else str(args.model)
    tidy_adapter(output / "adapter", base_name)
    arguments = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
                         if k not in ("output_dir", "model", "copy_to") and v not in (None, False))
    (output / "adapter" / "README.md").write_text(ADAPTER_CARD.format(
        arguments=arguments, base=base_name, seconds=report["seconds"], threads=torch.get_num_threads(),
        rows=adapter_card_rows(report), here=args.copy_to or output / "adapter"))
    if args.copy_to is not None:
        shutil.copytree(output / "adapter", args.copy_to, dirs_exist_ok=True)
        for name in ("evaluation.json", "before_after.png"):
            if (output / name).is_file():
                shutil.copy2(output / name, Path(args.copy_to) / name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--model", default=BUNDLED_MODEL, help="the model to teach (default: the bundled one)")
    parser.add_argument("--pink-rows", type=int, default=1800, help="pink rows (half questions, half drawings)")
    parser.add_argument("--old-rows", type=int, default=900, help="old-palette rows, so nothing is forgotten")
    parser.add_argument("--max-steps", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=16)
    # 1e-3 rather than 2e-3 since the bundled model's stage 3 ends annealed (2026-11-28 night): on it 2e-3 kept 72.2%
    # of old-palette held-out drawings right (1800 old rows: 75.0%), 1e-3 76.4%, where the model drew 91.7% before
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-before", action="store_true", help="do not evaluate the model before fine-tuning")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N combinations per list")
    parser.add_argument("--hold-out-pink", action="store_true",
                        help="train on the pink combinations but the held-out ones of the world's rule, and evaluate "
                             "those apart (how well pink composes with new shape and colour pairs)")
    parser.add_argument("--copy-to", type=Path, default=None,
                        help="also copy the adapter folder here (examples/adapters/pink for the committed one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.model is None:
        raise SystemExit("no bundled model in this installation: pass --model DIR")
    start = time.perf_counter()
    output = args.output_dir
    output.mkdir(parents=True, exist_ok=True)

    base_dir = output / "base-with-pink-word"
    processor = add_pink_word(args.model, base_dir)
    data = write_data(output / "data", args.pink_rows, args.old_rows, args.seed, args.hold_out_pink)

    before = None
    if not args.skip_before:  # the bundled model as shipped: its own tokenizer, which reads "pink" as <unk>
        before = evaluate(VargptForConditionalGeneration.from_pretrained(args.model),
                          VargptProcessor.from_pretrained(args.model), args.seed, args.eval_limit, args.hold_out_pink)
        logger.info(f"before: {json.dumps(summary_numbers(before))}")

    from peft import LoraConfig

    model = VargptForConditionalGeneration.from_pretrained(base_dir)
    config = VargptSFTConfig(
        output_dir=str(output / "adapter"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0,
        logging_steps=25, save_strategy="no", report_to="none", seed=args.seed, data_seed=args.seed, use_cpu=True,
    )
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                             target_modules=TARGET_MODULES, modules_to_save=MODULES_TO_SAVE)
    trainer = VargptSFTTrainer(model=model, args=config, peft_config=peft_config, processing_class=processor,
                               train_dataset=load_vargpt_dataset(str(data), str(output / "data")))
    trainer.train()
    trainer.save_model(str(output / "adapter"))
    processor.save_pretrained(output / "adapter")  # the tokenizer that knows the word goes with the adapters

    from peft import PeftModel

    adapted = PeftModel.from_pretrained(VargptForConditionalGeneration.from_pretrained(base_dir), output / "adapter")
    after = evaluate(adapted.merge_and_unload(), processor, args.seed, args.eval_limit, args.hold_out_pink)
    logger.info(f"after: {json.dumps(summary_numbers(after))}")

    report = {"after": summary_numbers(after), "seconds": round(time.perf_counter() - start, 1),
              "arguments": {k: str(v) for k, v in vars(args).items()}}
    if before is not None:
        report["before"] = summary_numbers(before)
        before_after_grid(shown_samples(before), shown_samples(after)).save(output / "before_after.png")
    (output / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    finish_adapter_folder(output, args, report)
    return report


if __name__ == "__main__":
    main()
