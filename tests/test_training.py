"""Training: data formats, collator labels and truncation, stage freezing, the TRL trainer / CLI, LoRA, resuming."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import TrainerCallback  # noqa: E402

from transformers_vargpt import VargptForConditionalGeneration  # noqa: E402
from transformers_vargpt.tiny_models import VICUNA_CHAT_TEMPLATE, build_tiny_vargpt  # noqa: E402
from transformers_vargpt.training import (  # noqa: E402
    STAGE_TRAINABLE_MODULES,
    VICUNA_SYSTEM_MESSAGE,
    VargptDataCollator,
    VargptSFTConfig,
    freeze_for_stage,
    load_vargpt_dataset,
    lora_config_for_stage,
)
from transformers_vargpt.training.cli import VargptScriptArguments, build_trainer, train_main  # noqa: E402
from transformers_vargpt.training.synthetic import draw_shape, write_shapes_dataset  # noqa: E402

OFFICIAL_STATE_DICT_JSON = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / (
    "vargpt-llava-v1-official-state-dict.json"
)

UNDERSTAND_AND_DRAW = {
    "messages": [
        {"role": "user", "content": "<image>\nwhat shape is this ?"},
        {"role": "assistant", "content": "a red circle ."},
        {"role": "user", "content": "please draw a blue square ."},
        {"role": "assistant", "content": "here is a blue square .<image_gen>"},
    ],
    "images": [draw_shape("circle", "red"), draw_shape("square", "blue")],
}
TEXT_ONLY = {
    "messages": [
        {"role": "user", "content": "what color is the sky ?"},
        {"role": "assistant", "content": "the sky is blue ."},
    ],
    "images": [],
}


@pytest.fixture(scope="module")
def tiny():
    """A deterministic tiny model (no condition dropout / drop-path) and its processor."""
    return build_tiny_vargpt(seed=0, var_cond_drop_rate=0.0, var_drop_path_rate=0.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny):
    """A saved tiny model and two synthetic datasets (4 and 12 examples) in the released format."""
    root = tmp_path_factory.mktemp("training")
    model, processor = tiny
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    write_shapes_dataset(root / "data4", num_examples=4, kinds=("generation", "understanding", "generation", "text"))
    write_shapes_dataset(root / "data12", num_examples=12)
    return root


def _train_args(workdir: Path, stage: int, output: Path, data: str = "data12", *extra: str) -> list[str]:
    return [
        "--stage", str(stage),
        "--model", str(workdir / "model"),
        "--data", str(workdir / data / "train.jsonl"),
        "--image-root", str(workdir / data),
        "--output", str(output),
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--report_to", "none",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def _assert_same_curve(expected: list[dict], got: list[dict], keys: tuple[str, ...], rel: float, abs: float) -> None:
    assert len(expected) == len(got)
    for one, two in zip(expected, got):
        for key in keys:
            if one.get(key) is None:  # e.g. no image_loss on a step without images to draw
                assert two.get(key) is None, (one["step"], key)
            else:
                assert two.get(key) == pytest.approx(one[key], rel=rel, abs=abs), (one["step"], key)


def _history(output: Path) -> list[dict]:
    state = json.loads((output / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


# ---- data -----------------------------------------------------------------------------------------------------------
def test_load_released_messages_format_json_and_jsonl(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>\nwhat is it ? then draw one ."},
                {"role": "assistant", "content": "a cat . here :<image_gen>"},
            ],
            "images": ["in.png", "out.png"],
        },
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "images": []},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    for name in ("d.json", "d.jsonl"):
        dataset = load_vargpt_dataset(tmp_path / name, image_root=tmp_path / "imgs", check_images=False)
        assert dataset.column_names == ["messages", "images"] and len(dataset) == 2
        assert dataset[0]["messages"] == rows[0]["messages"]
        assert dataset[0]["images"] == [str(tmp_path / "imgs" / "in.png"), str(tmp_path / "imgs" / "out.png")]
        assert dataset[1]["images"] == []
    both = load_vargpt_dataset([tmp_path / "d.json", tmp_path / "d.jsonl"], check_images=False)
    assert len(both) == 4 and both[0]["images"] == ["in.png", "out.png"]  # no image_root: paths as written


def test_load_llava_conversations_format(tmp_path):
    rows = [
        {
            "id": "1",
            "image": "coco/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "A cat."},
                {"from": "human", "value": "Color?"},
                {"from": "gpt", "value": "Black."},
            ],
        },
        {
            "id": "2",
            "image": "coco/2.jpg",
            "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A dog."}],
        },
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]  # fmt: skip
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    for source in (path, datasets.Dataset.from_list(rows)):
        dataset = load_vargpt_dataset(source, image_root="/data", check_images=False)
        assert dataset.column_names == ["messages", "images"]
        first = dataset[0]
        assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
        assert first["messages"][1]["content"] == "A cat." and first["images"] == ["/data/coco/1.jpg"]
        # an image without a placeholder is put before the first question, as LLaVA does
        assert dataset[1]["messages"][0]["content"] == "<image>\nDescribe."
        assert dataset[2]["images"] == []


def test_load_rejects_placeholder_image_mismatch(tmp_path):
    messages = [{"role": "user", "content": "draw"}, {"role": "assistant", "content": "<image_gen>"}]
    row = {"messages": messages, "images": []}
    with pytest.raises(ValueError, match="example 1: 1 image placeholder"):
        load_vargpt_dataset([TEXT_ONLY, row])
    with pytest.raises(ValueError, match="unknown role"):
        load_vargpt_dataset([{"messages": [{"role": "robot", "content": "x"}], "images": []}])


# ---- collator -------------------------------------------------------------------------------------------------------
def test_collator_supervises_only_assistant_tokens(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    collator = VargptDataCollator(processor)
    batch = collator([UNDERSTAND_AND_DRAW, TEXT_ONLY])
    input_ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["pixel_gen_values"].shape == (1, 3, 64, 64)
    assert batch["pixel_gen_values"].min() >= -1 and batch["pixel_gen_values"].max() <= 1

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos, start, end = tokenizer.eos_token_id, processor.image_gen_start_token_id, processor.image_gen_end_token_id
    expected = ids("a red circle .") + [eos] + ids("here is a blue square .") + [start, end, eos]
    assert labels[0][labels[0] != -100].tolist() == expected
    assert labels[1][labels[1] != -100].tolist() == ids("the sky is blue .") + [eos]
    # no system line unless asked for, as at inference
    text = tokenizer.decode(input_ids[1][attention[1].bool()])
    assert text.startswith("<s> user : what color is the sky? assistant : the sky")
    vicuna = VargptDataCollator(processor, system_message=VICUNA_SYSTEM_MESSAGE)([TEXT_ONLY])
    text = tokenizer.decode(vicuna["input_ids"][0])
    assert text.startswith("<s> a <unk> <unk> a <unk> user")  # "A chat between a curious user ..."
    assert "user : what color is the sky? assistant : the sky" in text
    assert vicuna["labels"][0][vicuna["labels"][0] != -100].tolist() == ids("the sky is blue .") + [eos]
    # image tokens and image-generation pads are never text targets; right padding is ignored
    image_tokens = input_ids == processor.image_token_id
    gen_pads = input_ids == processor.image_gen_pad_token_id
    assert image_tokens.sum() == 16 and gen_pads.sum() == processor.num_image_gen_tokens
    assert (labels[image_tokens | gen_pads] == -100).all()
    assert attention[1].sum() < attention.shape[1] and (attention[1][-1] == 0)
    assert (labels[attention == 0] == -100).all()
    assert (input_ids[attention == 0] == tokenizer.pad_token_id).all()
    assert (labels[:, 0] == -100).all() and input_ids[0, 0] == tokenizer.bos_token_id
    # a conversation's own system turn is kept (and wins over the collator's) and is never a target
    own_system = {**TEXT_ONLY, "messages": [{"role": "system", "content": "you draw ."}, *TEXT_ONLY["messages"]]}
    for system_message in (None, VICUNA_SYSTEM_MESSAGE):
        batch = VargptDataCollator(processor, system_message=system_message)([own_system])
        text = tokenizer.decode(batch["input_ids"][0])
        assert text.startswith("<s> you draw. user : what color")
        assert batch["labels"][0][batch["labels"][0] != -100].tolist() == ids("the sky is blue .") + [eos]


def _first_targets(labels: torch.Tensor) -> list[int]:
    """Positions where a run of text targets starts (the first token of each answer)."""
    supervised = (labels != -100).tolist()
    return [i for i, flag in enumerate(supervised) if flag and (i == 0 or not supervised[i - 1])]


@pytest.fixture(scope="module")
def released_processor():
    """The released-layout tiny checkpoint's processor (a Llama-style tokenizer), with the package's template."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" /
                                              "vargpt-original-tiny")  # fmt: skip
    processor.chat_template = VICUNA_CHAT_TEMPLATE
    return processor


@pytest.mark.parametrize("which", ["tiny", "released"])
def test_training_prompt_is_the_inference_prompt(which, tiny, released_processor):
    """Token for token, the prompt part of a training sample is what inference feeds the model for the same
    conversation: `apply_chat_template(..., add_generation_prompt=True)` to answer, `build_text_to_image_prompt`
    (ending with `<|image_gen_start|>`) to draw."""
    processor = tiny[1] if which == "tiny" else released_processor
    picture = draw_shape("circle", "red")
    conversation = {
        "messages": [
            {"role": "user", "content": "<image>\nwhat shape is this ?"},
            {"role": "assistant", "content": "a red circle ."},
            {"role": "user", "content": "and its color ?"},
            {"role": "assistant", "content": "red ."},
        ],
        "images": [picture],
    }
    batch = VargptDataCollator(processor, max_length=None)([conversation])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    first, second = _first_targets(labels)
    history = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is this ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle ."}]},
        {"role": "user", "content": [{"type": "text", "text": "and its color ?"}]},
    ]
    for end, turns in ((first, history[:1]), (second, history)):
        prompt = processor.apply_chat_template(turns, add_generation_prompt=True)
        expected = processor(images=picture, text=prompt, return_tensors="pt")["input_ids"][0]
        assert input_ids[:end].tolist() == expected.tolist()
    eos = processor.tokenizer.eos_token_id
    supervised = (labels != -100).tolist()
    run_ends = [i for i, flag in enumerate(supervised) if flag and (i + 1 == len(supervised) or not supervised[i + 1])]
    assert len(run_ends) == 2 and all(labels[i] == eos for i in run_ends)  # each answer ends with eos, a target

    drawing = {
        "messages": [
            {"role": "user", "content": "please draw a red star ."},
            {"role": "assistant", "content": "<image_gen>"},
        ],
        "images": [draw_shape("triangle", "red")],
    }
    batch = VargptDataCollator(processor, max_length=None)([drawing])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    first = _first_targets(labels)[0]
    expected = processor(text="please draw a red star .", generation_mode="image", return_tensors="pt")["input_ids"][0]
    assert expected[-1] == processor.image_gen_start_token_id
    assert input_ids[: first + 1].tolist() == expected.tolist()  # the prompt, then <|image_gen_start|> as its target
    assert labels[first] == processor.image_gen_start_token_id
    start, end = processor.image_gen_start_token_id, processor.image_gen_end_token_id
    assert labels[labels != -100].tolist() == [start, end, eos]


def test_collator_appends_eos_when_the_template_has_none(released_processor):
    """The released chat template ends assistant turns with a space, not eos: the answer still ends with eos."""
    import copy

    from transformers import AutoProcessor

    released = AutoProcessor.from_pretrained(Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" /
                                             "vargpt-original-tiny")  # fmt: skip
    assert "eos_token" not in released.chat_template
    batch = VargptDataCollator(released)([copy.deepcopy(TEXT_ONLY)])
    ours = VargptDataCollator(released_processor)([copy.deepcopy(TEXT_ONLY)])
    assert batch["input_ids"].tolist() == ours["input_ids"].tolist()
    assert batch["labels"].tolist() == ours["labels"].tolist()
    assert batch["labels"][0, -1] == released.tokenizer.eos_token_id


def test_collator_truncation_never_splits_image_blocks(tiny):
    model, processor = tiny
    full = VargptDataCollator(processor, max_length=None)([UNDERSTAND_AND_DRAW])
    length = full["input_ids"].shape[1]
    image_len, gen_len = 16, processor.num_image_gen_tokens
    for max_length in range(2, length + 2):
        collator = VargptDataCollator(processor, max_length=max_length)
        batch = collator([UNDERSTAND_AND_DRAW, TEXT_ONLY])  # never raises
        assert batch["input_ids"].shape[1] <= max_length
        image_tokens = (batch["input_ids"] == processor.image_token_id).sum().item()
        pads = (batch["input_ids"] == processor.image_gen_pad_token_id).sum().item()
        assert image_tokens == image_len * (batch["pixel_values"].shape[0] if "pixel_values" in batch else 0)
        assert pads == gen_len * (batch["pixel_gen_values"].shape[0] if "pixel_gen_values" in batch else 0)
        starts = (batch["input_ids"] == processor.image_gen_start_token_id).sum().item()
        ends = (batch["input_ids"] == processor.image_gen_end_token_id).sum().item()
        assert starts == ends == pads // gen_len  # whole blocks only

    # a cut inside the generation block moves before <|image_gen_start|>; the drawn image is dropped
    gen_start = (full["input_ids"][0] == processor.image_gen_start_token_id).nonzero().item()
    collator = VargptDataCollator(processor, max_length=gen_start + 5)
    batch = collator([UNDERSTAND_AND_DRAW])
    assert batch["input_ids"].shape[1] == gen_start and "pixel_gen_values" not in batch
    assert batch["pixel_values"].shape[0] == 1 and collator.num_truncated == 1
    # a cut inside the read image leaves no answer: that example is skipped (counted), the rest of the batch stays
    image_last = (full["input_ids"][0] == processor.image_token_id).nonzero()[-1].item()
    assert VargptDataCollator(processor)([TEXT_ONLY])["input_ids"].shape[1] <= image_last  # fits whole
    collator = VargptDataCollator(processor, max_length=image_last)
    batch = collator([UNDERSTAND_AND_DRAW, TEXT_ONLY])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch and collator.num_skipped == 1
    # "skip" drops over-long examples; a batch of only those still yields one (truncated) example
    collator = VargptDataCollator(processor, max_length=gen_start + 5, truncation="skip")
    batch = collator([UNDERSTAND_AND_DRAW])
    assert batch["input_ids"].shape == (1, gen_start) and collator.num_skipped == 1
    model.train()
    loss = model(**batch).loss
    model.eval()
    assert torch.isfinite(loss)


def test_mixed_batch_through_the_model(tiny):
    model, processor = tiny
    generation_only = {
        "messages": [
            {"role": "user", "content": "please draw a red star ."},
            {"role": "assistant", "content": "<image_gen>"},
        ],
        "images": [draw_shape("triangle", "green")],
    }
    batch = VargptDataCollator(processor)([UNDERSTAND_AND_DRAW, TEXT_ONLY, generation_only])
    assert batch["pixel_gen_values"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    model.train()
    try:
        outputs = model(**batch)
        outputs.loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    assert torch.isfinite(outputs.loss) and torch.isfinite(outputs.text_loss) and torch.isfinite(outputs.image_loss)
    assert torch.allclose(outputs.loss, outputs.text_loss + outputs.image_loss)


def test_forward_normalises_by_num_items_in_batch(tiny):
    """Parts of a batch, each divided by the whole batch's counts, add up to the whole batch's losses: what gradient
    accumulation and data parallelism rely on (transformers' Trainer passes the counts as `num_items_in_batch`)."""
    model, processor = tiny
    drawing = {
        "messages": [
            {"role": "user", "content": "please draw a green triangle ."},
            {"role": "assistant", "content": "<image_gen>"},
        ],
        "images": [draw_shape("triangle", "green")],
    }
    collator = VargptDataCollator(processor)
    examples = [UNDERSTAND_AND_DRAW, TEXT_ONLY, drawing]
    whole = collator(examples)
    parts = [collator(examples[:2]), collator(examples[2:])]
    counts = {
        "text": sum(int((part["labels"][:, 1:] != -100).sum()) for part in parts),
        "image": sum(int((part["input_ids"] == processor.image_gen_pad_token_id).sum()) for part in parts),
    }
    assert counts["image"] == 2 * processor.num_image_gen_tokens
    with torch.no_grad():
        full = model(**whole)
        split = [model(**part, num_items_in_batch=counts) for part in parts]
        text_only_count = model(**parts[0], num_items_in_batch=torch.tensor(counts["text"]))
        own = model(**parts[0])
    torch.testing.assert_close(split[0].text_loss + split[1].text_loss, full.text_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split[0].image_loss + split[1].image_loss, full.image_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split[0].loss, split[0].text_loss + split[0].image_loss)
    # a plain number counts the text targets; the image loss stays the batch's own mean
    torch.testing.assert_close(text_only_count.text_loss, split[0].text_loss)
    torch.testing.assert_close(text_only_count.image_loss, own.image_loss)
    assert not torch.allclose(own.image_loss, split[0].image_loss)
    with pytest.raises(ValueError, match="keys 'text' and 'image'"):
        model(**whole, num_items_in_batch={"tokens": 3})


def test_config_rejects_trl_data_preparation_options(tmp_path):
    for option in ({"packing": True}, {"padding_free": True}, {"loss_type": "dft"}):
        with pytest.raises(ValueError, match=next(iter(option))):
            VargptSFTConfig(output_dir=str(tmp_path), **option)


# ---- stages ---------------------------------------------------------------------------------------------------------
def _module_parameters(model, paths):
    parameters = set()
    for path in paths:
        parameters |= {id(p) for p in model.get_submodule(path).parameters()}
    return parameters


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_freeze_for_stage_trains_exactly_the_table(stage):
    model, _ = build_tiny_vargpt(seed=0)
    count = freeze_for_stage(model, stage)
    # independent of the name matching: the parameters of the table's modules, as module objects
    table = {
        1: ["model.gen_input_projector", "model.gen_output_projector", "model.scale_decoder.class_embed"],
        2: ["model.language_model", "lm_head"],
        3: ["model.scale_decoder", "model.gen_input_projector", "model.gen_output_projector"],
    }[stage]
    expected = _module_parameters(model, table)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == expected
    assert count == sum(p.numel() for p in model.parameters() if id(p) in expected)
    for frozen in ("model.vqvae", "model.vision_tower", "model.multi_modal_projector"):
        assert not any(p.requires_grad for p in model.get_submodule(frozen).parameters())


def test_freeze_for_stage_matches_released_effective_counts():
    """Trainable counts of the full-size model equal the released recipe's, computed from its checkpoint's keys."""
    from accelerate import init_empty_weights

    from transformers_vargpt import VargptConfig

    official = json.loads(OFFICIAL_STATE_DICT_JSON.read_text())
    buffers = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias", "ema_vocab_hit_SV")
    released_prefixes = {
        1: ("image_gen_projector.", "image_gen_projector_out.", "vargpt_gen.class_emb."),
        2: ("language_model.",),
        3: ("vargpt_gen.", "image_gen_projector.", "image_gen_projector_out."),
    }
    with init_empty_weights():
        model = VargptForConditionalGeneration(VargptConfig(**official["config"]))
    for stage, prefixes in released_prefixes.items():
        released = sum(
            math.prod(shape)
            for key, (shape, _) in official["state_dict"].items()
            if key.startswith(prefixes) and not key.endswith(buffers)
        )
        assert freeze_for_stage(model, stage) == released, stage
    assert set(STAGE_TRAINABLE_MODULES) == {1, 2, 3}


def test_freeze_for_stage_on_a_peft_model():
    from peft import get_peft_model

    model, _ = build_tiny_vargpt(seed=0)
    peft_model = get_peft_model(model, lora_config_for_stage(3, r=4))
    count = freeze_for_stage(peft_model, 3)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("base_model.model.model.scale_decoder.") for name in trainable)
    assert all("lora_" in name or ".modules_to_save." in name for name in trainable)
    assert any(".attn.qkv.lora_A." in name for name in trainable)
    assert any("class_embed.modules_to_save" in name for name in trainable)
    assert count == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=r"outside what stage 2 trains .*model\.scale_decoder\.blocks\.0\.attn\.qkv"):
        freeze_for_stage(peft_model, 2)  # the adapters sit in VAR, which stage 2 does not train: none would learn


# ---- trainer and CLI ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_cli_trains_each_stage(stage, workdir, tmp_path):
    output = tmp_path / f"stage{stage}"
    train_main(_train_args(workdir, stage, output, "data4", "--max_steps", "8", "--per_device_train_batch_size", "4",
                           "--learning_rate", "1e-2", "--warmup_steps", "0"))  # fmt: skip
    history = _history(output)
    assert len(history) == 8 and all(math.isfinite(entry["loss"]) for entry in history)
    assert history[-1]["loss"] < history[0]["loss"]  # the same 4-example batch every step
    falling = "text_loss" if stage == 2 else "image_loss"
    assert history[-1][falling] < history[0][falling] - 0.05

    trained = VargptForConditionalGeneration.from_pretrained(output)
    original = VargptForConditionalGeneration.from_pretrained(workdir / "model")
    changed = {
        name
        for (name, new), (_, old) in zip(trained.state_dict().items(), original.state_dict().items())
        if not torch.equal(new, old)
    }
    stage_modules = STAGE_TRAINABLE_MODULES[stage]
    assert changed and all(name.startswith(stage_modules) for name in changed)
    assert (output / "tokenizer.json").is_file() and (output / "processor_config.json").is_file()


def test_cli_reads_a_yaml_config(workdir, tmp_path):
    yaml = pytest.importorskip("yaml")
    output = tmp_path / "yaml-run"
    config = {
        "stage": 2,
        "model_name_or_path": str(workdir / "model"),
        "data": [str(workdir / "data4" / "train.jsonl")],
        "image_root": str(workdir / "data4"),
        "output_dir": str(output),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "lora": True,
        "lora_r": 4,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    train_main(["--config", str(path), "--max_steps", "3"])  # the command line overrides the file
    assert len(_history(output)) == 3
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and "language_model" in adapter["target_modules"]


def test_gradient_accumulation_matches_one_big_batch(workdir, tmp_path):
    big, accumulated = tmp_path / "big", tmp_path / "accumulated"
    common = ("--max_steps", "3", "--learning_rate", "1e-3", "--activation_checkpointing", "false")
    train_main(_train_args(workdir, 3, big, "data12", *common, "--per_device_train_batch_size", "4"))
    train_main(_train_args(workdir, 3, accumulated, "data12", *common, "--per_device_train_batch_size", "2",
                           "--gradient_accumulation_steps", "2"))  # fmt: skip
    _assert_same_curve(_history(big), _history(accumulated), ("loss", "text_loss", "image_loss"), 1e-4, 1e-5)


def test_lora_adapters_save_load_and_merge(workdir, tmp_path, tiny):
    from peft import PeftModel

    output = tmp_path / "lora"
    train_main(_train_args(workdir, 3, output, "data4", "--lora", "--lora-r", "4", "--lora-alpha", "8",
                           "--lora-dropout", "0.0", "--max_steps", "4", "--per_device_train_batch_size", "4",
                           "--learning_rate", "5e-2", "--warmup_steps", "0"))  # fmt: skip
    assert (output / "adapter_model.safetensors").is_file() and not (output / "model.safetensors").exists()
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert "attn\\.qkv" in adapter["target_modules"]
    assert adapter["modules_to_save"] == ["model.scale_decoder.class_embed"]

    _, processor = tiny
    batch = VargptDataCollator(processor)([UNDERSTAND_AND_DRAW, TEXT_ONLY])
    base = VargptForConditionalGeneration.from_pretrained(workdir / "model").eval()
    with torch.no_grad():
        base_out = base(**batch)
    adapted = PeftModel.from_pretrained(base, output).eval()
    with torch.no_grad():
        adapted_out = adapted(**batch)
    assert not torch.allclose(adapted_out.image_logits, base_out.image_logits, atol=1e-4)  # the adapters act
    merged = adapted.merge_and_unload().eval()
    assert type(merged) is VargptForConditionalGeneration
    with torch.no_grad():
        merged_out = merged(**batch)
    torch.testing.assert_close(merged_out.image_logits, adapted_out.image_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_out.logits, adapted_out.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_out.loss, adapted_out.loss, atol=1e-5, rtol=1e-5)


class _Crash(TrainerCallback):
    """Simulates the job being killed right after the checkpoint of `at_step` is written."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def test_resume_from_checkpoint_loses_and_repeats_no_step(workdir, tmp_path):
    from trl import TrlParser

    def argv(output):
        # 12 examples, batch 2: 6 steps in one epoch, so the kill at step 4 is mid-epoch
        return _train_args(workdir, 3, output, "data12", "--max_steps", "6", "--per_device_train_batch_size", "2",
                           "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "1e-3")  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_main(argv(straight))

    parser = TrlParser((VargptScriptArguments, VargptSFTConfig))
    script_args, training_args = parser.parse_args_and_config(argv(resumed))
    trainer = build_trainer(script_args, training_args)
    trainer.add_callback(_Crash(at_step=4))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    train_main(argv(resumed) + ["--resume_from_checkpoint", "last"])
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    expected, got = _history(straight), _history(resumed)
    assert [entry["step"] for entry in got] == [1, 2, 3, 4, 5, 6]  # none lost, none repeated
    _assert_same_curve(expected, got, ("loss", "text_loss", "image_loss", "grad_norm", "learning_rate"), 1e-5, 1e-6)
    final_straight = VargptForConditionalGeneration.from_pretrained(straight).state_dict()
    final_resumed = VargptForConditionalGeneration.from_pretrained(resumed).state_dict()
    for name, value in final_straight.items():
        torch.testing.assert_close(final_resumed[name], value, atol=1e-6, rtol=1e-5)


def test_two_processes_give_the_same_loss_curve(workdir, tmp_path):
    """DDP over gloo on CPU (2 processes × batch 2) against 1 process × batch 4: same global batches, same curve."""
    single, double = tmp_path / "single", tmp_path / "double"
    common = ("--max_steps", "4", "--learning_rate", "3e-3", "--activation_checkpointing", "false")
    train_main(_train_args(workdir, 3, single, "data12", *common, "--per_device_train_batch_size", "4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
               "-m", "transformers_vargpt.training",
               *_train_args(workdir, 3, double, "data12", *common, "--per_device_train_batch_size", "2")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _history(single), _history(double)
    assert len(one) == len(two) == 4
    assert two[-1]["epoch"] == pytest.approx(one[-1]["epoch"])  # each process saw half of each global batch
    _assert_same_curve(one, two, ("loss", "text_loss", "image_loss", "grad_norm"), 1e-4, 1e-5)


def test_example_script_writes_only_into_its_output_dir(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "finetune_lora.py"
    output = tmp_path / "example"
    command = [sys.executable, str(script), "--output_dir", str(output), "--max_steps", "2", "--num_examples", "4"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "adapter" / "adapter_model.safetensors").is_file() and (output / "sample.png").is_file()
    assert (output / "data" / "train.jsonl").is_file() and (output / "tiny-model" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example"]  # nothing in the working directory
