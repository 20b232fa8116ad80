"""The medium random-weight configuration every benchmark uses, and builders for its model, processor and inputs.

Sizes (from the benchmark issue): LLM Llama 512 wide, 1376 MLP, 8 layers, 8 heads, vocab 32064 (like the release);
vision CLIP 256 wide, 1024 MLP, 6 layers, 4 heads, 224 px, patch 14 (256 image tokens); VAR depth 8 (512 wide,
8 heads); VQVAE ch 64, 4096 codes, 32 channels; scales 1,2,3,4,5,6,8,10,13,16 (680 codes, 256x256 images).
The tokenizer is the package's tiny word-level one (ids of the special tokens are small, so the condition table
has a few hundred rows instead of the release's 32003: it is a lookup and costs no time).
"""

from __future__ import annotations

import torch
from transformers import CLIPImageProcessorPil

from transformers_vargpt import VargptForConditionalGeneration
from transformers_vargpt.processing_vargpt import VargptProcessor
from transformers_vargpt.tiny_models import VICUNA_CHAT_TEMPLATE, build_tiny_tokenizer, tiny_config
from transformers_vargpt.tokens_vargpt import num_image_tokens

NUM_THREADS = 2
FULL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VQVAE_DOWNSAMPLE = 16
T2I_PROMPT = "please draw a red butterfly on a yellow flower ."
UNDERSTANDING_PROMPT = "what is in this picture ?"

TEXT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 32064,
    "max_position_embeddings": 2048,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 256,
}
GENERATION_SIZES = {
    "vq_vocab_size": 4096,
    "vq_z_channels": 32,
    "vq_ch": 64,
    "var_depth": 8,
    "var_embed_dim": 512,
    "var_num_heads": 8,
}


def setup_torch(num_threads: int = NUM_THREADS) -> None:
    """float32 on `num_threads` intra-op threads (the benchmark's fixed setting)."""
    torch.set_num_threads(num_threads)
    torch.set_default_dtype(torch.float32)


def medium_config(patch_nums=FULL_PATCH_NUMS, tokenizer=None, **overrides):
    """The medium `VargptConfig`; `patch_nums` prefixes give smaller images (`image_gen_size = last * 16`)."""
    patch_nums = [int(p) for p in patch_nums]
    side, patch_size = VISION_CONFIG["image_size"], VISION_CONFIG["patch_size"]
    settings = dict(
        text_config=dict(TEXT_CONFIG),
        vision_config=dict(VISION_CONFIG),
        image_seq_length=num_image_tokens(side, side, patch_size),
        patch_nums=patch_nums,
        image_gen_size=patch_nums[-1] * VQVAE_DOWNSAMPLE,
        **GENERATION_SIZES,
    )
    settings.update(overrides)
    return tiny_config(tokenizer or build_tiny_tokenizer(), **settings)


def build_processor(config, tokenizer=None) -> VargptProcessor:
    """A processor matching `config`: CLIP preprocessing at 224 px, the tiny tokenizer, the config's scales."""
    size = config.vision_config.image_size
    return VargptProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer or build_tiny_tokenizer(),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=VICUNA_CHAT_TEMPLATE,
        patch_nums=config.patch_nums,
        image_gen_size=config.image_gen_size,
    )


def build_medium(patch_nums=FULL_PATCH_NUMS, seed: int = 0, **overrides):
    """(model, processor): the medium VARGPT with random weights (seeded), float32, eval mode."""
    tokenizer = build_tiny_tokenizer()
    config = medium_config(patch_nums, tokenizer, **overrides)
    torch.manual_seed(seed)
    model = VargptForConditionalGeneration(config).to(torch.float32).eval()
    return model, build_processor(config, tokenizer)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def t2i_inputs(processor, batch_size: int = 1, prompt: str = T2I_PROMPT) -> dict:
    """A short text-to-image prompt (chat template + `<|image_gen_start|>`), repeated `batch_size` times."""
    return processor(text=[prompt] * batch_size, generation_mode="image", return_tensors="pt")


def understanding_inputs(processor, seed: int = 0, prompt: str = UNDERSTANDING_PROMPT) -> dict:
    """One random 224 px image and a short question, through the processor (256 `<image>` tokens)."""
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, 224, 224, generator=generator) * 255).to(torch.uint8)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(images=[image], text=[text], return_tensors="pt")
