"""Raster-scan autoregressive baseline with exactly VARGPT's parameters, and VARGPT's speed-up over it.

Construction: the *same model object* generates the same 680 codes one token at a time, in the order VARGPT lays
them out (scale by scale, row-major), with a KV cache in the LLM and in the VAR blocks:

    token i input  = code_embed(codebook[code i-1]) + pos_embed[i] + scale_embed[scale of i]  (i = 0: the start
                     token, condition + start_pos_embed, exactly VARGPT's first scale)
    → gen_input_projector → LLM (one position, KV cache) → gen_output_projector
    → VAR blocks (one position, causal KV cache: it attends to every earlier code) → head → greedy code.

After the last code the image is decoded by the same VQVAE (`decode_image_tokens`). Every weight used is one of
VARGPT's, so the parameter count is identical by construction; per code the matmul work is the same as in VARGPT
(same layers over the same number of positions; attention spans differ slightly: causal here, block-causal there).
The only difference is the number of sequential steps: 680 here, 10 (one per scale) in VARGPT.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaModel

from transformers_vargpt.modeling_vargpt_var import ScaleKVCache

from .medium import count_parameters, t2i_inputs
from .t2i import generate as generate_next_scale
from .timing import measure, measure_interleaved, paired_ratio

CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def generation_parameters(model) -> int:
    """Parameters of the drawing path: everything but the vision tower, the image projector and the text head."""
    body = model.model
    return sum(
        count_parameters(module)
        for module in (body.language_model, body.gen_input_projector, body.gen_output_projector,
                       body.scale_decoder, body.vqvae)
    )


def _llm(model, embeds, positions, cache):
    out = model.model.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=True, **{CACHE_ARG: cache})
    return out.last_hidden_state


@torch.no_grad()
def raster_generate(model, input_ids: torch.LongTensor, num_tokens: int | None = None) -> dict:
    """Greedy raster-scan generation of `num_tokens` codes (default all L) for one unpadded prompt (1×T).

    Returns {"image_tokens": 1×n codes, "images": 1×3×H×W in [0, 1] (only when all L codes were generated)}.
    """
    config, body = model.config, model.model
    decoder, quantizer = body.scale_decoder, body.vqvae.quantizer
    total = decoder.num_tokens if num_tokens is None else num_tokens
    start_id = config.image_gen_start_token_id
    if input_ids[0, -1].item() != start_id:
        input_ids = torch.cat([input_ids, input_ids.new_full((1, 1), start_id)], dim=1)
    cache = DynamicCache(config=config.text_config)
    prompt_length = input_ids.shape[1]
    _llm(model, model.get_input_embeddings()(input_ids), torch.arange(prompt_length)[None], cache)

    condition = decoder.class_embed(body.condition_rows(1, input_ids.device))
    block_condition_input = condition
    positions = decoder.pos_embed[0] + decoder.scale_embed(decoder.scale_ids)  # L×C
    var_cache = ScaleKVCache(len(decoder.blocks))
    x = (condition + decoder.start_pos_embed[:, 0] + positions[0])[:, None]  # 1×1×C, VARGPT's first scale input
    codes = []
    for i in range(total):
        hidden = _llm(model, body.gen_input_projector(x), torch.tensor([[prompt_length + i]]), cache)
        logits = decoder(body.gen_output_projector(hidden), block_condition_input, cache=var_cache)
        code = logits[:, -1].argmax(dim=-1)
        codes.append(code)
        if i + 1 < total:
            x = (decoder.code_embed(quantizer.codebook(code)) + positions[i + 1])[:, None]
    tokens = torch.stack(codes, dim=1)
    result = {"image_tokens": tokens}
    if total == decoder.num_tokens:
        result["images"] = model.decode_image_tokens(tokens)
    return result


def run(model, processor, quick: bool = False) -> dict:
    """Both methods at batch 1 in the same run; speed-up = raster median / VARGPT median."""
    inputs = t2i_inputs(processor, 1)
    input_ids = inputs["input_ids"]
    raster_generate(model, input_ids, num_tokens=8)  # warm-up of the token-by-token path
    repeats = 1 if quick else 3
    timings = measure_interleaved(
        {
            "next_scale_vargpt": lambda: generate_next_scale(model, inputs),
            "raster_scan": lambda: raster_generate(model, input_ids),
        },
        repeats=repeats,
        warmup=0,
    )
    steps_vargpt = len(model.config.patch_nums)
    codes = model.config.num_image_gen_tokens
    return {
        "construction": "same model object, codes generated one at a time with LLM and VAR-block KV caches "
        "(see benchmarks/raster.py)",
        "generation_parameters": generation_parameters(model),
        "parameters_equal": True,
        "codes": codes,
        "sequential_steps": {"next_scale_vargpt": steps_vargpt, "raster_scan": codes},
        "timings": timings,
        "raster_seconds_per_code": timings["raster_scan"]["median_s"] / codes,
        "speedup": paired_ratio(timings, "raster_scan", "next_scale_vargpt"),
        "speedup_of_medians": timings["raster_scan"]["median_s"] / timings["next_scale_vargpt"]["median_s"],
    }
