"""Understanding (one 224 px image + short question, prefill + 32 greedy tokens) against transformers' LLaVA.

`LlavaForConditionalGeneration` is built from a `LlavaConfig` with the same CLIP and Llama sub-configs and receives
VARGPT's `vision_tower`, `multi_modal_projector`, `language_model` and `lm_head` weights, so both compute the same
function (checked: identical greedy tokens). Both are timed in the same run with interleaved repeats.
"""

from __future__ import annotations

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from .medium import understanding_inputs
from .timing import measure_interleaved, paired_ratio

NEW_TOKENS = 32


def llava_config(config) -> LlavaConfig:
    """The `LlavaConfig` with VARGPT's CLIP and Llama sub-configs and its image settings."""
    return LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_index,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=config.vision_feature_layer,
        image_seq_length=config.image_seq_length,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        pad_token_id=config.pad_token_id,
    )


def build_llava(model) -> LlavaForConditionalGeneration:
    """A LLaVA holding the same weights as VARGPT's understanding half (float32, eval)."""
    config = model.config
    llava = LlavaForConditionalGeneration(llava_config(config)).to(torch.float32).eval()
    for name in ("vision_tower", "multi_modal_projector", "language_model"):
        getattr(llava.model, name).load_state_dict(getattr(model.model, name).state_dict())
    llava.lm_head.load_state_dict(model.lm_head.state_dict())
    llava.generation_config.pad_token_id = config.pad_token_id
    return llava


def answer(model, inputs) -> torch.Tensor:
    """Prefill + exactly NEW_TOKENS greedy tokens (EOS cannot stop it early, so both do the same work)."""
    return model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
        pad_token_id=model.config.pad_token_id,
    )


def run(model, processor, quick: bool = False) -> dict:
    """Median seconds of each and the ratio LLaVA / VARGPT (>= 1: VARGPT is as fast or faster)."""
    inputs = understanding_inputs(processor)
    llava = build_llava(model)
    with torch.no_grad():
        same_tokens = bool(torch.equal(answer(model, inputs), answer(llava, inputs)))
        logit_diff = (model(**inputs).logits - llava(**inputs).logits).abs().max().item()
    timings = measure_interleaved(
        {"vargpt": lambda: answer(model, inputs), "llava": lambda: answer(llava, inputs)},
        repeats=5 if quick else 15,
    )
    del llava
    return {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": int(model.config.image_seq_length),
        "new_tokens": NEW_TOKENS,
        "same_greedy_tokens_as_llava": same_tokens,
        "max_abs_prefill_logit_difference": logit_diff,
        "timings": timings,
        "ratio_llava_over_vargpt": paired_ratio(timings, "llava", "vargpt"),
        "ratio_of_medians": timings["llava"]["median_s"] / timings["vargpt"]["median_s"],
    }
