"""Loading a local checkpoint directory safely: unreadable weight files are named, and a released-layout directory
(whose `config.json` records only the LLaVA half) gets its VAR / VQVAE sizes from the shapes of its weights.

The released code hard-codes the VAR and VQVAE sizes, so its `config.json` lacks them; loading such a directory with
the wrong sizes would build random blocks (a smaller or deeper VAR) or fail late with a generic mismatch. Most sizes
are determined by the weights' shapes (depth, widths, vocabulary, heads) and `patch_nums` by the saved `lvl_1L` buffer
(the scale of each image position); `vq_quant_resi` and `var_norm_eps` are not (the released values are the
defaults), and a load that needs what the weights do not say names it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

# The released VARGPT-v1 values (VARGPT.md): VAR-d30 decoder, VQVAE f16 with 4096 codes, 256x256 images.
RELEASED_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

# Released flat hyper-parameter names → (sub-config, field) of `VargptConfig`.
RELEASED_FLAT_NAMES = {
    "patch_nums": ("vq_config", "scale_sizes"),
    "image_gen_size": ("vq_config", "image_size"),
    "vq_vocab_size": ("vq_config", "vocab_size"),
    "vq_z_channels": ("vq_config", "z_channels"),
    "vq_ch": ("vq_config", "base_channels"),
    "vq_ch_mult": ("vq_config", "channel_multipliers"),
    "vq_num_res_blocks": ("vq_config", "num_res_blocks"),
    "vq_quant_resi": ("vq_config", "residual_ratio"),
    "vq_share_quant_resi": ("vq_config", "num_residual_filters"),
    "var_depth": ("var_config", "num_hidden_layers"),
    "var_embed_dim": ("var_config", "hidden_size"),
    "var_num_heads": ("var_config", "num_attention_heads"),
    "var_mlp_ratio": ("var_config", "mlp_ratio"),
    "var_attn_l2_norm": ("var_config", "attention_l2_norm"),
    "var_shared_aln": ("var_config", "shared_adaln"),
    "var_norm_eps": ("var_config", "layer_norm_eps"),
    "var_num_classes": ("var_config", "num_classes"),
    "var_drop_path_rate": ("var_config", "drop_path_rate"),
    "var_cond_drop_rate": ("var_config", "condition_dropout"),
}


_VAR = "vargpt_gen."
_VAE = "vae_local."


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (sharded or not)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({directory / name for name in weight_map.values()})
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def read_weight_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Tensor name → shape, from the safetensors headers only; an unreadable file is named."""
    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = list(handle.get_slice(name).get_shape())
        except Exception as error:  # safetensors raises its own error type for truncated or corrupt files
            raise OSError(
                f"cannot read the weights file {str(path)!r} (truncated or corrupt? download it again): {error}"
            ) from error
    return shapes


def scale_sizes_from_scale_ids(scale_ids) -> list[int] | None:
    """`patch_nums` from the released `lvl_1L` buffer (the scale index of each of the L image positions): scale i
    covers s_i² positions. None when the buffer does not describe square scales in order."""
    ids = scale_ids.flatten().long()
    if ids.numel() == 0 or bool((ids[1:] < ids[:-1]).any()) or int(ids.min()) != 0:
        return None
    sides = []
    for count in ids.bincount().tolist():
        side = math.isqrt(count)
        if count == 0 or side * side != count:
            return None
        sides.append(side)
    return sides


def _read_tensor(files: list[Path], name: str):
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    return None


def released_sizes_from_shapes(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """The released flat hyper-parameters that the released weight names and shapes determine."""
    sizes: dict[str, Any] = {}
    blocks = {int(m.group(1)) for name in shapes if (m := re.match(rf"^{_VAR}blocks\.(\d+)\.", name))}
    if blocks:
        sizes["var_depth"] = max(blocks) + 1
    if f"{_VAR}word_embed.weight" in shapes:
        sizes["var_embed_dim"], sizes["vq_z_channels"] = shapes[f"{_VAR}word_embed.weight"]
    if f"{_VAR}class_emb.weight" in shapes:
        sizes["var_num_classes"] = shapes[f"{_VAR}class_emb.weight"][0] - 1
    fc1 = shapes.get(f"{_VAR}blocks.0.ffn.fc1.weight")
    if fc1 is not None:
        sizes["var_mlp_ratio"] = fc1[0] / fc1[1]
    if blocks:
        logit_scale = shapes.get(f"{_VAR}blocks.0.attn.scale_mul_1H11")
        sizes["var_attn_l2_norm"] = logit_scale is not None
        if logit_scale is not None:
            sizes["var_num_heads"] = logit_scale[1]
        sizes["var_shared_aln"] = f"{_VAR}shared_ada_lin.1.weight" in shapes
    if f"{_VAE}quantize.embedding.weight" in shapes:
        sizes["vq_vocab_size"] = shapes[f"{_VAE}quantize.embedding.weight"][0]
    if f"{_VAE}encoder.conv_in.weight" in shapes:
        base = shapes[f"{_VAE}encoder.conv_in.weight"][0]
        stages = sorted({int(m.group(1)) for n in shapes if (m := re.match(rf"^{_VAE}encoder\.down\.(\d+)\.", n))})
        widths = [shapes.get(f"{_VAE}encoder.down.{i}.block.0.conv1.weight", [None])[0] for i in stages]
        if stages and None not in widths:
            sizes["vq_ch"] = base
            sizes["vq_ch_mult"] = [width // base for width in widths]
            sizes["vq_num_res_blocks"] = len(
                {m.group(1) for n in shapes if (m := re.match(rf"^{_VAE}encoder\.down\.0\.block\.(\d+)\.", n))}
            )
    filters = {m.group(1) for n in shapes if (m := re.match(rf"^{_VAE}quantize\.quant_resi\.qresi_ls\.(\d+)\.", n))}
    if filters:
        sizes["vq_share_quant_resi"] = len(filters)
    return sizes


def released_sizes_for(directory: Path, config: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The released flat hyper-parameters to load `directory` with, when it is a released-layout checkpoint whose
    `config.json` lacks them: the ones its weights determine, checked against the `given` ones (flat keyword
    arguments). `config` is the directory's `config.json` as a dict. Raises naming the fields that contradict the
    weights or that must be passed. Returns `{}` for directories that carry their sizes (our layout, or a config that
    holds them)."""
    if "vq_config" in config or "var_config" in config or any(name in config for name in RELEASED_FLAT_NAMES):
        return {}
    files = weight_files(directory)
    shapes = read_weight_shapes(files)
    if not any(name.startswith(_VAR) for name in shapes):
        return {}
    detected = released_sizes_from_shapes(shapes)
    if f"{_VAR}lvl_1L" in shapes:  # a small buffer: the scale of each image position gives the scale sides
        scale_sizes = scale_sizes_from_scale_ids(_read_tensor(files, f"{_VAR}lvl_1L"))
        if scale_sizes is not None:
            detected["patch_nums"] = scale_sizes
    contradicted = [
        f"{name}={given[name]!r} (the weights have {value!r})"
        for name, value in detected.items()
        if name in given and _differs(given[name], value)
    ]
    if contradicted:
        raise ValueError(
            f"{directory} is a released-layout checkpoint whose weights contradict the sizes passed: "
            f"{', '.join(contradicted)}; leave these out (they are read from the weights) or correct them"
        )
    sizes = {name: value for name, value in detected.items() if name not in given}
    patch_nums = given.get("patch_nums", sizes.get("patch_nums", RELEASED_PATCH_NUMS))
    num_scales = shapes.get(f"{_VAR}lvl_embed.weight", [len(patch_nums)])[0]
    length = shapes.get(f"{_VAR}pos_1LC", [1, sum(s * s for s in patch_nums)])[1]
    if len(patch_nums) != num_scales or sum(s * s for s in patch_nums) != length:
        hint = "" if "patch_nums" in given else " (not recorded in the released config.json)"
        raise ValueError(
            f"{directory} is a released-layout checkpoint with {num_scales} scales and {length} image tokens, which "
            f"patch_nums={list(patch_nums)}{hint} does not give: pass patch_nums= (the side of each scale, "
            f"increasing, squares summing to {length}) to from_pretrained; image_gen_size then follows"
        )
    if "image_gen_size" not in given and ("patch_nums" in given or "patch_nums" in sizes):
        multipliers = given.get("vq_ch_mult", sizes.get("vq_ch_mult"))
        if multipliers is not None:
            sizes["image_gen_size"] = list(patch_nums)[-1] * 2 ** (len(multipliers) - 1)
    if not sizes.get("var_attn_l2_norm", True) and "var_num_heads" not in given:
        raise ValueError(
            f"{directory} is a released-layout checkpoint whose VAR head count its weights do not determine: "
            "pass var_num_heads= to from_pretrained"
        )
    return sizes


def _differs(given: Any, detected: Any) -> bool:
    if isinstance(detected, list):
        return [int(v) for v in given] != detected
    if isinstance(detected, float):
        return abs(float(given) - detected) > 1e-6
    return given != detected


__all__ = ["RELEASED_FLAT_NAMES", "RELEASED_PATCH_NUMS", "read_weight_shapes", "released_sizes_for", "released_sizes_from_shapes", "weight_files"]
