"""CPU linear layers for thin products (`transformers_vargpt.cpu_matmul`): thread-sliced ones (same products, classes
taken back) and column-major weights for drawings (same values, parameters and outputs)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformers_vargpt.cpu_matmul import (
    ThreadSlicedLinear,
    column_major_weights,
    is_column_major,
    slices_for,
    sliced_cpu_matmuls,
)


@pytest.fixture
def two_threads(monkeypatch):
    """Two torch threads, slicing on whatever the CPU (by default it is on where measured to pay: AVX2 CPUs)."""
    from transformers_vargpt import cpu_matmul

    monkeypatch.setattr(cpu_matmul, "enabled", True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 4, 9, 16, 37])
@pytest.mark.parametrize("bias", [True, False])
def test_sliced_product_equals_the_linear_layer(two_threads, rows, bias):
    torch.manual_seed(rows)
    layer = nn.Linear(96, 384, bias=bias)
    x = torch.randn(1, rows, 96)
    expected = F.linear(x, layer.weight, layer.bias)
    with torch.no_grad(), sliced_cpu_matmuls(layer):
        assert type(layer) is ThreadSlicedLinear
        out = layer(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_thick_products_stay_plain(two_threads, monkeypatch):
    layer = nn.Linear(64, 256)
    sliced = []
    batched = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *args: sliced.append(True) or batched(*args))
    with torch.no_grad(), sliced_cpu_matmuls(layer):
        layer(torch.randn(16, 64))
        assert sliced == [True]
        layer(torch.randn(17, 64))
    assert sliced == [True]


def test_non_contiguous_inputs_are_read_right(two_threads):
    layer = nn.Linear(64, 256)
    x = torch.randn(64, 10).t()  # 10 x 64, transposed view
    with torch.no_grad(), sliced_cpu_matmuls(layer):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_slices_follow_threads_and_never_get_thin(two_threads):
    assert slices_for(384) == 2
    assert slices_for(100) == 1  # 50 features per thread: not worth cutting
    assert slices_for(129) == 1  # not divisible
    torch.set_num_threads(1)
    assert slices_for(4096) == 1
    torch.set_num_threads(64)
    assert slices_for(4096) == 8  # at most MAX_SLICES


def test_only_plain_float32_cpu_linears_change_and_come_back(two_threads):
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(8, 256), Custom(8, 256), nn.Linear(8, 256).double(), nn.Conv1d(2, 2, 1))
    with torch.no_grad(), sliced_cpu_matmuls(model):
        assert [type(m) for m in model] == [ThreadSlicedLinear, Custom, nn.Linear, nn.Conv1d]
    assert [type(m) for m in model] == [nn.Linear, Custom, nn.Linear, nn.Conv1d]


def test_the_switch_turns_slicing_off(two_threads, monkeypatch):
    from transformers_vargpt import cpu_matmul

    model = nn.Sequential(nn.Linear(8, 256))
    monkeypatch.setattr(cpu_matmul, "enabled", False)
    with torch.no_grad(), sliced_cpu_matmuls(model):
        assert type(model[0]) is nn.Linear


def test_classes_come_back_when_the_block_raises(two_threads):
    model = nn.Sequential(nn.Linear(8, 256))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), sliced_cpu_matmuls(model):
        raise RuntimeError("boom")
    assert type(model[0]) is nn.Linear


def test_training_computes_plain_and_one_thread_keeps_plain_layers(two_threads):
    model = nn.Sequential(nn.Linear(8, 256))
    x = torch.randn(3, 8)
    model(x).sum().backward()
    expected = model[0].weight.grad.clone()
    model.zero_grad()
    with sliced_cpu_matmuls(model):  # autograd on: nn.Linear's own forward, gradients as always
        model(x).sum().backward()
    torch.testing.assert_close(model[0].weight.grad, expected, rtol=0, atol=0)
    torch.set_num_threads(1)
    with torch.no_grad(), sliced_cpu_matmuls(model):
        assert type(model[0]) is nn.Linear


def test_text_generation_runs_sliced_and_leaves_plain_layers_behind(two_threads):
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, _ = build_tiny_vargpt()
    seen = []
    model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(type(module)))
    model.generate(input_ids=torch.tensor([[1, 5, 6]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                   max_new_tokens=2, do_sample=False)
    assert seen == [ThreadSlicedLinear] * 2
    assert not any(isinstance(m, ThreadSlicedLinear) for m in model.modules())


def test_sliced_text_generation_gives_plain_generations_tokens_and_scores(two_threads, monkeypatch):
    """On the tiny model the LM head and the MLP's gate/up products (128 outputs) are cut in two slices."""
    from transformers_vargpt import cpu_matmul
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, _ = build_tiny_vargpt(seed=3)
    prompts = torch.tensor([[1, 5, 6, 7], [1, 9, 8, 4]])
    settings = dict(attention_mask=torch.ones_like(prompts), max_new_tokens=6, do_sample=False,
                    output_scores=True, return_dict_in_generate=True)
    sliced = model.generate(input_ids=prompts, **settings)
    monkeypatch.setattr(cpu_matmul, "enabled", False)
    plain = model.generate(input_ids=prompts, **settings)
    assert torch.equal(sliced.sequences, plain.sequences)
    for a, b in zip(sliced.scores, plain.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- column-major weights for drawings ----------------------------------------------------------------------------


def test_column_major_weights_keep_parameters_values_and_state_dict():
    class Custom(nn.Linear):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 256), Custom(8, 256), nn.Linear(8, 256).double(), nn.Linear(256, 1))
    parameters = list(model.parameters())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # the plain float32 ones, not the subclass or float64; the 1 x 256 weight is row- and column-major at once
    assert column_major_weights([model]) == 1
    assert [is_column_major(m.weight) for m in model] == [True, False, False, True]
    assert not model[0].weight.is_contiguous()
    assert list(model.parameters()) == parameters  # the same Parameter objects: optimizers still hold them
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert column_major_weights([model]) == 0  # once


def test_column_major_products_and_gradients_equal_plain_ones():
    torch.manual_seed(1)
    plain = nn.Linear(64, 192)
    moved = nn.Linear(64, 192)
    moved.load_state_dict(plain.state_dict())
    column_major_weights([moved])
    for rows in (1, 16, 300):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(moved(x), plain(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(16, 64)
    plain(x).square().sum().backward()
    moved(x).square().sum().backward()
    torch.testing.assert_close(moved.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-5)


def _greedy_drawing(model):
    prompt = torch.tensor([[1, 5, 6, 7]])
    return model.generate_images(prompt, torch.ones_like(prompt), do_sample=False, guidance_scale=1.0)


def test_drawing_stores_the_per_scale_layers_column_major_and_draws_the_same(monkeypatch, tmp_path):
    import copy

    from transformers_vargpt import VargptForConditionalGeneration, cpu_matmul
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, _ = build_tiny_vargpt(seed=5)
    row_major = copy.deepcopy(model)
    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", False)
    expected = _greedy_drawing(row_major)
    assert not any(is_column_major(m.weight) for m in row_major.modules() if type(m) is nn.Linear)

    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", True)
    drawn = _greedy_drawing(model)
    assert torch.equal(drawn.image_tokens, expected.image_tokens)
    torch.testing.assert_close(drawn.images, expected.images, atol=1e-5, rtol=0)
    per_scale = [m for part in model.layers_run_per_scale() for m in part.modules() if type(m) is nn.Linear]
    assert per_scale and all(is_column_major(m.weight) for m in per_scale)
    assert not is_column_major(model.lm_head.weight)  # text's head and the vision side keep their layout
    assert not any(is_column_major(m.weight) for m in model.model.vision_tower.modules() if type(m) is nn.Linear)

    # saving writes contiguous tensors with the same values; the reloaded model draws the same codes
    model.save_pretrained(tmp_path)
    reloaded = VargptForConditionalGeneration.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert torch.equal(_greedy_drawing(reloaded).image_tokens, expected.image_tokens)


def test_layers_inside_peft_adapters_keep_their_layout_so_adapters_still_save(monkeypatch, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers_vargpt import cpu_matmul
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", True)
    base, _ = build_tiny_vargpt(seed=2)
    config = peft.LoraConfig(r=4, target_modules=["fc1"], modules_to_save=["head"])
    model = peft.get_peft_model(base, config).eval()
    _greedy_drawing(model.base_model.model)
    wrapped = [m for m in model.modules()  # PEFT's layer wrappers, not the PeftModel / LoraModel around everything
               if type(m).__module__.startswith("peft.") and m not in (model, model.base_model)]
    inside = {id(layer) for wrapper in wrapped for layer in wrapper.modules() if type(layer) is nn.Linear}
    per_scale = [m for part in model.base_model.model.layers_run_per_scale() for m in part.modules()
                 if type(m) is nn.Linear]
    assert inside and all(not is_column_major(m.weight) for m in per_scale if id(m) in inside)
    assert any(is_column_major(m.weight) for m in per_scale if id(m) not in inside)  # the rest still moved
    model.save_pretrained(tmp_path)  # safetensors: would refuse a non-contiguous adapter or modules_to_save weight
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_weights_that_are_views_of_a_flat_buffer_or_partitioned_keep_their_storage():
    # DeepSpeed ZeRO-1/2 and FSDP keep parameters as views into one flat buffer that their optimizer step updates: a
    # weight given a storage of its own would silently stop following it (and ZeRO-3's partitioned ones are empty)
    torch.manual_seed(3)
    flat_member, owner, partitioned = nn.Linear(16, 64), nn.Linear(16, 64), nn.Linear(16, 64)
    flat = torch.zeros(flat_member.weight.numel() + 8)
    flat[: flat_member.weight.numel()].copy_(flat_member.weight.detach().view(-1))
    flat_member.weight.data = flat[: flat_member.weight.numel()].view(64, 16)
    partitioned.weight.ds_id = 0

    assert column_major_weights([flat_member, owner, partitioned]) == 1
    assert is_column_major(owner.weight) and not is_column_major(flat_member.weight)
    assert not is_column_major(partitioned.weight)
    flat[:4] = 7.0  # what an optimizer step on the buffer does
    assert torch.equal(flat_member.weight[0, :4], torch.full((4,), 7.0))


_ZERO2_DRAWING = """
import os, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
import deepspeed
import deepspeed.comm.torch
deepspeed.comm.torch.build_shm_op = lambda: None  # see tests/sharded_runs.py
from torch import nn
from transformers_vargpt import cpu_matmul
from transformers_vargpt.tiny_models import build_tiny_vargpt

cpu_matmul.column_major_drawing_weights = True
model, _ = build_tiny_vargpt(seed=4)
config = {{"train_batch_size": 1, "zero_optimization": {{"stage": 2}}, "zero_allow_untested_optimizer": True,
          "optimizer": {{"type": "SGD", "params": {{"lr": 0.5}}}}}}
engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
layers = [m for part in model.layers_run_per_scale() for m in part.modules() if type(m) is nn.Linear]
storages = [m.weight.untyped_storage().data_ptr() for m in layers]
before = [m.weight.detach().clone() for m in layers]
model.eval()
prompt = torch.tensor([[1, 5, 6, 7]])
model.generate_images(prompt, torch.ones_like(prompt), do_sample=False, guidance_scale=1.0)
assert [m.weight.untyped_storage().data_ptr() for m in layers] == storages, "a weight left the flat buffer"
model.train()
loss = sum(m.weight.square().sum() for m in layers)
engine.backward(loss)
engine.step()
assert all(not torch.equal(m.weight, b) for m, b in zip(layers, before)), "a weight did not follow the step"
print("ok", len(layers))
"""


def test_a_drawing_under_deepspeed_zero2_leaves_the_flat_buffer_in_charge(tmp_path):
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    with socket.socket() as free:  # a port for the one-process group
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = tmp_path / "zero2_drawing.py"
    script.write_text(_ZERO2_DRAWING.format(port=port))
    env = {**__import__("os").environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2] == "ok" and int(done.stdout.split()[-1]) > 0


def test_prepare_for_drawing_does_the_first_drawings_restoring_up_front(monkeypatch):
    from transformers_vargpt import cpu_matmul
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, _ = build_tiny_vargpt(seed=6)
    per_scale = [m for part in model.layers_run_per_scale() for m in part.modules() if type(m) is nn.Linear]
    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", False)
    assert model.prepare_for_drawing() == 0 and not any(is_column_major(m.weight) for m in per_scale)
    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", True)
    assert model.prepare_for_drawing(torch.device("meta")) == 0  # only where drawing runs on the CPU
    assert model.prepare_for_drawing() == len(per_scale) > 0
    assert all(is_column_major(m.weight) for m in per_scale)
    layouts = [m.weight.stride() for m in per_scale]
    _greedy_drawing(model)  # nothing left to re-store: a server that prepared may draw while answering
    assert model.prepare_for_drawing() == 0 and [m.weight.stride() for m in per_scale] == layouts
