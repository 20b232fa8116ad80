"""The full-size released checkpoint (VARGPT-family/VARGPT_LLaVA-v1), checked without downloading it.

`vargpt-llava-v1-official-state-dict.json` lists every key of the released state dict with its shape, the released
config and the parameter count. We build our model at full size on the meta device (no memory) and check that every
released key lands on a parameter or buffer of ours with the same shape, and that nothing of ours is left without a
source.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import initialization as init

from conftest import OFFICIAL_STATE_DICT_JSON
from transformers_vargpt import VargptConfig, VargptForConditionalGeneration
from transformers_vargpt.modeling_vargpt import RELEASED_KEY_MAPPING

# Buffers of the released checkpoint that our model derives from the config instead of loading.
DERIVED_BUFFERS = re.compile(r"(^|\.)(lvl_1L|attn_bias_for_masking|zero_k_bias|ema_vocab_hit_SV)$")


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads(OFFICIAL_STATE_DICT_JSON.read_text())


@pytest.fixture(scope="module")
def official_config(official) -> VargptConfig:
    return VargptConfig(**official["config"])


@pytest.fixture(scope="module")
def meta_model(official_config) -> VargptForConditionalGeneration:
    # What from_pretrained does: the meta device, with torch.linspace kept on the CPU (see test_builds_on_meta_device
    # for the plain meta-device context).
    with torch.device("meta"), init.meta_device_safe_creation_ops():
        model = VargptForConditionalGeneration(official_config)
    return model


def _rename(key: str) -> str:
    for pattern, replacement in RELEASED_KEY_MAPPING.items():
        key = re.sub(pattern, replacement, key)
    return key


def _our_tensors(model) -> dict[str, torch.Size]:
    tensors = {name: p.shape for name, p in model.named_parameters()}
    tensors.update({name: b.shape for name, b in model.named_buffers()})
    return tensors


def test_official_config_is_the_released_model(official, official_config):
    config = official_config
    assert config.text_config.hidden_size == 4096 and config.text_config.num_hidden_layers == 32
    assert config.text_config.vocab_size == 32064
    assert config.vision_config.hidden_size == 1024 and config.vision_config.num_hidden_layers == 24
    assert config.image_gen_start_token_id == 32002
    assert config.image_gen_end_token_id == 32003
    assert config.image_gen_pad_token_id == 32004
    # the VAR/VQVAE sizes the released config.json does not record default to the released values
    assert config.patch_nums == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    assert config.num_image_gen_tokens == 680
    assert config.var_num_classes == 32003
    state_dict = official["state_dict"]
    assert state_dict["vargpt_gen.class_emb.weight"][0] == [config.var_num_classes + 1, config.var_embed_dim]
    assert state_dict["vae_local.quantize.embedding.weight"][0] == [config.vq_vocab_size, config.vq_z_channels]
    assert len([k for k in state_dict if re.match(r"vargpt_gen\.blocks\.\d+\.attn\.mat_qkv\.weight$", k)]) == (
        config.var_depth
    )


def test_builds_on_meta_device():
    """`with torch.device("meta")` is how users (and accelerate's init_empty_weights(include_buffers=True)) build a
    9B model without memory; the constructor must not read values of tensors it creates.

    Runs in a fresh interpreter: once transformers' from_pretrained has run in a process, torch's device-context
    function table is cached with transformers' temporarily patched torch.linspace, and plain torch.linspace then
    escapes the meta device for the rest of the process, which would hide the problem.
    """
    script = textwrap.dedent(
        f"""
        import json, torch
        from transformers_vargpt import VargptConfig, VargptForConditionalGeneration
        config = VargptConfig(**json.load(open({str(OFFICIAL_STATE_DICT_JSON)!r}))["config"])
        with torch.device("meta"):
            model = VargptForConditionalGeneration(config)
        assert model.lm_head.weight.is_meta and model.model.scale_decoder.head.weight.is_meta
        print("built", sum(p.numel() for p in model.parameters()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built 9278137863" in result.stdout


def test_released_key_mapping_maps_every_released_key(official, meta_model):
    """RELEASED_KEY_MAPPING alone (released names → ours, applied in order) puts every key on a tensor of ours."""
    ours = _our_tensors(meta_model)
    unmapped, wrong_shape = [], []
    for key, (shape, _dtype) in official["state_dict"].items():
        if DERIVED_BUFFERS.search(key):
            continue
        name = _rename(key)
        if name not in ours:
            unmapped.append(f"{key} -> {name}")
        elif list(ours[name]) != shape:
            wrong_shape.append(f"{key} -> {name}: released {shape}, ours {list(ours[name])}")
    assert not wrong_shape, "\n".join(wrong_shape[:20])
    assert not unmapped, f"{len(unmapped)} released keys map to nothing of ours, e.g.\n" + "\n".join(unmapped[:10])


def test_from_pretrained_renaming_maps_every_released_key(official, meta_model):
    """What from_pretrained actually applies: RELEASED_KEY_MAPPING plus transformers' own per-sub-model conversions
    (e.g. CLIPVisionModel's 'vision_model.' prefix) — every released key lands on a tensor of ours, right shape,
    and every parameter of ours gets a source."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(meta_model, RELEASED_KEY_MAPPING)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    ours = _our_tensors(meta_model)
    sources: dict[str, list[str]] = {}
    derived, unmapped, wrong_shape = [], [], []
    for key, (shape, _dtype) in official["state_dict"].items():
        if DERIVED_BUFFERS.search(key):
            derived.append(key)
            continue
        name, _ = rename_source_key(key, renamings, converters, meta_model.base_model_prefix, ours)
        if name not in ours:
            unmapped.append(f"{key} -> {name}")
            continue
        if list(ours[name]) != shape:
            wrong_shape.append(f"{key} -> {name}: released {shape}, ours {list(ours[name])}")
        sources.setdefault(name, []).append(key)
    assert not unmapped, f"{len(unmapped)} released keys map to nothing of ours, e.g.\n" + "\n".join(unmapped[:10])
    assert not wrong_shape, "\n".join(wrong_shape[:20])
    collisions = {name: keys for name, keys in sources.items() if len(keys) > 1}
    assert not collisions, f"several released keys land on one tensor: {list(collisions.items())[:5]}"
    orphans = [name for name, _ in meta_model.named_parameters() if name not in sources]
    assert not orphans, f"{len(orphans)} parameters of ours have no source in the released checkpoint: {orphans[:10]}"
    # the derived buffers: 1 lvl_1L, 1 attn_bias_for_masking, one zero_k_bias per VAR block, 1 ema_vocab_hit_SV
    assert len(derived) == 3 + meta_model.config.var_depth


def test_derived_buffers_have_our_shapes(official, meta_model):
    """The released buffers we derive rather than load describe the same things as ours."""
    state_dict = official["state_dict"]
    decoder = meta_model.model.scale_decoder
    num_tokens = meta_model.config.num_image_gen_tokens
    assert state_dict["vargpt_gen.lvl_1L"][0] == [1, num_tokens]
    assert tuple(decoder.scale_ids.shape) == (num_tokens,)
    assert state_dict["vargpt_gen.attn_bias_for_masking"][0] == [1, 1, num_tokens, num_tokens]
    assert tuple(decoder.block_causal_mask.shape) == (num_tokens, num_tokens)
    assert state_dict["vae_local.quantize.ema_vocab_hit_SV"][0][-1] == meta_model.config.vq_vocab_size
    # and from_pretrained does not complain about them
    ignored = [re.compile(p) for p in VargptForConditionalGeneration._keys_to_ignore_on_load_unexpected]
    for key in state_dict:
        if DERIVED_BUFFERS.search(key):
            assert any(p.search(key) for p in ignored), key


def test_parameter_count(official, meta_model):
    """`num_parameters` counts parameters only (the state dict also holds the released buffers: lvl_1L,
    attn_bias_for_masking, zero_k_bias, ema_vocab_hit_SV), so it is compared with our parameters only."""
    ours = sum(p.numel() for p in meta_model.parameters())
    assert ours == official["num_parameters"]
    released_total = sum(torch.Size(shape).numel() for shape, _ in official["state_dict"].values())
    released_buffers = sum(
        torch.Size(shape).numel() for key, (shape, _) in official["state_dict"].items() if DERIVED_BUFFERS.search(key)
    )
    assert released_total - released_buffers == official["num_parameters"]
