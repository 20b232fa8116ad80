"""The bundled model's card (`README.md` in the model directory), written from the recipe's evaluation report."""

from __future__ import annotations

import json
from pathlib import Path


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _stage_steps(settings: dict) -> str:
    """A stage's steps, with its batch size where it is not the recipe's."""
    batch = settings.get("batch_size")
    return f"{settings['steps']}" + (f" (batch {batch})" if batch else "")


def _stage_schedule(settings: dict) -> str:
    """A stage's schedule (and its decay steps) and AdamW beta2 where they are not `vargpt-train`'s defaults (cosine,
    0.999)."""
    changes = [settings[key] if key == "lr_scheduler_type" else f"beta2 {settings[key]}"
               for key in ("lr_scheduler_type", "adam_beta2") if settings.get(key) is not None]
    if settings.get("decay_steps"):
        changes.insert(1, f"down to 0 over the last {settings['decay_steps']} steps")
    return f" ({', '.join(changes)})" if changes else ""


def write_model_card(output: Path, report: dict, vqvae_dir: Path | None = None) -> Path:
    """Write `output/README.md`: what the model is, how it was trained, its held-out numbers and sample grid."""
    generation = report["generation"]
    questions = report["questions"]
    parameters = report["parameters"]
    recipe = report["recipe"]
    sizes = recipe["sizes"]
    config = json.loads((output / "config.json").read_text())
    weights_mb = (output / "model.safetensors").stat().st_size / 1e6
    vqvae_eval = None
    if vqvae_dir is not None and (Path(vqvae_dir) / "vqvae_eval.json").is_file():
        vqvae_eval = json.loads((Path(vqvae_dir) / "vqvae_eval.json").read_text())

    question_rows = "\n".join(
        f"| {result['question']} | {_percent(result['accuracy'])} | {result['num_images']} |"
        for result in questions.values()
    )
    stage_rows = "\n".join(
        f"| {stage} (`vargpt-train --stage {stage}`) | {settings['data']} | {_stage_steps(settings)} | "
        f"{settings['learning_rate']}{_stage_schedule(settings)} |"
        for stage, settings in recipe["stages"]
    )
    understanding_row = ""
    if recipe.get("stage0_understanding_steps"):
        understanding_row = (f"| 0, first phase: questions only, everything but the VQVAE and the tower | "
                             f"questions file ({recipe['understanding_only']:,} pictures) | "
                             f"{recipe['stage0_understanding_steps']} | {recipe['stage0_learning_rate']} |\n")
    extra_line = ""
    if recipe.get("extra_drawing_colors") and recipe.get("extra_drawing_share"):
        extra_line = (f" {_percent(recipe['extra_drawing_share'])} of the drawing requests are in colours outside the "
                      f"palette ({', '.join(recipe['extra_drawing_colors'])}; never in questions), so that the "
                      "shape is learnt apart from the colour pair it is drawn in.")
    timings = ", ".join(f"{key} {value:.0f} s" for key, value in report.get("timings_seconds", {}).items())
    timings_note = f" ({report['timings_note']})" if report.get("timings_note") else ""
    runs = ["a first run"] + (["a sharpening run"] if recipe.get("vqvae_sharpen_args") else [])
    if recipe.get("vqvae_decoder_args"):
        runs.append("a decoder-only run (`--decoder_only`: codes unchanged)")
        if recipe.get("vqvae_decoder_restart_steps"):
            runs.append(f"that run again from its weights for {recipe['vqvae_decoder_restart_steps']} steps")
    vqvae_runs = ": " + ", then ".join(runs) if len(runs) > 1 else ""
    sampling = ", ".join(f"`{key}={value}`" for key, value in generation["sampling"].items()
                         if key != "negative_prompt_ids")
    if generation.get("negative_prompt") and generation["sampling"].get("guidance_scale", 1.0) > 1:
        sampling += f", guidance against the negative prompt `{generation['negative_prompt']}`"
    vqvae_line = ""
    if vqvae_eval is not None:
        vqvae_line = f"\nVQVAE evaluation (its own `vqvae_eval.json`): `{json.dumps(vqvae_eval)[:400]}`\n"

    text = f"""# transformers-vargpt bundled shapes-world VARGPT

A small VARGPT trained from nothing by this repository (`make bundled-model`, seed {report['seed']}) on the shapes
world (`transformers_vargpt.shapes_world`): a solid background of one of eight colours and one filled circle, square
or triangle of another. It draws what it is asked ("Draw a red circle on a blue background.") and answers questions
about such pictures ("What shape is in the image?"). It knows nothing else. It reads pictures with the shape anywhere
and draws the shape in one place: centred, {recipe['drawing_box'][2] - recipe['drawing_box'][0] + 1} px of the
{recipe['image_size']} px side (`bundled.dataset.DRAWING_BOX`): a model this small, trained this briefly, learnt to
draw only once every prompt fixed every code of its picture.

Load it offline with the package installed:

```python
import transformers_vargpt
from transformers import AutoProcessor
from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration, VargptPipeline

model = VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL)
processor = AutoProcessor.from_pretrained(BUNDLED_MODEL)
pipe = VargptPipeline.from_pretrained(BUNDLED_MODEL)
```

## Architecture ({parameters['total']:,} parameters, {weights_mb:.1f} MB of float32 safetensors)

| part | size | parameters |
|---|---|---|
| CLIP vision tower (from scratch) | {sizes['vision_layers']} layers, width {sizes['vision_hidden']}, {sizes['vision_image_size']}² px in {sizes['vision_patch_size']}² patches | {parameters.get('vision_tower', 0):,} |
| Llama (from scratch) | {sizes['text_layers']} layers, width {sizes['text_hidden']}, word-level vocabulary of {config['text_config']['vocab_size']} | {parameters.get('language_model', 0) + parameters.get('lm_head', 0):,} |
| VAR decoder | depth {sizes['var_depth']}, width {sizes['var_embed_dim']} | {parameters.get('scale_decoder', 0):,} |
| VQVAE (trained first, frozen after) | {config['vq_config']['vocab_size']} codes, scales {config['vq_config']['scale_sizes']}, {config['vq_config']['image_size']}² px | {parameters.get('vqvae', 0):,} |
| projectors | | {sum(parameters.get(k, 0) for k in ('multi_modal_projector', 'gen_input_projector', 'gen_output_projector')):,} |

## Training (`python -m transformers_vargpt.bundled.build`)

Data: seeded shapes-world conversations in the released format, from the {168 - report['held_out_combinations']}
training (colour, shape, background) combinations only; the {report['held_out_combinations']} held-out combinations
(`shapes_world.held_out_combinations()`) are never seen in training. {recipe['mixed_understanding']:,} pictures with
one to {recipe['questions_per_image']} questions and {recipe['mixed_generation']:,} drawing requests (mixed file),
{recipe['generation_only']:,} more drawing requests (generation file).{extra_line}

| stage | data | steps (batch {recipe['batch_size']}) | learning rate |
|---|---|---|---|
| VQVAE (`python -m transformers_vargpt.training.vqvae`){vqvae_runs} | rendered pictures, palette and random colours | see the recipe's `vqvae_*_args` | |
| CLIP tower alone: name shape, colour, background (`bundled.vision_pretraining`) | rendered pictures, half in random colours | {recipe['vision_steps']} (batch {recipe['vision_batch_size']}) | {recipe['vision_learning_rate']} |
{understanding_row}| 0: from scratch, everything but the VQVAE and the tower | mixed | {recipe['stage0_steps']} | {recipe['stage0_learning_rate']} |
{stage_rows}
{vqvae_line}
Time: {timings}.{timings_note}

## Evaluation on the held-out combinations (`python -m transformers_vargpt.bundled.evaluate`)

Independent pixel checker (`shapes_world.check_image`, image statistics, not a model).

Generation ({generation['num_images']} pictures: {report['held_out_combinations']} combinations × the world's
{len(generation['prompts'])} prompt phrasings × seeds {generation['seeds']}; default sampling {sampling}):
**{_percent(generation['accuracy'])}** with shape, colour and background all right (shape
{_percent(generation['shape_accuracy'])}, colour {_percent(generation['color_accuracy'])}, background
{_percent(generation['background_accuracy'])}).

Questions on rendered held-out pictures:

| question | right | pictures |
|---|---|---|
{question_rows}

One-word answers must match exactly (case-insensitive, a trailing period ignored); a description must name the
shape's colour and the shape before "on" and the background colour after it.

![generated samples, one per held-out combination](samples.png)
"""
    path = output / "README.md"
    path.write_text(text)
    return path


__all__ = ["write_model_card"]
