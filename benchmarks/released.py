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


# The released loop's wasted work, item by item: each can be switched off to measure what it costs (`waste_ablation`).
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
    f_hat = condition.new_zeros(batch, config.vq_z_channels, quantizer.final_size, quantizer.final_size)
    var_cache = ScaleKVCache(len(decoder.blocks))
    num_scales = len(decoder.scale_sizes)
    for si, side in enumerate(decoder.scale_sizes):
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
        f_hat = f_hat + quantizer.scale_contribution(si, quantizer.lookup(codes, side))
        if si + 1 < num_scales:
            next_side = decoder.scale_sizes[si + 1]
            token_map = F.interpolate(f_hat, size=(next_side, next_side), mode="area").flatten(2).transpose(1, 2)
            tokens = decoder.scale_input(si + 1, token_map)
    image = released_decode(vqvae, f_hat) if released_decoder else vqvae.decode_fhat(f_hat)
    return image.add(1).mul(0.5)


def waste_ablation(model, input_ids: torch.LongTensor, repeats: int = 5) -> dict:
    """The released loop with all its waste, and with each item of `WASTE` switched off in turn, interleaved:
    seconds each item costs per batch-1 image (released median - median without it)."""
    from .timing import measure_interleaved

    variants = {"released_style": lambda: released_style_generate(model, input_ids)}
    for item in WASTE:
        variants[f"without_{item}"] = lambda item=item: released_style_generate(model, input_ids, **{item: False})
    timings = measure_interleaved(variants, repeats=repeats)
    released = timings["released_style"]["median_s"]
    return {
        "timings": timings,
        "cost_s": {item: released - timings[f"without_{item}"]["median_s"] for item in WASTE},
        "what": dict(WASTE),
    }


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
    from .timing import measure_interleaved

    inputs = t2i_inputs(processor, 1)
    timings = measure_interleaved(
        {
            "vargpt": lambda: model.generate_images(**inputs, do_sample=False, guidance_scale=1.0),
            "released_style": lambda: released_style_generate(model, inputs["input_ids"]),
        },
        repeats=3 if quick else 7,
    )
    return {
        "what": "the released inference loop's work re-enacted on the same modules (see benchmarks/released.py)",
        "timings": timings,
        "speedup": timings["released_style"]["median_s"] / timings["vargpt"]["median_s"],
        "decode": decode_before_after(model, batch_sizes=(1, 8), repeats=3 if quick else 5),
        "waste": waste_ablation(model, inputs["input_ids"], repeats=3 if quick else 5),
    }


def decode_before_after(model, batch_sizes=(1, 8), repeats: int = 5) -> dict:
    """The VQVAE decode alone, released work (`released_decode`) vs ours (`decode_fhat`), on the same random f̂:
    seconds per image at each batch size, interleaved."""
    from .timing import measure_interleaved

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
            "speedup": timings["released_style"]["median_s"] / timings["vargpt"]["median_s"],
        }
    return results
