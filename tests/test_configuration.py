"""VargptConfig: sub-configs, the released flat names, and what save_pretrained writes."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from conftest import make_tiny_config
from transformers_vargpt import VargptConfig, VargptVarConfig, VargptVQVAEConfig
from transformers_vargpt.configuration_vargpt import RELEASED_FLAT_NAMES
from transformers_vargpt.tiny_models import TINY_GENERATION_SIZES


def test_sub_configs_hold_the_generation_sizes():
    config = make_tiny_config()
    assert isinstance(config.vq_config, VargptVQVAEConfig) and isinstance(config.var_config, VargptVarConfig)
    assert config.vq_config.scale_sizes == [1, 2, 3, 4] and config.vq_config.image_size == 64
    assert (config.var_config.num_hidden_layers, config.var_config.hidden_size) == (2, 64)
    assert config.num_image_gen_tokens == config.vq_config.num_image_gen_tokens == 30
    # the condition table defaults to one row per id up to <|image_gen_start|>, plus the unconditional row
    assert config.var_config.num_classes == config.image_gen_start_token_id + 1
    # the released names read the sub-configs
    for name, (sub_config, field) in RELEASED_FLAT_NAMES.items():
        assert getattr(config, name) == getattr(getattr(config, sub_config), field), name


def test_save_writes_the_nested_form_and_round_trips(tmp_path):
    config = make_tiny_config(var_cond_drop_rate=0.25)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not set(RELEASED_FLAT_NAMES) & set(saved), "flat released names must not be written"
    assert saved["vq_config"]["scale_sizes"] == [1, 2, 3, 4]
    assert saved["var_config"]["condition_dropout"] == 0.25
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VargptConfig)
    assert loaded.vq_config.to_dict() == config.vq_config.to_dict()
    assert loaded.var_config.to_dict() == config.var_config.to_dict()
    assert loaded.special_tokens == config.special_tokens


def test_flat_names_accepted_as_keyword_arguments_of_from_pretrained(tmp_path):
    make_tiny_config().save_pretrained(tmp_path)
    loaded = VargptConfig.from_pretrained(tmp_path, var_depth=3, vq_ch=64, var_cond_drop_rate=0.0)
    assert loaded.var_config.num_hidden_layers == 3
    assert loaded.vq_config.base_channels == 64
    assert loaded.var_config.condition_dropout == 0.0
    # the other nested values stay as saved
    assert loaded.vq_config.scale_sizes == [1, 2, 3, 4] and loaded.var_config.hidden_size == 64


def test_flat_keys_in_a_config_json_fill_the_sub_configs(tmp_path):
    """A config.json written with the released flat names (as the released hyper-parameters spell them)."""
    saved = make_tiny_config().to_dict()
    del saved["vq_config"], saved["var_config"]
    saved.update(TINY_GENERATION_SIZES, var_num_heads=4)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.vq_config.scale_sizes == TINY_GENERATION_SIZES["patch_nums"]
    assert loaded.vq_config.z_channels == TINY_GENERATION_SIZES["vq_z_channels"]
    assert loaded.var_config.num_attention_heads == 4


def test_flat_names_override_a_given_sub_config():
    config = make_tiny_config(var_config={"num_hidden_layers": 5, "hidden_size": 32, "num_attention_heads": 2})
    assert config.var_config.num_hidden_layers == 2  # var_depth of TINY_GENERATION_SIZES wins over the dict
    assert config.var_config.hidden_size == 64
    given = VargptVarConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2)
    config = VargptConfig(var_config=given, var_depth=1)
    assert (config.var_config.num_hidden_layers, config.var_config.hidden_size) == (1, 32)


def test_released_names_are_read_only():
    config = make_tiny_config()
    with pytest.raises(AttributeError):
        config.var_depth = 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"var_embed_dim": 30, "var_num_heads": 4}, "divisible"),
        ({"patch_nums": [1, 2, 3, 5]}, "image_size"),
        ({"var_num_classes": 10}, "no row for the condition"),
    ],
)
def test_bad_sizes_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_config(**overrides)
