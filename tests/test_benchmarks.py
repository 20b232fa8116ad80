"""Smoke test of the benchmark harness (benchmarks/) on the tiny random model: every section's code path runs and
returns the fields BENCHMARKS.md reports. The medium model and real timings are `make bench`'s job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder of the repository, not part of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import flops, memory, raster, report, run, t2i, training, understanding  # noqa: E402
from benchmarks.medium import medium_config  # noqa: E402
from transformers_vargpt.tiny_models import build_tiny_vargpt  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_vargpt(seed=0)


def test_medium_config_matches_the_issue():
    config = medium_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (
        512, 1376, 8, 8)
    assert text.vocab_size == 32064
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.image_size) == (
        256, 1024, 6, 224)
    assert (config.var_depth, config.var_embed_dim, config.vq_ch, config.vq_vocab_size) == (8, 512, 64, 4096)
    assert config.num_image_gen_tokens == 680 and config.image_gen_size == 256
    assert medium_config((1, 2, 3, 4)).image_gen_size == 64


def test_t2i_latency_and_breakdown(tiny):
    model, processor = tiny
    result = t2i.latency_and_throughput(model, processor, batch_sizes=(1, 2), repeats=1)
    assert set(result["by_batch"]) == {"1", "2"} and result["by_batch"]["2"]["images_per_s"] > 0
    split = t2i.breakdown(model, processor, repeats=1)
    phases = split["phases"]
    assert list(phases) == ["prefill", *[f"scale_{i}" for i in range(len(model.config.patch_nums))], "decode"]
    assert phases["prefill"]["llm"] > 0 and phases["scale_0"]["var_blocks"] > 0 and phases["decode"]["vqvae_decode"] > 0
    totals = split["components_total_s"]
    parts = sum(totals[k] for k in (*t2i.COMPONENTS, "vqvae_decode", "other"))
    assert parts == pytest.approx(totals["total_s"], rel=1e-6)
    assert "decode_fhat" not in vars(model.model.vqvae)  # the timing wrapper is gone again
    assert split["minor_page_faults"]["whole_generation"] >= split["minor_page_faults"].get("vqvae_decode", 0) >= 0


def test_raster_baseline_uses_the_same_model(tiny):
    model, processor = tiny
    inputs = processor(text=["draw a red circle"], generation_mode="image", return_tensors="pt")
    out = raster.raster_generate(model, inputs["input_ids"])
    assert out["image_tokens"].shape == (1, model.config.num_image_gen_tokens)
    assert out["images"].shape == (1, 3, model.config.image_gen_size, model.config.image_gen_size)
    # the first scale is a single token with the same inputs: both methods pick the same first code
    next_scale = t2i.generate(model, inputs)
    assert out["image_tokens"][0, 0] == next_scale.image_tokens[0, 0]
    assert raster.generation_parameters(model) > 0


def test_llava_holds_the_same_weights(tiny):
    model, processor = tiny
    result = understanding.run(model, processor, quick=True)
    assert result["same_greedy_tokens_as_llava"]
    assert result["max_abs_prefill_logit_difference"] < 1e-4
    assert result["ratio_llava_over_vargpt"] > 0


def test_flop_count_by_component(tiny):
    model, processor = tiny
    inputs = processor(text=["draw a red circle"], generation_mode="image", return_tensors="pt")
    with torch.no_grad():
        total, parts = flops.count_flops(lambda: t2i.generate(model, inputs))
    assert total > 0 and all(parts[k] > 0 for k in ("llm", "var_blocks", "vqvae_decode"))
    assert sum(parts.values()) == total
    # the CPU attention kernel is counted
    q = torch.randn(1, 2, 8, 16)
    with torch.no_grad():
        attention, _ = flops.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert attention == 2 * 2 * 8 * 8 * 32


def test_training_step_per_stage(tiny):
    model, processor = tiny
    for stage in (1, 2, 3):
        batch = training.stage_batch(processor, stage, 2)
        assert "pixel_gen_values" in batch and ("pixel_values" in batch) == (stage == 2)
        trained, optimizer, trainable = training.prepare_stage(model, stage)
        assert trainable > 0 and trained is not model
        assert torch.isfinite(torch.tensor(training.train_step(trained, optimizer, batch)))
    assert not model.training


def test_memory_probe_reads_proc():
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    assert memory._status_mb("VmRSS") > 0


def test_bars_summary_and_plots(tmp_path):
    sections = {
        "t2i": {"by_batch": {"1": {"median_s": 0.7, "images_per_s": 1 / 0.7, "seconds_per_image": 0.7},
                             "8": {"median_s": 4.0, "images_per_s": 2.0, "seconds_per_image": 0.5}}},
        "raster": {"speedup": 4.0, "codes": 680, "generation_parameters": 1e8,
                   "timings": {"raster_scan": {"median_s": 2.8}, "next_scale_vargpt": {"median_s": 0.7}}},
        "released": {"speedup": 1.5, "timings": {name: {"median_s": t, "min_s": t, "max_s": t, "repeats": 1}
                                                 for name, t in (("vargpt", 0.7), ("released_style", 1.05))}},
    }
    bars = run.bar_checks(sections)
    assert bars["t2i_batch1_latency"]["pass"] is True
    assert bars["raster_speedup"]["pass"] is False
    assert bars["batch8_throughput_gain"]["pass"] is False  # 1.4x < 2.5x
    assert bars["understanding_vs_llava"]["pass"] is None  # not measured
    assert bars["t2i_fraction_of_matmul_peak"]["pass"] is None
    peak = {"t2i_batch1": {"fraction_of_peak": 0.7}}
    assert run.bar_checks({"flops": peak})["t2i_fraction_of_matmul_peak"]["pass"] is True
    environment = {"cpu_model": "cpu", "torch_threads": 2, "commit": "0" * 40, "dirty_src": False, "torch": "t",
                   "transformers": "t", "python": "3", "logical_cpus": 2, "dtype": "float32", "time_utc": "now"}
    results = {"mode": "full", "wall_s": 60.0, "sections": sections, "bars": bars, "environment": environment}
    table = run.summary_table(results)
    assert "FAIL" in table and "PASS" in table
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# B\n{report.START}\nold\n{report.END}\ntail\n")
    assert report.update_markdown({**results, "sections": {}}, markdown)
    text = markdown.read_text()
    assert "old" not in text and "**FAIL**" in text and text.endswith(f"{report.END}\ntail\n")
    plots = pytest.importorskip("benchmarks.plots", exc_type=ImportError)
    sections["t2i"]["breakdown"] = {"phases": {"prefill": {"total_s": 0.1, "llm": 0.1}}}
    written = plots.write_all(results, tmp_path)
    assert {p.name for p in written} == {"t2i_throughput.png", "t2i_breakdown.png", "raster_vs_next_scale.png",
                                         "released_vs_ours.png"}
    assert "1.50x" in report.released(sections["released"])


def test_cli_arguments():
    args = run.parse_args(["--quick", "--only", "t2i", "flops"])
    assert args.quick and args.only == ["t2i", "flops"]
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nothing"])


def test_released_style_baseline_does_the_released_work_on_the_same_model():
    """The same-run baseline re-enacts the released loop: same weights and shapes, more work per image."""
    from benchmarks.released import released_style_generate
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, processor = build_tiny_vargpt(seed=0)
    inputs = processor(text="draw a red circle", generation_mode="image", return_tensors="pt")
    image = released_style_generate(model, inputs["input_ids"])
    ours = model.generate_images(**inputs, do_sample=False).images
    assert image.shape == ours.shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_released_decode_gives_our_decoders_image():
    """The baseline decoder re-enactment (nearest upsampling, fresh activations, whole batch) and our decoder are
    the same function of f̂."""
    from benchmarks.released import released_decode
    from transformers_vargpt.tiny_models import build_tiny_vargpt

    model, _ = build_tiny_vargpt(seed=0)
    vqvae = model.model.vqvae
    size = vqvae.quantizer.final_size
    f_hat = torch.randn(2, vqvae.config.z_channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(released_decode(vqvae, f_hat), vqvae.decode_fhat(f_hat), atol=1e-4, rtol=0)


def test_decode_before_after_is_measured_and_reported():
    from benchmarks.released import decode_before_after

    model, _ = build_tiny_vargpt(seed=0)
    decode = decode_before_after(model, batch_sizes=(1, 2), repeats=1)
    assert set(decode) == {"1", "2"}
    for entry in decode.values():
        assert entry["speedup"] > 0 and set(entry["seconds_per_image"]) == {"vargpt", "released_style"}
    section = {"speedup": 1.5, "decode": decode, "timings": {
        name: {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "repeats": 1} for name in ("vargpt", "released_style")}}
    text = report.released(section)
    assert "VQVAE decode, batch" in text and f"{decode['2']['speedup']:.2f}x" in text


def test_waste_items_switch_off_and_are_costed():
    """Every item of the released loop's waste can be switched off alone; the loop still draws an image; each item's
    cost is measured and the report renders them."""
    from benchmarks.released import WASTE, decode_before_after, released_style_generate, waste_costs

    model, processor = build_tiny_vargpt(seed=0)
    input_ids = processor(text="draw a red circle", generation_mode="image", return_tensors="pt")["input_ids"]
    for item in WASTE:
        image = released_style_generate(model, input_ids, **{item: False})
        assert image.shape[1] == 3 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # without the noise branch and with our decoder, the loop is greedy generation: our codes, our image
    plain = released_style_generate(model, input_ids, noise_branch=False, released_decoder=False)
    torch.testing.assert_close(plain, model.generate_images(input_ids, do_sample=False).images, atol=1e-4, rtol=0)
    waste = waste_costs(model, decode_before_after(model, batch_sizes=(1,), repeats=1)["1"], repeats=1)
    assert set(waste["cost_s"]) == set(WASTE) and waste["cost_s"]["lm_head_logits"] > 0
    section = {"speedup": 1.5, "waste": waste, "timings": {
        name: {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "repeats": 1} for name in ("vargpt", "released_style")}}
    assert WASTE["noise_branch"] in report.released(section)


def test_half_precision_is_timed_against_fp32_and_compared_with_it(tiny):
    from benchmarks import precision

    model, processor = tiny
    result = precision.run(model, processor, quick=True)
    assert next(model.parameters()).dtype == torch.float32  # the fp32 model is left as it was
    half = result["half"]["bfloat16"]
    assert half["t2i_speedup_over_fp32"] > 0 and half["understanding_speedup_over_fp32"] > 0
    assert 0 <= half["identical_codes"] <= 1 and 0 <= half["identical_answer_tokens"] <= 1
    halves = {str(dtype).removeprefix("torch.") for dtype in precision.half_dtypes(torch.device("cpu"))}
    assert set(result["timings"]["t2i_batch1"]) == {"float32"} | halves == {"float32"} | set(result["half"])
    assert set(result["cpu"]) >= {"model", "avx512_bf16", "amx_bf16"}
    # the agreement measure itself: fp32 against fp32 agrees fully, and a changed code is counted
    inputs = precision.t2i_inputs(processor)
    question = precision.understanding_inputs(processor)
    with torch.no_grad():
        fp32 = (model.generate_images(**inputs, **precision.GREEDY_IMAGE),
                model.generate(**question, max_new_tokens=precision.NEW_TOKENS, min_new_tokens=precision.NEW_TOKENS,
                               do_sample=False))
    same = precision.agreement(fp32, fp32)
    assert same["identical_codes"] == 1.0 and same["identical_answer_tokens"] == 1.0
    assert same["image_max_abs_diff"] == 0.0
    changed = type(fp32[0])(images=fp32[0].images, image_tokens=fp32[0].image_tokens.clone())
    changed.image_tokens[0, 0] += 1
    assert precision.agreement(fp32, (changed, fp32[1]))["identical_codes"] == pytest.approx(
        1 - 1 / changed.image_tokens.numel())


def _side(t2i_s: float, und_s: float, codes: list[int], tokens: list[int], others: float = 0.01) -> dict:
    return {"t2i": {"median_s": t2i_s}, "understanding": {"median_s": und_s}, "codes": codes, "tokens": tokens,
            "other_processes_cpu_fraction": others, "transformers": "4.46.1", "torch": "2"}


def test_released_code_is_skipped_without_a_reference_environment(monkeypatch, tmp_path):
    from benchmarks import released_code

    monkeypatch.delenv(released_code.ENV_VAR, raising=False)
    result = released_code.run(None, None, quick=True)
    assert set(result) == {"skipped"} and "--reference-dir" in result["skipped"]
    incomplete = released_code.run(None, None, reference_dir=tmp_path)
    assert "incomplete" in incomplete["skipped"] and "refvenv" in incomplete["skipped"]
    # registered with `benchmarks.run`, whose summary, bars and report show the skip instead of failing
    assert run.SECTIONS["released_code"] is released_code.run
    assert run.parse_args(["--only", "released_code", "--reference-dir", "/ref"]).reference_dir == "/ref"
    monkeypatch.setenv(released_code.ENV_VAR, str(tmp_path))
    assert run.parse_args([]).reference_dir == str(tmp_path)
    sections = {"released_code": result}
    assert run.bar_checks(sections)["t2i_vs_released_code"]["pass"] is None
    assert "skipped: no reference environment" in released_code.summary_line(result)
    assert report.released_code(result).startswith("Skipped: no reference environment")


def test_released_code_ratios_and_identity_checks():
    from benchmarks import released_code

    rounds = [{"released": _side(1.5, 0.42, [1, 2, 3], [7, 8]), "ours": _side(1.0, 0.40, [1, 2, 3], [7, 8])},
              {"ours": _side(1.0, 0.40, [1, 2, 3], [7, 8]), "released": _side(1.2, 0.40, [1, 2, 3], [7, 8], 0.3)},
              {"released": _side(1.4, 0.44, [1, 2, 3], [7, 8]), "ours": _side(1.0, 0.40, [1, 2, 3], [7, 8])}]
    summary = released_code.assemble(rounds)
    assert summary["t2i_ratio"] == pytest.approx({"median": 1.4, "min": 1.2, "max": 1.5})
    assert summary["understanding_ratio"]["median"] == pytest.approx(1.05)
    assert summary["seconds"]["released_t2i"]["median"] == pytest.approx(1.4)
    assert summary["codes_identical"] and summary["tokens_identical"] and summary["codes"] == 3
    assert summary["other_processes_cpu_fraction"]["max"] == pytest.approx(0.3)
    rounds[1]["ours"]["codes"] = [1, 2, 4]  # one code differs in one round
    changed = released_code.assemble(rounds)
    assert not changed["codes_identical"] and changed["tokens_identical"] and not rounds[1]["codes_identical"]
    section = {**summary, "repeats_per_process": 3, "threads": 2, "released_environment": {"transformers": "4.46.1"}}
    assert "**1.40x**" in report.released_code(section) and "1.20–1.50" in report.released_code(section)
    assert "identical" in released_code.summary_line(section)
    assert run.bar_checks({"released_code": section})["t2i_vs_released_code"]["pass"] is False  # 1.4x < 1.5x


def test_released_code_alternates_processes_and_collects_their_results(monkeypatch, tmp_path):
    """The orchestration with stand-in timing processes (the real ones need the reference venv)."""
    import json

    from benchmarks import released_code

    def fake_commands(paths, repeats, threads):
        def side(seconds):
            payload = json.dumps(_side(seconds, seconds / 2, [5] * 4, [6] * 2))
            return [sys.executable, "-c", f"print('noise'); print({payload!r})"], None
        return {"released": side(1.3), "ours": side(1.0)}

    monkeypatch.setattr(released_code, "_commands", fake_commands)
    result = released_code.measure({"checkpoint": tmp_path / "medium32k"}, rounds=2, repeats=1, quiet_wait_s=0,
                                   max_others=1.0)
    assert [record["order"] for record in result["round_records"]] == [["released", "ours"], ["ours", "released"]]
    assert result["t2i_ratio"]["median"] == pytest.approx(1.3) and result["codes_identical"]
    assert result["released_environment"]["transformers"] == "4.46.1" and result["rounds"] == 2
    assert all(record["released"]["process_wall_s"] > 0 for record in result["round_records"])


def test_released_code_runs_a_contended_round_again(monkeypatch, tmp_path):
    from benchmarks import released_code

    others = iter([0.4, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])  # per process: round 0 contended, then clean, then busy

    def fake_side(command, cwd, threads):
        seconds = 1.2 if command == ["released"] else 1.0
        return _side(seconds, seconds, [1], [2], next(others))

    monkeypatch.setattr(released_code, "_commands", lambda *args: {"released": (["released"], None),
                                                                   "ours": (["ours"], None)})
    monkeypatch.setattr(released_code, "_run_side", fake_side)
    result = released_code.measure({"checkpoint": tmp_path}, rounds=2, repeats=1, quiet_wait_s=0, extra_rounds=2)
    assert len(result["contended_rounds"]) == 2 and result["rounds"] == 2  # retries spent: the busy round is kept
    assert result["round_records"][0]["released"]["other_processes_cpu_fraction"] == 0.0
    assert result["other_processes_cpu_fraction"]["max"] == 0.5
    assert [record["order"][0] for record in result["round_records"]] == ["released", "ours"]


def test_column_major_weights_are_timed_against_row_major_and_draw_the_same(monkeypatch):
    from torch import nn

    from benchmarks import column_major
    from transformers_vargpt.cpu_matmul import is_column_major

    monkeypatch.setattr(column_major, "SHAPES", {"small": (64, 96)})
    monkeypatch.setattr(column_major, "ROWS", (1, 16))
    monkeypatch.setattr(column_major, "POOL_BYTES", 3 * 4 * 64 * 96)
    products = column_major.products(rounds=1)
    assert set(products["small"]) == {1, 16}
    assert all(r["speedup"] > 0 and r["row_major_gflops"] > 0 for r in products["small"].values())

    model, processor = build_tiny_vargpt(seed=1)
    result = column_major.whole_model(model, processor, repeats=1)
    assert result["t2i_batch1"]["same_output"] and result["understanding_after_a_drawing"]["same_output"]
    assert result["t2i_batch1"]["speedup"] > 0
    assert result["column_major_layers"] == result["per_scale_linear_layers"] > 0  # the copy that drew with it on
    assert not any(is_column_major(m.weight) for m in model.modules() if type(m) is nn.Linear)  # the other: off


def test_fp16_is_measured_on_cpus_that_compute_it(monkeypatch):
    from benchmarks import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    flags = dict.fromkeys(precision.CPU_FLAGS, False)
    monkeypatch.setattr(precision, "cpu_features", lambda: {"model": "x", **flags})
    assert precision.half_dtypes(cpu) == [torch.bfloat16]
    assert precision.half_dtypes(cuda) == [torch.bfloat16, torch.float16]
    flags["avx512_fp16"] = True
    assert precision.half_dtypes(cpu) == [torch.bfloat16, torch.float16]


def test_torch_compile_parts_compare_compiled_with_eager(monkeypatch):
    from benchmarks import torch_compile

    # inductor takes minutes here: the compilers are replaced by no-ops, which exercises the harness (what is
    # compiled, the timing pairs, the output comparison) but not inductor itself
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(kwargs) or fn)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: compiled.append(kwargs))
    limits = torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit

    model, processor = build_tiny_vargpt(seed=2)
    result = torch_compile.run(model, processor, repeats=1)
    modules = torch_compile.scale_step_modules(model)
    assert len(modules) == model.config.text_config.num_hidden_layers + model.config.var_config.num_hidden_layers
    assert compiled == [{"dynamic": False}] + [{"dynamic": True}] * len(modules)
    decode, step = result["decode"], result["scale_step"]
    assert decode["max_abs_difference"] == 0 and decode["compiled_speedup"] > 0
    assert step["identical_codes"] and step["compiled_modules"] == len(modules) and step["compiled_speedup"] > 0
    assert set(torch_compile.summary(result)["scale_step"]) >= {"compile_and_first_call_s", "eager_median_s"}
    assert (torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit) == limits
