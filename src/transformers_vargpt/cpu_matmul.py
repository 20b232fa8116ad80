"""Linear layers that keep every CPU thread busy where the matrix products are thin: text generation.

A text answer at batch 1 multiplies each weight matrix by one row per new token. For such thin products oneMKL's
`sgemm`, which `nn.Linear` calls on CPU, ran on one thread of an AVX2 CPU (AMD EPYC) however many torch had, and
streamed the weights at about 10 GB/s. Cutting the weight into one slice of output features per thread and running
the slices as one batched product (`torch.bmm`) gives every thread its own slice: 1.05–1.9× faster products up to 16
rows, 1.15× faster greedy answers on the medium model (`python -m benchmarks.sliced_matmul`, BENCHMARKS.md "Thin
matrix products on CPU"). Thicker products stay plain: the gain fades by ~36 rows. Drawing does not use it: its
first scales are thin too, but with them sliced the later, thick scales ran slower by as much as the thin ones
gained (1.72 vs 1.75 s).

Each output is still one dot product over all input features, computed by the same kind of kernel, so the result is
the same up to the last bit in most shapes (not guaranteed: the kernel may block the sum differently for a narrower
matrix).

Drawing has thin products of its own: its first scales feed 1 to 64 rows through every layer of the LLM and of VAR,
each time with weights that were evicted from the caches by the scale before. There oneMKL was slow in another way
on an AVX-512 Xeon: `nn.Linear` asks it for `x @ W.T` with `W` stored row by row, and for 16–36 rows that transposed
product ran at 42–120 GFLOP/s where the same product with `W.T` stored contiguously (`W` column-major) ran 1.2–1.6×
faster on the LLM's and VAR's widening layers and the code head (weights evicted between calls, as in a forward
pass; `python -m benchmarks.column_major`). `column_major_weights` stores them so, once, for the layers a drawing
runs at every scale: same shapes, same values, no extra memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Above this many threads the slices would get thin enough to lose the kernel's efficiency, and nothing was measured.
MAX_SLICES = 8

# Products with more rows than this run as plain `nn.Linear` (measured: no gain at 25–36 rows, a loss from 64).
MAX_ROWS = 16

# On by default where it was measured to pay: CPUs whose best instructions are AVX2 (oneMKL ran thin products on one
# thread there). On an AVX-512 Xeon oneMKL already streamed one-row products at ~17 GB/s, and sliced they were 7%
# slower in a product benchmark. Set it to True or False to choose (benchmarks/sliced_matmul.py compares both).
enabled = torch.backends.cpu.get_cpu_capability() == "AVX2"


# On by default where it was measured to pay: AVX-512 CPUs (whole drawings 1.04-1.05x faster on an Intel Xeon, same
# codes; answers unchanged). Not measured on AVX2 CPUs, where thin products were slow for another reason (see above).
# Set it to True or False to choose before a drawing; once stored column-major, weights stay so.
column_major_drawing_weights = torch.backends.cpu.get_cpu_capability() == "AVX512"


def slices_for(out_features: int) -> int:
    """How many output slices a product with `out_features` outputs is cut into: one per thread (at most
    MAX_SLICES), or 1 (not cut) where the threads do not divide the outputs into slices of at least 64."""
    slices = min(torch.get_num_threads(), MAX_SLICES)
    if slices < 2 or out_features % slices or out_features // slices < 64:
        return 1
    return slices


class ThreadSlicedLinear(nn.Linear):
    """`nn.Linear` whose inference forward on CPU runs one slice of output features per thread when the input has at
    most MAX_ROWS rows (see the module docstring); otherwise, with autograd on or on other devices it is
    `nn.Linear.forward`.

    Only `sliced_cpu_matmuls` gives modules this class, for the duration of a `generate` call, and takes it back
    afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = slices_for(self.out_features)
        if (
            slices == 1
            or x.numel() > MAX_ROWS * self.in_features
            or torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != self.weight.dtype
            or x.ndim < 2
        ):
            return F.linear(x, self.weight, self.bias)
        leading = x.shape[:-1]
        rows = x.reshape(1, -1, self.in_features).expand(slices, -1, -1)  # slices × M × K, no copy
        weight = self.weight.view(slices, -1, self.in_features).transpose(1, 2)  # slices × K × N/slices
        if self.bias is None:
            out = torch.bmm(rows, weight)
        else:
            out = torch.baddbmm(self.bias.view(slices, 1, -1), rows, weight)
        return out.transpose(0, 1).reshape(*leading, self.out_features)  # M × N, slices side by side


def _plain_float32_cpu_linear(module: nn.Module) -> bool:
    # exactly nn.Linear: subclasses (quantized layers, adapters' own types) keep their own forward
    return type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32


@contextmanager
def sliced_cpu_matmuls(model: nn.Module) -> Iterator[None]:
    """Within the block, the plain float32 CPU `nn.Linear` layers of `model` compute as [`ThreadSlicedLinear`]
    when torch has several threads and `enabled` is True (each call still checks autograd and its rows); afterwards
    they are plain `nn.Linear` again. Nothing else about the modules changes (parameters, hooks, state dict), and
    nested or concurrent uses are harmless: a layer is only ever one of the two classes, which compute the same."""
    if not enabled or torch.get_num_threads() < 2:
        yield
        return
    layers = [module for module in model.modules() if _plain_float32_cpu_linear(module)]
    for layer in layers:
        layer.__class__ = ThreadSlicedLinear
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = nn.Linear


def is_column_major(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight (out × in) is stored as the contiguous transpose of an in × out matrix."""
    return weight.dim() == 2 and weight.t().is_contiguous()


def column_major_weights(modules) -> int:
    """Store the weights of the plain float32 CPU `nn.Linear` layers among `modules` (and their submodules)
    column-major: `weight.data` becomes a copy with strides (1, out_features), so `F.linear` hands oneMKL a plain
    instead of a transposed product. Values, shapes, parameters (the same `nn.Parameter` objects), hooks and the
    state dict's contents are unchanged, and the copy is made one layer at a time, so the model never holds two.
    Layers already column-major, on other devices or in other dtypes are left alone, and so is everything inside
    PEFT's wrappers (LoRA layers and their base layers, `modules_to_save` copies): PEFT writes adapter weights with
    safetensors as they are, which refuses non-contiguous tensors. So are weights that do not own their storage
    alone (`_owns_its_storage`): a trainer that keeps every parameter as a view into one flat buffer (DeepSpeed
    ZeRO-1/2, FSDP) updates the buffer, and a weight given a storage of its own would silently stop following it.
    Returns how many layers were converted.

    What changes is the storage: the state dict's tensors are not contiguous (`save_pretrained` makes them so as it
    writes; `safetensors.torch.save_file` wants `.contiguous()` first), and views taken of the old `weight.data` no
    longer alias the parameter.
    """
    converted = 0
    for module in modules:
        for layer in _linears_outside_adapters(module):
            if not is_column_major(layer.weight) and _owns_its_storage(layer.weight):
                layer.weight.data = layer.weight.data.t().contiguous().t()
                converted += 1
    return converted


def _owns_its_storage(weight: nn.Parameter) -> bool:
    """Whether `weight` is a plain tensor that is all of its storage: not a view into a flat buffer (DeepSpeed
    ZeRO-1/2, FSDP's flat parameters), not a DTensor (FSDP2), not partitioned by DeepSpeed ZeRO-3 (`ds_id`)."""
    data = weight.data
    return (
        type(data) is torch.Tensor
        and not hasattr(weight, "ds_id")
        and data.storage_offset() == 0
        and data.untyped_storage().nbytes() == data.numel() * data.element_size()
    )


def _linears_outside_adapters(module: nn.Module) -> Iterator[nn.Linear]:
    if type(module).__module__.startswith("peft."):
        return
    if _plain_float32_cpu_linear(module):
        yield module
    for child in module.children():
        yield from _linears_outside_adapters(child)
