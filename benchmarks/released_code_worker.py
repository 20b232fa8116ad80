"""The released code's side of `benchmarks.released_code`: one timing process in the *reference* environment.

    REF_DIR/refvenv/bin/python benchmarks/released_code_worker.py REF_DIR/refpkg CHECKPOINT REPEATS THREADS

Runs under the reference venv (transformers 4.46), so it imports nothing from this repository: the released classes
come from `REF_DIR/refpkg` (prepared as benchmarks/REFERENCE.md says) through the `refshim` placed there. On the
released-layout CHECKPOINT, float32, batch 1, greedy, no guidance, it times
- text-to-image: the released inference path (prefill of the prompt, then the `inference_image_gen` forward that
  runs all scales, decodes the image and writes `output.png` into the working directory: run it in a scratch one);
- understanding: `generate` with one image, 32 new greedy tokens, through the released `_sample`;
one warm-up each (which also records the greedy image codes and the answer tokens), then REPEATS timed calls.
Prints one JSON line.

The released code cannot take its VAR/VQVAE sizes from `config.json` (they are arguments of a builder with the 2B
model's values as defaults), so the builder is wrapped with the checkpoint's `reference_hparams` from `golden.json`;
its sampler is replaced by argmax (greedy); and `image_seq_length = 0` keeps text-only prompts off LLaVA's legacy
merge, which crashes on them (the released training copy does the same in effect).
"""

import json
import os
import statistics
import sys
import time

import torch


def load_released(refpkg: str, checkpoint: str):
    """The released model on `checkpoint`, greedy; returns (model, list the image codes are appended to)."""
    sys.path.insert(0, refpkg)
    import refshim  # noqa: F401  (in refpkg: registers the module names the released code imports itself by)
    import lmms_eval.models.visionllm.vargpt_llava.var_model.models as var_models
    from patching_utils_shim import patching

    modeling = refshim.modeling
    hparams = json.load(open(os.path.join(checkpoint, "golden.json")))["reference_hparams"]
    build = var_models.build_vae_vargpt_v1

    def build_with_checkpoint_sizes(device, num_classes=1000, depth=30, **_):
        return build(device, patch_nums=tuple(hparams["patch_nums"]), V=hparams["vq_vocab_size"],
                     Cvae=hparams["vq_z_channels"], ch=hparams["vq_ch"],
                     share_quant_resi=hparams["vq_share_quant_resi"], num_classes=num_classes,
                     depth=hparams["var_depth"])

    codes = []

    def argmax(logits, rng=None, top_k=0, top_p=0.0, num_samples=1):
        picked = logits.argmax(-1, keepdim=True)
        codes.append(picked[..., 0])
        return picked

    modeling.build_vae_vargpt_v1 = build_with_checkpoint_sizes
    modeling.sample_with_top_k_top_p_ = argmax
    model = modeling.VARGPTLlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    model.config.image_seq_length = 0
    patching(model)  # the released repository's `_sample`, as its inference scripts install it
    return model, codes


def main(refpkg: str, checkpoint: str, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    from safetensors.torch import load_file
    from transformers import DynamicCache

    model, codes = load_released(refpkg, checkpoint)
    inputs = load_file(os.path.join(checkpoint, "golden.safetensors"))
    start = json.load(open(os.path.join(checkpoint, "golden.json")))["special_tokens"]["image_gen_start_token_id"]

    def text_to_image():
        codes.clear()
        prompt = inputs["t2i_input_ids"]
        prefill = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)
        cache = prefill.past_key_values
        if not isinstance(cache, DynamicCache):
            cache = DynamicCache.from_legacy_cache(cache)
        model(input_ids=torch.tensor([[start]]), past_key_values=cache, use_cache=True, inference_image_gen=True)
        return torch.cat(codes, dim=1)

    def understanding():
        ids = inputs["und_input_ids"]
        return model.generate(input_ids=ids, pixel_values=inputs["und_pixel_values"],
                              attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                              do_sample=False)[:, ids.shape[1]:]

    return time_both(text_to_image, understanding, repeats)


def time_both(text_to_image, understanding, repeats: int) -> dict:
    """Each task's warm-up (its output kept: greedy codes, answer tokens), then `repeats` timed calls; both sides of
    the comparison time themselves with this one function."""
    import transformers

    result = {"transformers": transformers.__version__, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads()}
    with torch.no_grad():
        for name, call, output in (("t2i", text_to_image, "codes"), ("understanding", understanding, "tokens")):
            result[output] = call()[0].tolist()  # warm-up
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
            result[name] = {"median_s": statistics.median(samples), "samples_s": samples}
    return result


if __name__ == "__main__":
    refpkg_dir, checkpoint_dir, repeat_count, thread_count = sys.argv[1:5]
    print(json.dumps(main(refpkg_dir, checkpoint_dir, int(repeat_count), int(thread_count))))
