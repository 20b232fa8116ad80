"""Shared fixtures: the released-code fixtures in ../shared/fixtures and tiny random VARGPT configs/models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import transformers_vargpt  # noqa: F401  (registers vargpt_llava with the Auto classes)
from transformers import AutoModelForImageTextToText
from transformers_vargpt import VargptConfig, VargptForConditionalGeneration
from transformers_vargpt.tiny_models import TINY_GENERATION_SIZES
from transformers_vargpt.tokens_vargpt import (
    IMAGE_GEN_END_TOKEN,
    IMAGE_GEN_PAD_TOKEN,
    IMAGE_GEN_START_TOKEN,
    special_tokens_entry,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TINY_DIR = FIXTURES / "vargpt-original-tiny"
OFFICIAL_STATE_DICT_JSON = FIXTURES / "vargpt-llava-v1-official-state-dict.json"

# ids of the tiny fixture (config.json / golden.json), reused by the random tiny configs
IMAGE_TOKEN_ID = 300
PAD_TOKEN_ID = 301
IMAGE_GEN_START_ID = 302
IMAGE_GEN_END_ID = 303
IMAGE_GEN_PAD_ID = 304
SPECIAL_TOKENS = special_tokens_entry(
    {
        IMAGE_GEN_START_TOKEN: IMAGE_GEN_START_ID,
        IMAGE_GEN_END_TOKEN: IMAGE_GEN_END_ID,
        IMAGE_GEN_PAD_TOKEN: IMAGE_GEN_PAD_ID,
    }
)

TINY_TEXT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "vocab_size": 320,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "rms_norm_eps": 1e-5,
}
TINY_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}
# 32x32 image, patch 8 -> 16 patches (CLS dropped by the "default" strategy)
TINY_IMAGE_SEQ_LENGTH = 16
TINY_NUM_IMAGE_GEN_TOKENS = 1 + 4 + 9 + 16


def make_tiny_config(**overrides) -> VargptConfig:
    """A small random-model VargptConfig. `text_config` / `vision_config` overrides (dicts) are merged."""
    text = dict(TINY_TEXT_CONFIG, **overrides.pop("text_config", {}))
    vision = dict(TINY_VISION_CONFIG, **overrides.pop("vision_config", {}))
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=TINY_IMAGE_SEQ_LENGTH,
        pad_token_id=PAD_TOKEN_ID,
        special_tokens=copy.deepcopy(SPECIAL_TOKENS),
        # wider than the 0.02 default so that a random model's greedy codes vary from position to position
        initializer_range=0.1,
        **copy.deepcopy(TINY_GENERATION_SIZES),
    )
    kwargs.update(overrides)
    return VargptConfig(**kwargs)


def make_tiny_model(seed: int = 0, **overrides) -> VargptForConditionalGeneration:
    """A tiny random VargptForConditionalGeneration in eval mode, reproducible from `seed`."""
    config = make_tiny_config(**overrides)
    torch.manual_seed(seed)
    model = VargptForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = TINY_TEXT_CONFIG["eos_token_id"]
    model.generation_config.bos_token_id = TINY_TEXT_CONFIG["bos_token_id"]
    return model


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    assert TINY_DIR.is_dir(), f"fixture checkpoint missing: {TINY_DIR}"
    return TINY_DIR


@pytest.fixture(scope="session")
def golden(tiny_dir) -> dict:
    return json.loads((tiny_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_tensors(tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_dir / "golden.safetensors"))


@pytest.fixture(scope="session")
def released_tiny_model(tiny_dir, golden):
    """The released-layout tiny checkpoint loaded through the Auto classes, eval mode. Do not mutate it."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, **golden["reference_hparams"])
    return model.eval()


@pytest.fixture
def tiny_config():
    """Factory: `tiny_config(**overrides)` → a fresh small random-model VargptConfig."""
    return make_tiny_config


@pytest.fixture
def tiny_model():
    """Factory: `tiny_model(seed=0, **config_overrides)` → a fresh tiny random model in eval mode."""
    return make_tiny_model
