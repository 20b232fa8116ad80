"""Reading a module's weights outside its `forward` under accelerate's offload hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def own_weights_loaded(module: nn.Module) -> Iterator[None]:
    """Let code outside `module.forward` read the module's own weights.

    accelerate's sequential CPU offload keeps a module's own weights on the meta device except during its `forward`;
    under it this loads them the way the hook does before `forward` (what `accelerate.utils.align_module_device`
    does), and does nothing otherwise.
    """
    hook = getattr(module, "_hf_hook", None)
    if not getattr(hook, "offload", False):
        yield
        return
    hook.pre_forward(module)
    try:
        yield
    finally:
        hook.post_forward(module, None)
