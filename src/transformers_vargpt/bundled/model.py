"""The bundled model's architecture: a small CLIP vision tower and a small Llama (both from scratch), a VAR decoder,
and a trained shapes-world VQVAE, assembled into an untrained `VargptForConditionalGeneration` and its processor."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from ..configuration_vargpt import VargptConfig, VargptVQVAEConfig
from ..modeling_vargpt import VargptForConditionalGeneration
from ..modeling_vargpt_vqvae import VargptVQVAE
from ..processing_vargpt import VargptProcessor
from ..tiny_models import VICUNA_CHAT_TEMPLATE
from ..tokens_vargpt import ADDED_TOKENS, GENERATION_TOKENS, special_tokens_entry


SPARE_TOKEN_ROWS = 16
# what `to_dict` of the loaded VQVAE's config records about where it came from, not what it is
VQVAE_PROVENANCE_KEYS = ("_name_or_path", "architectures", "transformers_version")


@dataclass(frozen=True)
class BundledSizes:
    """Widths and depths of the parts trained here (the VQVAE's come with it)."""

    text_hidden: int = 128
    text_intermediate: int = 384
    text_layers: int = 3
    text_heads: int = 4
    vision_hidden: int = 64
    vision_intermediate: int = 192
    vision_layers: int = 3
    vision_heads: int = 4
    vision_image_size: int = 64
    vision_patch_size: int = 16
    var_embed_dim: int = 128
    var_depth: int = 3
    var_heads: int = 4
    var_cond_drop_rate: float = 0.1
    # share of teacher-forced input codes replaced by random ones in training (`var_config.input_code_noise`)
    var_input_code_noise: float = 0.2

    @classmethod
    def smoke(cls) -> "BundledSizes":
        """Tiny sizes for the smoke run of the recipe (every step, seconds each)."""
        return cls(text_hidden=32, text_intermediate=64, text_layers=1, text_heads=2, vision_hidden=32,
                   vision_intermediate=64, vision_layers=1, vision_heads=2, var_embed_dim=32, var_depth=1,
                   var_heads=2)

    def to_dict(self) -> dict:
        return asdict(self)


def bundled_config(tokenizer: PreTrainedTokenizerFast, vqvae_config: VargptVQVAEConfig, sizes: BundledSizes
                   ) -> VargptConfig:
    """The model config: `sizes` for the parts trained here, the VQVAE's own sizes for drawing."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ADDED_TOKENS}
    # a multiple of 32 with at least SPARE_TOKEN_ROWS unused rows: a fine-tune can add words to the tokenizer
    # (examples/teach_pink_lora.py) without resizing, so its adapters load onto this very model
    vocab_size = (len(tokenizer) + SPARE_TOKEN_ROWS + 31) // 32 * 32
    return VargptConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": sizes.text_hidden,
            "intermediate_size": sizes.text_intermediate,
            "num_hidden_layers": sizes.text_layers,
            "num_attention_heads": sizes.text_heads,
            "num_key_value_heads": sizes.text_heads,
            "vocab_size": vocab_size,
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": sizes.vision_hidden,
            "intermediate_size": sizes.vision_intermediate,
            "num_hidden_layers": sizes.vision_layers,
            "num_attention_heads": sizes.vision_heads,
            "image_size": sizes.vision_image_size,
            "patch_size": sizes.vision_patch_size,
        },
        # the last CLIP layer: the tower is small and trained with the LLM, so nothing is gained by skipping one
        vision_feature_layer=-1,
        image_token_index=ids["<image>"],
        image_seq_length=(sizes.vision_image_size // sizes.vision_patch_size) ** 2,
        pad_token_id=ids["<pad>"],
        special_tokens=special_tokens_entry({token: ids[token] for token in GENERATION_TOKENS.values()}),
        vq_config={key: value for key, value in vqvae_config.to_dict().items() if key not in VQVAE_PROVENANCE_KEYS},
        var_config={
            "num_hidden_layers": sizes.var_depth,
            "hidden_size": sizes.var_embed_dim,
            "num_attention_heads": sizes.var_heads,
            "drop_path_rate": 0.0,  # a few thousand steps on a small model: no regularisation needed
            "condition_dropout": sizes.var_cond_drop_rate,
            # every scale the same weight in the image loss: per code, the first scales (which fix the colours) are a
            # few codes among 130 and a model trained from scratch would learn them last
            "loss_weighting": "scale",
            # meant to make the decoder take the colours from the prompt rather than from the earlier scales, which
            # teacher forcing always shows right; in a trial it drew held-out colours better (81% against 75%), the
            # whole picture no better (40% against 43%, 72 drawings each)
            "input_code_noise": sizes.var_input_code_noise,
        },
        tie_word_embeddings=False,
    )


def bundled_processor(tokenizer: PreTrainedTokenizerFast, config: VargptConfig) -> VargptProcessor:
    """CLIP preprocessing at the tower's size (no crop: the pictures are square) and VARGPT's prompt handling."""
    # imported here: without torchvision, transformers warns of its PIL fallback at the import itself, which would
    # otherwise print on every import of the recipe's modules (the saved type stays `CLIPImageProcessor`, so users
    # with torchvision get its backend)
    from transformers import CLIPImageProcessor

    side = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return VargptProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=VICUNA_CHAT_TEMPLATE,
        patch_nums=config.vq_config.scale_sizes,
        image_gen_size=config.vq_config.image_size,
    )


def build_untrained_model(
    tokenizer: PreTrainedTokenizerFast, vqvae: VargptVQVAE, sizes: BundledSizes, seed: int
) -> tuple[VargptForConditionalGeneration, VargptProcessor]:
    """A randomly initialised VARGPT (seeded) whose VQVAE is `vqvae`'s weights; and its processor."""
    config = bundled_config(tokenizer, vqvae.config, sizes)
    torch.manual_seed(seed)
    model = VargptForConditionalGeneration(config)
    model.model.vqvae.load_state_dict(vqvae.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model, bundled_processor(tokenizer, config)


def load_vqvae(path: str | os.PathLike) -> VargptVQVAE:
    """A VQVAE saved with `save_pretrained` (the VQVAE trainer's output directory)."""
    return VargptVQVAE.from_pretrained(path, dtype=torch.float32)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per top-level part of a VARGPT (and the total)."""
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        part = name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
        counts[part] = counts.get(part, 0) + parameter.numel()
    counts["total"] = sum(counts.values())
    return counts


__all__ = ["BundledSizes", "bundled_config", "bundled_processor", "build_untrained_model", "load_vqvae",
           "count_parameters"]
