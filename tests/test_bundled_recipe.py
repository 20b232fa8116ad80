"""The bundled model's recipe: data, tokenizer, evaluation rules, and a smoke run of every step of the build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import numpy as np

from transformers_vargpt.bundled.dataset import (
    DRAWING_BOX,
    EXTRA_DRAWING_COLORS,
    scaled_box,
    world_texts,
    write_shapes_world_dataset,
)
from transformers_vargpt.bundled.evaluate import answer_is_right, normalize_answer
from transformers_vargpt.bundled.tokenizer import SPELLINGS, build_shapes_tokenizer
from transformers_vargpt.shapes_world import (
    GENERATION_PROMPTS,
    QUESTIONS,
    Scene,
    check_image,
    held_out_combinations,
    render,
    training_combinations,
)
from transformers_vargpt.training import load_vargpt_dataset


def _words(row: dict) -> tuple[str, str, str] | None:
    """(colour, shape, background) a generation row asks for, read back from its prompt."""
    prompt = row["messages"][0]["content"].lower().rstrip(".?")
    for color, shape, background in training_combinations() + held_out_combinations():
        if f"a {color} {shape} on a {background} background" in prompt:
            return color, shape, background
    return None


def test_dataset_is_seeded_held_out_free_and_in_the_released_format(tmp_path):
    first = write_shapes_world_dataset(tmp_path / "a", 40, 40, seed=3, questions_per_image=4)
    second = write_shapes_world_dataset(tmp_path / "b", 40, 40, seed=3, questions_per_image=4)
    assert first.read_text() == second.read_text()
    assert (tmp_path / "a" / "images").is_dir()
    for image in sorted((tmp_path / "a" / "images").iterdir())[:5]:
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()

    rows = [json.loads(line) for line in first.read_text().splitlines()]
    held = set(held_out_combinations())
    kinds = {"understanding": 0, "generation": 0}
    pictures_in_drawing_box = {"understanding": 0, "generation": 0}
    for row in rows:
        assert len(row["images"]) == 1
        pixels = np.asarray(Image.open(tmp_path / "a" / row["images"][0]).convert("RGB"))
        picture = check_image(pixels)
        combination = (picture.color, picture.shape, picture.background)
        assert combination not in held and None not in combination
        if row["messages"][0]["content"].startswith("<image>"):
            kinds["understanding"] += 1
            answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
            assert 1 <= len(answers) <= 4
            expected = Scene(shape=picture.shape, color=picture.color, background=picture.background)
            assert set(answers) <= {expected.answer(kind) for kind in QUESTIONS}
        else:
            kinds["generation"] += 1
            assert row["messages"][1]["content"].endswith("<image_gen>")
            assert _words(row) == combination  # the picture is what the prompt asks for
        # pictures to draw put the shape in the drawing box; pictures to read anywhere
        in_box = render(Scene(picture.shape, picture.color, picture.background, DRAWING_BOX), 64)
        kind = "understanding" if row["messages"][0]["content"].startswith("<image>") else "generation"
        pictures_in_drawing_box[kind] += int(np.array_equal(pixels, np.asarray(in_box)))
    assert kinds == {"understanding": 40, "generation": 40}
    assert pictures_in_drawing_box["generation"] == 40 and pictures_in_drawing_box["understanding"] < 5
    dataset = load_vargpt_dataset(str(first), tmp_path / "a")  # what vargpt-train reads
    assert len(dataset) == 80


def test_drawing_box_anywhere_and_at_other_sizes(tmp_path):
    path = write_shapes_world_dataset(tmp_path, 0, 12, seed=1, drawing_box=None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    boxes = set()
    for row in rows:
        mask = np.asarray(Image.open(tmp_path / row["images"][0]).convert("RGB")).astype(int)
        mask = np.abs(mask - mask[0, 0]).sum(-1) > 0
        boxes.add((mask.any(0).argmax(), mask.any(1).argmax()))
    assert len(boxes) > 6  # shapes anywhere
    assert scaled_box(DRAWING_BOX, 64) == DRAWING_BOX
    assert scaled_box((14, 14, 49, 49), 128) == (28, 28, 99, 99)  # same place, same 56 % of the side


def test_extra_drawing_colors_only_in_drawings_never_near_the_palette_or_pink(tmp_path):
    from transformers_vargpt.shapes_world import PALETTE, SHAPES

    pink = (255, 110, 180)  # the colour examples/teach_pink_lora.py teaches later
    for name, rgb in EXTRA_DRAWING_COLORS.items():
        for other in [*PALETTE.values(), pink]:
            assert np.linalg.norm(np.subtract(rgb, other)) >= 80, name
        for other_name, other in EXTRA_DRAWING_COLORS.items():  # told apart from each other, too
            assert other_name == name or np.linalg.norm(np.subtract(rgb, other)) >= 40, (name, other_name)

    path = write_shapes_world_dataset(tmp_path, 60, 200, seed=5, extra_drawing_colors=EXTRA_DRAWING_COLORS,
                                      extra_drawing_share=0.5)
    colors = {**PALETTE, **EXTRA_DRAWING_COLORS}
    extra_rows = 0
    for row in [json.loads(line) for line in path.read_text().splitlines()]:
        pixels = np.asarray(Image.open(tmp_path / row["images"][0]).convert("RGB"))
        if row["messages"][0]["content"].startswith("<image>"):  # questions: the palette only
            picture = check_image(pixels)
            assert None not in (picture.color, picture.shape, picture.background)
            continue
        prompt = row["messages"][0]["content"].lower()
        asked = [(c, s, b) for c in colors for s in SHAPES for b in colors if f"a {c} {s} on a {b} background" in prompt]
        assert len(asked) == 1
        color, shape, background = asked[0]
        assert (color, shape, background) not in set(held_out_combinations())
        extra_rows += color in EXTRA_DRAWING_COLORS or background in EXTRA_DRAWING_COLORS
        picture = check_image(pixels, palette=colors, color_tolerance=1)  # drawn in exactly the asked colours
        assert (picture.color, picture.shape, picture.background) == (color, shape, background)
    assert 70 <= extra_rows <= 130  # about half of the 200 drawings

    tokenizer = build_shapes_tokenizer(world_texts(tuple(EXTRA_DRAWING_COLORS)))
    for name in EXTRA_DRAWING_COLORS:
        assert tokenizer.unk_token_id not in tokenizer(f"Draw a {name} circle.")["input_ids"]
    assert tokenizer.unk_token_id in tokenizer("pink", add_special_tokens=False)["input_ids"]
    plain = build_shapes_tokenizer()  # the shipped recipe's vocabulary: the palette's words only
    assert plain.unk_token_id in plain("cyan", add_special_tokens=False)["input_ids"]


def test_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="positive number of rows"):
        write_shapes_world_dataset(tmp_path, 0, 0)
    with pytest.raises(ValueError, match="questions_per_image"):
        write_shapes_world_dataset(tmp_path, 1, 1, questions_per_image=5)
    with pytest.raises(ValueError, match="outside the palette"):
        write_shapes_world_dataset(tmp_path, 0, 2, extra_drawing_colors={"red": (1, 2, 3)}, extra_drawing_share=0.5)
    with pytest.raises(ValueError, match="needs extra_drawing_colors"):
        write_shapes_world_dataset(tmp_path, 0, 2, extra_drawing_share=0.5)


def test_tokenizer_is_deterministic_and_reads_any_text():
    tokenizer = build_shapes_tokenizer()
    assert tokenizer.get_vocab() == build_shapes_tokenizer().get_vocab()
    for prompt in GENERATION_PROMPTS:
        ids = tokenizer(prompt.format(color="red", shape="circle", background="blue"))["input_ids"]
        assert tokenizer.unk_token_id not in ids
    for token in ("<image>", "<pad>", "<|image_gen_start|>", "<|image_gen_end|>", "<|image_gen_pad|>", "</s>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    ids = tokenizer("Zeichne einen Kreis! ☃ 12", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id in ids
    sentence = "A red circle on a blue background."
    decoded = tokenizer.decode(tokenizer(sentence)["input_ids"], skip_special_tokens=True)
    assert decoded == sentence.lower()


def test_tokenizer_reads_british_spellings_as_the_worlds():
    tokenizer = build_shapes_tokenizer(world_texts(tuple(EXTRA_DRAWING_COLORS)))
    assert tokenizer("What Colour is the shape?")["input_ids"] == tokenizer("What color is the shape?")["input_ids"]
    assert tokenizer("Draw a GREY circle.")["input_ids"] == tokenizer("Draw a gray circle.")["input_ids"]
    # the world's own sentences never hold them, so what the model trained on tokenises as before the replacement
    assert not any(british in text.lower() for text in world_texts(tuple(EXTRA_DRAWING_COLORS))
                   for british, _ in SPELLINGS)
    # the shipped tokenizer is the one the recipe builds
    from transformers import AutoTokenizer

    from transformers_vargpt import BUNDLED_MODEL
    from transformers_vargpt.bundled.build import Recipe

    shipped = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    built = build_shapes_tokenizer(world_texts(tuple(Recipe().drawing_extra_colors())))
    assert shipped.backend_tokenizer.to_str() == built.backend_tokenizer.to_str()


def test_answer_rules():
    scene = Scene(shape="circle", color="red", background="blue")
    assert normalize_answer(" Circle. ") == "circle"
    assert answer_is_right("shape", "Circle.", scene) and not answer_is_right("shape", "a circle", scene)
    assert answer_is_right("color", "red", scene) and answer_is_right("background", "BLUE.", scene)
    assert answer_is_right("describe", "A red circle on a blue background.", scene)
    assert not answer_is_right("describe", "A blue circle on a red background.", scene)
    assert not answer_is_right("describe", "A red circle.", scene)


def test_recipe_fields_can_be_changed_by_name():
    from transformers_vargpt.bundled.build import Recipe, with_overrides

    recipe = with_overrides(Recipe(), ["stage0_steps=7", "stage2_learning_rate=1e-4", "text_layers=2", "top_k=3",
                                       "vqvae_args=--steps 5 --vocab_size 64", "eval_seeds=[3, 4]"])
    assert recipe.stage0_steps == 7 and recipe.sizes.text_layers == 2 and recipe.top_k == 3
    assert dict(recipe.stages)[2].learning_rate == 1e-4 and dict(recipe.stages)[2].steps == Recipe().stages[1][1].steps
    assert recipe.vqvae_args == ("--steps", "5", "--vocab_size", "64") and recipe.eval_seeds == (3, 4)
    assert with_overrides(Recipe(), []) == Recipe()
    with pytest.raises(SystemExit, match="no such recipe field"):
        with_overrides(Recipe(), ["stage0_stepz=3"])
    with pytest.raises(SystemExit, match="expects FIELD=VALUE"):
        with_overrides(Recipe(), ["stage0_steps"])
    with pytest.raises(SystemExit, match="a stage takes data, steps, learning_rate, batch_size"):
        with_overrides(Recipe(), ["stage3_batch=3"])


def test_stage_settings_become_vargpt_train_options():
    """A stage's batch size, warm-up, schedule and beta2 reach `vargpt-train`; left unset, its own defaults stay."""
    from transformers_vargpt.bundled.build import Recipe, StageSettings, with_overrides
    from transformers_vargpt.training.cli import VargptTrainParser

    def options(settings: StageSettings) -> dict:
        args = settings.trainer_args(default_batch_size=32)
        return dict(zip(args[::2], args[1::2]))

    plain = options(StageSettings("mixed", 200, 3e-4))
    assert plain == {"--max_steps": "200", "--per_device_train_batch_size": "32", "--learning_rate": "0.0003",
                     "--warmup_steps": "0.05"}
    tuned = with_overrides(Recipe(), ["stage3_batch_size=8", "stage3_lr_scheduler_type=constant_with_warmup",
                                      "stage3_adam_beta2=0.9", "stage3_warmup_steps=10", "stage3_decay_steps=null"])
    assert options(dict(tuned.stages)[3]) == {
        "--max_steps": str(dict(Recipe().stages)[3].steps), "--per_device_train_batch_size": "8",
        "--learning_rate": str(dict(Recipe().stages)[3].learning_rate), "--warmup_steps": "10",
        "--lr_scheduler_type": "constant_with_warmup", "--adam_beta2": "0.9"}
    # and vargpt-train reads them into its training arguments
    _, parsed = VargptTrainParser().parse_args_and_config(
        ["--stage", "3", "--model", "m", "--data", "d.jsonl", "--output", "o", *dict(tuned.stages)[3].trainer_args(32)])
    assert parsed.per_device_train_batch_size == 8 and parsed.adam_beta2 == 0.9 and parsed.warmup_steps == 10
    assert parsed.lr_scheduler_type == "constant_with_warmup"

    # a warm-up, a constant rate, then a decay to 0 over the last steps: vargpt-train's scheduler gets the count
    annealed = with_overrides(Recipe(), ["stage3_lr_scheduler_type=warmup_stable_decay", "stage3_decay_steps=300"])
    _, parsed = VargptTrainParser().parse_args_and_config(
        ["--stage", "3", "--model", "m", "--data", "d.jsonl", "--output", "o", *dict(annealed.stages)[3].trainer_args(32)])
    assert parsed.lr_scheduler_type == "warmup_stable_decay" and parsed.lr_scheduler_kwargs == {"num_decay_steps": 300}
    with pytest.raises(SystemExit, match="decay_steps=300 needs lr_scheduler_type='warmup_stable_decay'"):
        with_overrides(Recipe(), ["stage3_lr_scheduler_type=cosine", "stage3_decay_steps=300"])


def test_smoke_build_runs_every_step_and_writes_a_loadable_model(tmp_path):
    """The whole recipe at tiny sizes: VQVAE, data, stage 0, stages 1-3 through vargpt-train, evaluation, card."""
    from transformers import AutoProcessor

    from transformers_vargpt import VargptForConditionalGeneration, VargptPipeline
    from transformers_vargpt.bundled.build import Recipe, main

    output = tmp_path / "model"
    main(["--smoke", "--output", str(output), "--work-dir", str(tmp_path / "work")])
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
                 "evaluation.json", "samples.png"):
        assert (output / name).is_file(), name
    report = json.loads((output / "evaluation.json").read_text())
    assert report["generation"]["num_images"] == len(held_out_combinations()) * 3
    assert set(report["questions"]) == set(QUESTIONS)
    for stage in (0, 1, 2, 3):
        assert (tmp_path / "work" / f"stage{stage}" / "model.safetensors").is_file()
    # the VQVAE's four runs: the first, the sharpening run from its weights, the decoder-only run from those and its
    # restart (the recipe's steps, not the decoder run's) from that
    first, sharpened, decoder, last = (json.loads((tmp_path / "work" / d / "vqvae_eval.json").read_text())
                                       for d in ("vqvae-first", "vqvae-sharpened", "vqvae-decoder", "vqvae"))
    assert first["parameters"] == sharpened["parameters"] == decoder["parameters"] == last["parameters"]
    assert decoder["arguments"]["decoder_only"] and decoder["arguments"]["init_from"].endswith("vqvae-sharpened")
    assert last["arguments"]["decoder_only"] and last["arguments"]["init_from"].endswith("vqvae-decoder")
    assert last["arguments"]["steps"] == Recipe.smoke().vqvae_decoder_restart_steps != decoder["arguments"]["steps"]
    card = (output / "README.md").read_text()
    assert f'"palette_match_rate": {json.dumps(last["palette_match_rate"])}' in card  # the card's VQVAE is the last
    model = VargptForConditionalGeneration.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert model.generation_config.image_generation["top_k"] == report["generation"]["sampling"]["top_k"]
    negative = processor(text=Recipe.smoke().negative_prompt, generation_mode="image")["input_ids"][0]
    assert model.generation_config.image_generation["negative_prompt_ids"] == [int(i) for i in negative]
    assert report["generation"]["negative_prompt"] == processor.decode(negative)
    assert processor.patch_nums == model.config.vq_config.scale_sizes
    pipe = VargptPipeline.from_pretrained(str(output))
    image = pipe("Draw a red circle on a blue background.", generator=torch.Generator().manual_seed(0)).images[0]
    size = model.config.vq_config.image_size
    assert image.size == (size, size)
    assert "auto_map" not in json.loads((output / "config.json").read_text())

    # the evaluation with other sampling settings than the saved ones (what `evaluate --top-k ...` passes)
    from transformers_vargpt.bundled.evaluate import evaluate

    changed = evaluate(str(output), None, [0], 1, sampling={"top_k": 1, "guidance_scale": 2.0})
    assert changed["generation"]["sampling"]["top_k"] == 1 and changed["generation"]["sampling"]["guidance_scale"] == 2.0
    assert changed["generation"]["sampling"]["top_p"] == report["generation"]["sampling"]["top_p"]
