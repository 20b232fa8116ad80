"""The released implementation's text-to-image loop, re-enacted on our modules, as a same-run baseline.

The released code cannot run here (it pins transformers 4.46 and writes `output.png`), and none of it is copied.
What this module reproduces is the *work* its inference loop does per image, so that "how much faster than the
released implementation" is a ratio measured in one run on one machine rather than against a number taken
elsewhere. Per scale the released loop (VARGPT.md, "Known faults"):

- runs the LLM through its causal-LM head: logits over the whole vocabulary for every new image token;
- asks for all hidden states (`output_hidden_states=True`);
- always runs the VAR blocks on a doubled batch, the second half being Gaussian noise (its guidance branch), and
  mixes the two halves with VAR's ramp (cfg 1.5);
- recomputes every block's AdaLN projection of the (constant) condition;
- decodes f̂ with the VQVAE in the default (channels-first) memory layout, the whole batch at once, upsampling by
  nearest-neighbour interpolation before each 3×3 conv, with a fresh tensor for every activation
  (`released_decode`, over our decoder's modules and weights).

Same weights, same prompt, greedy codes: only the amount of work differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from transformers_vargpt.modeling_vargpt import CACHE_ARG
from transformers_vargpt.modeling_vargpt_var import ScaleKVCache

RELEASED_CFG = 1.5


# The released loop's wasted work, item by item: each can be switched off in `released_style_generate` (all off,
# with our decoder, it is our greedy generation), and `waste_costs` times each alone.
WASTE = {
    "lm_head_logits": "LM-head logits over the vocabulary for every image token",
    "noise_branch": "VAR blocks on a batch doubled with a noise guidance branch",
    "adaln_every_scale": "AdaLN projections of the constant condition recomputed at every scale",
    "released_decoder": "released VQVAE decode (channels-first, nearest upsampling + 3x3 conv, fresh activations)",
}


@torch.no_grad()
def released_style_generate(
    model,
    input_ids: torch.LongTensor,
    *,
    lm_head_logits: bool = True,
    noise_branch: bool = True,
    adaln_every_scale: bool = True,
    released_decoder: bool = True,
) -> torch.Tensor:
    """One image per prompt row (B×T ending with `<|image_gen_start|>`) → images in [0, 1], doing the released work.

    Each keyword switches one item of `WASTE` off (for the ablation); all on is the released loop.
    """
    body, config = model.model, model.config
    decoder, quantizer, vqvae = body.scale_decoder, body.vqvae.quantizer, body.vqvae
    batch = input_ids.shape[0]
    llm_cache = DynamicCache(config=config.text_config)

    def llm(embeds: torch.Tensor) -> torch.Tensor:
        outputs = body.language_model(inputs_embeds=embeds, use_cache=True, output_hidden_states=lm_head_logits,
                                      **{CACHE_ARG: llm_cache})
        if lm_head_logits:
            model.lm_head(outputs.last_hidden_state)  # the released loop computes (and drops) these logits
        return outputs.last_hidden_state

    llm(model.get_input_embeddings()(input_ids))
    rows = torch.full((2 * batch,), decoder.unconditional_class, device=input_ids.device)
    rows[:batch] = config.image_gen_start_token_id
    condition = decoder.class_embed(rows if noise_branch else rows[:batch])
    tokens = decoder.first_scale_input(condition)[:batch]
    f_hat = condition.new_zeros(batch, config.vq_config.z_channels, quantizer.final_size, quantizer.final_size)
    var_cache = ScaleKVCache(len(decoder.blocks))
    num_scales = len(decoder.scale_sizes)
    for si in range(num_scales):
        hidden = llm(body.gen_input_projector(tokens))
        if noise_branch:
            hidden = torch.cat([hidden, torch.randn_like(hidden)])  # the released guidance branch: noise
        if adaln_every_scale:
            var_cache.modulations.clear()  # AdaLN projections recomputed at every scale
        logits = decoder(body.gen_output_projector(hidden), condition, cache=var_cache)
        if noise_branch:
            ramp = RELEASED_CFG * si / (num_scales - 1)
            logits = (1 + ramp) * logits[:batch] - ramp * logits[batch:]
        codes = logits.argmax(dim=-1)
        f_hat, token_map = quantizer.add_scale(f_hat, si, codes)
        if token_map is not None:
            tokens = decoder.scale_input(si + 1, token_map)
    image = released_decode(vqvae, f_hat) if released_decoder else vqvae.decode_fhat(f_hat)
    return image.add(1).mul(0.5)


@torch.no_grad()
def waste_costs(model, decode_batch1: dict, repeats: int = 15) -> dict:
    """Seconds per batch-1 image that each item of `WASTE` adds, each timed alone on the generation's real shapes.

    Whole-loop ablations (the loop with one item switched off) cannot resolve 0.05–0.3 s effects on a machine whose
    speed drifts by ±25 % within a 1.5 s call, so each item's extra work is timed by itself, many times, interleaved
    with the work it is compared against:
    - LM-head logits: the LM head over every scale's new hidden states (ours computes none);
    - noise branch: all scales of the VAR blocks at batch 2 minus batch 1;
    - AdaLN per scale: the blocks' and head's modulations computed 10 times minus once;
    - released decoder: `released_decode` minus `decode_fhat` on the same f̂, taken from `decode_batch1` (the batch-1
      entry of `decode_before_after`) rather than timed again.
    """
    from .timing import measure, measure_interleaved, paired_difference

    body, config = model.model, model.config
    decoder = body.scale_decoder
    generator = torch.Generator().manual_seed(0)
    lengths = [side * side for side in decoder.scale_sizes]
    text_width, var_width = config.text_config.hidden_size, decoder.class_embed.embedding_dim
    llm_states = [torch.randn(1, n, text_width, generator=generator) for n in lengths]
    var_states = [torch.randn(2, n, var_width, generator=generator) for n in lengths]
    rows = torch.tensor([config.image_gen_start_token_id, decoder.unconditional_class])
    condition = decoder.class_embed(rows)

    def lm_head_logits():
        for states in llm_states:
            model.lm_head(states)

    def var_blocks(batch: int):
        cache = ScaleKVCache(len(decoder.blocks))
        for states in var_states:
            decoder(states[:batch], condition[:batch], cache=cache)

    def modulations():
        block_condition = decoder.block_condition(condition[:1])
        for block in decoder.blocks:
            block.modulation(block_condition)
        decoder.head_norm.modulation(condition[:1])

    noise = measure_interleaved({"batch_2": lambda: var_blocks(2), "batch_1": lambda: var_blocks(1)}, repeats=repeats)
    decode = decode_batch1["timings"]
    timings = {
        "lm_head_logits": measure(lm_head_logits, repeats=repeats),
        "noise_branch": noise,
        "adaln_once": measure(modulations, repeats=repeats),
        "released_decoder": decode,
    }
    num_scales = len(lengths)
    cost = {
        "lm_head_logits": timings["lm_head_logits"]["median_s"],
        "noise_branch": paired_difference(noise, "batch_2", "batch_1"),
        "adaln_every_scale": (num_scales - 1) * timings["adaln_once"]["median_s"],
        "released_decoder": paired_difference(decode, "released_style", "vargpt"),
    }
    return {"timings": timings, "cost_s": cost, "what": dict(WASTE)}


def _released_resnet_block(block, x: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(F.silu(block.norm2(h)))
    return block.nin_shortcut(x) + h


@torch.no_grad()
def released_decode(vqvae, f_hat: torch.Tensor) -> torch.Tensor:
    """f̂ (B×Cvae×S×S) → image in [-1, 1], doing the released decoder's work with our decoder's weights."""
    decoder = vqvae.decoder
    h = decoder.conv_in(vqvae.post_quant_conv(f_hat))
    h = _released_resnet_block(decoder.mid.block_2, decoder.mid.attn_1(_released_resnet_block(decoder.mid.block_1, h)))
    for stage in reversed(decoder.up):
        for i, block in enumerate(stage.block):
            h = _released_resnet_block(block, h)
            if len(stage.attn):
                h = stage.attn[i](h)
        if stage.resample_name:
            h = getattr(stage, stage.resample_name).conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return decoder.conv_out(F.silu(decoder.norm_out(h))).clamp(-1, 1)


def run(model, processor, quick: bool = False) -> dict:
    """Ours vs the released-style loop at batch 1, interleaved, greedy, same prompt and weights."""
    from .medium import t2i_inputs
    from .timing import measure_interleaved, paired_ratio

    inputs = t2i_inputs(processor, 1)
    timings = measure_interleaved(
        {
            "vargpt": lambda: model.generate_images(**inputs, do_sample=False, guidance_scale=1.0),
            "released_style": lambda: released_style_generate(model, inputs["input_ids"]),
        },
        repeats=5 if quick else 9,
    )
    decode = decode_before_after(model, batch_sizes=(1, 8), repeats=3 if quick else 5)
    return {
        "what": "the released inference loop's work re-enacted on the same modules (see benchmarks/released.py)",
        "timings": timings,
        "speedup": paired_ratio(timings, "released_style", "vargpt"),
        "speedup_of_medians": timings["released_style"]["median_s"] / timings["vargpt"]["median_s"],
        "decode": decode,
        "waste": waste_costs(model, decode["1"], repeats=7 if quick else 15),
    }


def decode_before_after(model, batch_sizes=(1, 8), repeats: int = 5) -> dict:
    """The VQVAE decode alone, released work (`released_decode`) vs ours (`decode_fhat`), on the same random f̂:
    seconds per image at each batch size, interleaved."""
    from .timing import measure_interleaved, paired_ratio

    vqvae = model.model.vqvae
    size = vqvae.quantizer.final_size
    generator = torch.Generator().manual_seed(0)
    results = {}
    for batch in batch_sizes:
        f_hat = torch.randn(batch, vqvae.config.z_channels, size, size, generator=generator)
        with torch.no_grad():
            timings = measure_interleaved(
                {"vargpt": lambda: vqvae.decode_fhat(f_hat), "released_style": lambda: released_decode(vqvae, f_hat)},
                repeats=repeats,
            )
        results[str(batch)] = {
            "seconds_per_image": {name: stats["median_s"] / batch for name, stats in timings.items()},
            "timings": timings,
            "speedup": paired_ratio(timings, "released_style", "vargpt"),
        }
    return results
