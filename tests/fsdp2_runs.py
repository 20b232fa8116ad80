"""FSDP2 (`torch.distributed.fsdp.fully_shard`) training steps of the tiny model on one mixed global batch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp2_runs.py MODEL DATA.pt OUTPUT STEPS

accelerate runs FSDP only on accelerators (on CPU it falls back to DDP), so this drives FSDP2 itself, wrapped as
accelerate's default policy would: one unit per `_no_split_modules` class, and the root. DATA.pt holds the global
batch's examples; process r trains on its half (examples 2r, 2r+1), with the loss normalised by the global batch's
counts. Rank 0 writes `losses.json` and the trained model (`save_pretrained` of the FSDP-wrapped model with the full
state dict). Used by tests/test_training_sharded.py.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def main(model_dir: str, data_path: str, output_dir: str, steps: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoProcessor

    from transformers_vargpt import VargptForConditionalGeneration
    from transformers_vargpt.training import VargptDataCollator, freeze_for_stage

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = torch.load(data_path, weights_only=False)
    model = VargptForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    freeze_for_stage(model, spec["stage"])
    mesh = init_device_mesh("cpu", (world,))
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.train()
    # SGD: weights differ by lr x the gradients' difference (Adam would blow rounding noise up to steps of size lr)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    collator = VargptDataCollator(processor)
    examples = spec["examples"]
    counts = spec["counts"]
    share = len(examples) // world
    batch = collator(examples[rank * share : (rank + 1) * share])
    losses = []
    for _ in range(steps):
        loss = model(**batch, num_items_in_batch=counts).loss
        (loss * world).backward()  # FSDP averages gradients over processes; the loss is already a global mean
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=rank == 0)
    if rank == 0:
        with open(f"{output_dir}/losses.json", "w", encoding="utf-8") as file:
            json.dump(losses, file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
