"""Small, randomly initialised VARGPT models built entirely in-process (no Hub access).

Used by the tests and by the benchmarks. The tokenizer is a
word-level vocabulary built here, with the released special tokens added in the released order.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .configuration_vargpt import VargptConfig
from .tokens_vargpt import ADDED_TOKENS, IMAGE_TOKEN, PAD_TOKEN, special_tokens_entry

# The chat template (Vicuna / LLaVA-1.5). User and system turns, and the generation prompt, render exactly as the
# released template does (images first, then text, then "ASSISTANT:"). Assistant turns end with the eos token, so a
# model trained on them learns to stop, and the space after "ASSISTANT:" belongs to the answer's first word: an answer
# that starts with a drawing follows "ASSISTANT:" directly, as `VargptProcessor.build_text_to_image_prompt` prompts.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ 'ASSISTANT:' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] if content['text'].startswith('<image_gen>') else ' ' + content['text'] }}{% endfor %}"
    "{{ eos_token }}{% else %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


_WORDS = (
    "user assistant a an the of on in with and is it this that what which color shape picture image photo draw "
    "drawing design please here red green blue yellow black white orange purple circle square triangle star "
    "butterfly flower cat dog house tree sky sea building old new big small i have designed created of for "
    "describe show me can you see there are one two three ? . , : ! \n"
).split(" ")


# The drawing half of the tiny model: 64x64 images from 4 scales (30 codes of 64), a 2-block VAR.
TINY_GENERATION_SIZES = {
    "patch_nums": [1, 2, 3, 4],
    "image_gen_size": 64,
    "vq_vocab_size": 64,
    "vq_z_channels": 8,
    "vq_ch": 32,
    "var_depth": 2,
    "var_embed_dim": 64,
    "var_num_heads": 2,
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: `<unk> <s> </s>`, a few hundred words and letters, then the five VARGPT tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in _WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789"):
        if token and token not in vocab:
            vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return vargpt_fast_tokenizer(tokenizer)


def vargpt_fast_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers` word-level tokenizer (`<unk> <s> </s>` in its vocabulary) as a transformers tokenizer with
    VARGPT's special tokens, `<pad>` and the Vicuna chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=None
    )
    fast.add_special_tokens({"additional_special_tokens": list(ADDED_TOKENS)})
    fast.pad_token = PAD_TOKEN
    fast.chat_template = VICUNA_CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast | None = None, **overrides) -> VargptConfig:
    """A VARGPT config small enough for a laptop CPU: 64×64 images from 4 scales (30 tokens)."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ADDED_TOKENS}
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    settings = dict(
        text_config={
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": vocab_size,
            "max_position_embeddings": 512,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": ids[PAD_TOKEN],
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        image_token_index=ids[IMAGE_TOKEN],
        image_seq_length=16,
        pad_token_id=ids[PAD_TOKEN],
        special_tokens=special_tokens_entry(ids),
        **TINY_GENERATION_SIZES,
    )
    settings.update(overrides)
    return VargptConfig(**settings)


def build_tiny_vargpt(seed: int = 0, **overrides):
    """(model, processor) of a random tiny VARGPT, in eval mode. Weights are random: outputs are noise."""
    from transformers import CLIPImageProcessorPil

    from .modeling_vargpt import VargptForConditionalGeneration
    from .processing_vargpt import VargptProcessor

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, **overrides)
    torch.manual_seed(seed)
    model = VargptForConditionalGeneration(config).eval()
    # the PIL backend, as the released checkpoints load (no torchvision needed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.vision_config.image_size},
        crop_size={"height": config.vision_config.image_size, "width": config.vision_config.image_size},
    )
    processor = VargptProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=VICUNA_CHAT_TEMPLATE,
        patch_nums=config.patch_nums,
        image_gen_size=config.image_gen_size,
    )
    return model, processor


__all__ = ["TINY_GENERATION_SIZES", "build_tiny_tokenizer", "vargpt_fast_tokenizer", "tiny_config", "build_tiny_vargpt",
           "VICUNA_CHAT_TEMPLATE"]
