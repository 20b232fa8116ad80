"""The lmms-eval model `vargpt` and the offline task `vargpt_shapes_qa`, on the tiny random model."""

from __future__ import annotations

import os
import subprocess
import sys

import PIL.Image
import pytest
import torch
from PIL import ImageFile

# lmms_eval.api.task sets PIL's global ImageFile.LOAD_TRUNCATED_IMAGES = True when imported; the other test modules
# (truncated image files are rejected) must not inherit that, so each test here puts it back
LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES

pytest.importorskip("lmms_eval", reason='lmms-eval is not installed (pip install -e ".[eval]")')

from lmms_eval.api.instance import Instance  # noqa: E402

import transformers_vargpt  # noqa: E402
from transformers_vargpt.eval import TASKS_DIR  # noqa: E402
from transformers_vargpt.eval.lmms_vargpt import VargptLmms, truncate_at_stop_sequences  # noqa: E402
from transformers_vargpt.shapes_world import normalize_answer, question_set  # noqa: E402
from transformers_vargpt.tiny_models import build_tiny_vargpt  # noqa: E402

ImageFile.LOAD_TRUNCATED_IMAGES = LOAD_TRUNCATED_IMAGES

TASK, SPLIT = "unit", "test"


@pytest.fixture(autouse=True)
def restore_pil_truncated_images_flag():
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = LOAD_TRUNCATED_IMAGES


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, processor = build_tiny_vargpt(seed=0, initializer_range=0.1)
    directory = tmp_path_factory.mktemp("tiny-vargpt")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_lm(tiny_dir, batch_size: int) -> VargptLmms:
    lm = VargptLmms(pretrained=str(tiny_dir), dtype="float32", device="cpu", batch_size=batch_size)
    colors = ["red", "blue", "green", "white"]
    lm.task_dict = {
        TASK: {
            SPLIT: [
                {"images": [PIL.Image.new("RGB", (40 + 8 * i, 32), colors[(i + j) % 4]) for j in range(i % 3)]}
                for i in range(6)
            ]
        }
    }
    return lm


def doc_to_visual(doc):
    return doc["images"]


CONTEXTS = [
    "what color is the shape ?",
    "describe the image .",
    "what shape is in this picture ? draw a red circle on a blue square",
    "what is it ?",
    "can you see a dog ?",
    "a",
]


def generation_requests(gen_kwargs: dict) -> list[Instance]:
    return [
        Instance(
            request_type="generate_until",
            arguments=(context, dict(gen_kwargs), doc_to_visual, doc_id, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": doc_id, "repeats": 1},
        )
        for doc_id, context in enumerate(CONTEXTS)
    ]


def loglikelihood_requests(continuations: list[str]) -> list[Instance]:
    return [
        Instance(
            request_type="loglikelihood",
            arguments=(context, continuation, doc_to_visual, doc_id, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": doc_id, "repeats": 1},
        )
        for doc_id, (context, continuation) in enumerate(zip(CONTEXTS, continuations))
    ]


def reference_answer(lm: VargptLmms, context: str, images: list, max_new_tokens: int) -> str:
    """The answer computed directly with the processor's chat template and greedy `generate`, one request alone."""
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": context}]
    prompt = lm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = lm.processor(images=images or None, text=prompt, return_tensors="pt")
    with torch.no_grad():
        output = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return lm.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generate_until_batched_equals_one_by_one_and_direct_generate(tiny_dir):
    gen_kwargs = {"max_new_tokens": 6, "temperature": 0, "until": []}
    batched = make_lm(tiny_dir, batch_size=4).generate_until(generation_requests(gen_kwargs))
    alone_lm = make_lm(tiny_dir, batch_size=1)
    alone = alone_lm.generate_until(generation_requests(gen_kwargs))
    assert batched == alone
    for doc_id, context in enumerate(CONTEXTS):
        images = alone_lm.task_dict[TASK][SPLIT][doc_id]["images"]
        assert alone[doc_id] == reference_answer(alone_lm, context, images, max_new_tokens=6)
    assert any(answer.strip() for answer in alone)


def test_generate_until_stops_at_the_task_stop_sequences(tiny_dir):
    lm = make_lm(tiny_dir, batch_size=3)
    free = lm.generate_until(generation_requests({"max_new_tokens": 8, "temperature": 0}))
    words = free[0].split()
    assert len(words) >= 2, f"the tiny model's answer is too short to test stopping: {free[0]!r}"
    stop = words[1]
    stopped = lm.generate_until(generation_requests({"max_new_tokens": 8, "temperature": 0, "until": [stop]}))
    assert stopped[0] == free[0][: free[0].index(stop)]
    assert all(stop not in answer for answer in stopped)
    assert truncate_at_stop_sequences("a b c d", ["c", "b"]) == "a "


def test_generation_arguments_follow_lmms_eval_conventions(tiny_dir):
    lm = make_lm(tiny_dir, batch_size=1)
    settings, stops = lm.generation_settings({"until": "\n\n", "max_new_tokens": 3, "temperature": 0, "top_p": 0})
    assert settings == {"max_new_tokens": 3, "do_sample": False} and stops == ["\n\n"]
    settings, _ = lm.generation_settings({"temperature": 0.7, "top_p": 0.9, "num_beams": 1})
    assert settings == {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "num_beams": 1}
    with pytest.warns(UserWarning, match="image_aspect_ratio"):
        lm.generation_settings({"image_aspect_ratio": "pad"})
    with pytest.raises(ValueError, match="until"):
        lm.generation_settings({"until": 3})


def test_loglikelihood_batched_equals_one_by_one_and_a_direct_forward(tiny_dir):
    alone_lm = make_lm(tiny_dir, batch_size=1)
    greedy = alone_lm.generate_until(generation_requests({"max_new_tokens": 3, "temperature": 0}))
    continuations = [" " + answer.strip() for answer in greedy[:3]] + [" red", " a blue circle", " ."]
    continuations = [c if c.strip() else " red" for c in continuations]
    alone = alone_lm.loglikelihood(loglikelihood_requests(continuations))
    batched = make_lm(tiny_dir, batch_size=4).loglikelihood(loglikelihood_requests(continuations))
    for (lp_alone, greedy_alone), (lp_batched, greedy_batched) in zip(alone, batched):
        assert lp_batched == pytest.approx(lp_alone, rel=1e-4, abs=1e-4)
        assert greedy_batched == greedy_alone
    # the greedy answers are greedy continuations; every log-probability is a sum of negative log-probabilities
    assert [is_greedy for _, is_greedy in alone[:3]] == [bool(answer.strip()) for answer in greedy[:3]]
    assert all(log_prob < 0 for log_prob, _ in alone)

    # one request recomputed by hand: forward over prompt + continuation, sum the continuation tokens' log-softmax
    doc_id = 1
    images = alone_lm.task_dict[TASK][SPLIT][doc_id]["images"]
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": CONTEXTS[doc_id]}]
    prompt = alone_lm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    full = alone_lm.processor(images=images, text=prompt + continuations[doc_id], return_tensors="pt")
    prompt_length = alone_lm.processor(images=images, text=prompt, return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logits = alone_lm.model(**full).logits[0]
    targets = full["input_ids"][0, prompt_length:]
    expected = torch.log_softmax(logits[prompt_length - 1 : -1], dim=-1).gather(-1, targets[:, None]).sum()
    assert alone[doc_id][0] == pytest.approx(float(expected), rel=1e-5, abs=1e-5)


def test_multi_round_asks_the_task_for_each_next_round(tiny_dir):
    lm = make_lm(tiny_dir, batch_size=1)
    seen = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((round_idx, list(previous_output), previous_round_info))
        if round_idx == 2:
            return None, None, True, previous_output, None
        return doc["images"], "what is it ?", False, previous_output, {"round": round_idx}

    gen_kwargs = {"max_new_tokens": 4, "temperature": 0}
    request = Instance(
        request_type="generate_until_multi_round",
        arguments=(CONTEXTS[0], gen_kwargs, doc_to_visual, doc_to_text, 0, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )
    (rounds,) = lm.generate_until_multi_round([request])
    first = lm.generate_until(generation_requests(gen_kwargs))[0]
    assert len(rounds) == 2 and rounds[0] == first
    assert [round_idx for round_idx, _, _ in seen] == [1, 2]
    assert seen[1] == (2, [first, rounds[1]], {"round": 1})


def test_requests_without_a_model_or_with_other_media_fail_clearly(tiny_dir, monkeypatch):
    monkeypatch.delattr(transformers_vargpt, "BUNDLED_MODEL", raising=False)
    with pytest.raises(ValueError, match="pretrained="):
        VargptLmms(device="cpu")
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", str(tiny_dir), raising=False)
    assert VargptLmms(device="cpu", dtype="float32").pretrained == str(tiny_dir)

    # an already loaded model and processor stay where they are
    model, processor = build_tiny_vargpt(seed=0)
    assert VargptLmms(model=model, processor=processor).device == model.device
    with pytest.raises(ValueError, match="both"):
        VargptLmms(model=model)

    lm = make_lm(tiny_dir, batch_size=1)
    lm.task_dict[TASK][SPLIT][0] = {"images": ["video.mp4"]}
    with pytest.raises(TypeError, match="images only"):
        lm.generate_until(generation_requests({"max_new_tokens": 2})[:1])
    with pytest.raises(ValueError, match="places 2 <image>"):
        lm.build_prompt("<image> <image> what is it ?", num_images=1)


def test_shapes_qa_task_end_to_end_through_the_python_api(tiny_dir):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    limit = 6
    output = simple_evaluate(
        model="vargpt",  # resolved through the package's lmms_eval.models entry point
        model_args=f"pretrained={tiny_dir},dtype=float32,device=cpu",
        tasks=["vargpt_shapes_qa"],
        batch_size=4,
        limit=limit,
        log_samples=True,
        task_manager=TaskManager("WARNING", include_path=str(TASKS_DIR), include_defaults=False),
        bootstrap_iters=0,
    )
    metrics = output["results"]["vargpt_shapes_qa"]
    samples = output["samples"]["vargpt_shapes_qa"]
    records = question_set()[:limit]
    assert [sample["target"] for sample in samples] == [record.answer for record in records]
    assert [sample["doc"]["question"] for sample in samples] == [record.question for record in records]
    rights = [float(normalize_answer(sample["filtered_resps"][0]) == sample["target"]) for sample in samples]
    assert metrics["accuracy,none"] == pytest.approx(sum(rights) / limit)
    for kind in ("shape", "color", "background"):
        kind_rights = [right for right, record in zip(rights, records) if record.kind == kind]
        assert metrics[f"{kind}_accuracy,none"] == pytest.approx(sum(kind_rights) / len(kind_rights))


@pytest.mark.skipif(not os.path.isfile(os.path.join(getattr(transformers_vargpt, "BUNDLED_MODEL", None) or "",
                                                    "model.safetensors")), reason="no bundled weights")
def test_shapes_qa_on_the_bundled_model_agrees_with_its_own_evaluation():
    """The task through lmms-eval and the bundled model's evaluation code (`bundled.evaluate`) judge the same
    answers right, picture by picture (a slice of the question set: all three kinds)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from transformers import AutoProcessor

    from transformers_vargpt import VargptForConditionalGeneration
    from transformers_vargpt.bundled.evaluate import answer_is_right, answer_questions
    from transformers_vargpt.shapes_world import QUESTIONS

    limit = 36
    output = simple_evaluate(
        model="vargpt", model_args="dtype=float32,device=cpu", tasks=["vargpt_shapes_qa"], batch_size=12,
        limit=limit, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager("WARNING", include_path=str(TASKS_DIR), include_defaults=False),
    )
    lmms_answers = [sample["filtered_resps"][0] for sample in output["samples"]["vargpt_shapes_qa"]]
    records = question_set()[:limit]
    assert {record.kind for record in records} == {"shape", "color", "background"}
    model = VargptForConditionalGeneration.from_pretrained(transformers_vargpt.BUNDLED_MODEL).eval()
    processor = AutoProcessor.from_pretrained(transformers_vargpt.BUNDLED_MODEL)
    own_rights = []
    for record in records:
        answer = answer_questions(model, processor, [record.image], QUESTIONS[record.kind])[0]
        own_rights.append(answer_is_right(record.kind, answer, record.scene))
    lmms_rights = [normalize_answer(answer) == record.answer for answer, record in zip(lmms_answers, records)]
    assert lmms_rights == own_rights
    assert output["results"]["vargpt_shapes_qa"]["accuracy,none"] == pytest.approx(sum(own_rights) / limit)


def test_shapes_qa_documents_are_the_shared_question_set_and_scored_by_exact_match():
    from lmms_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["vargpt_shapes_qa"], TaskManager("WARNING", include_path=str(TASKS_DIR), include_defaults=False))["vargpt_shapes_qa"]
    docs = task.test_docs()
    records = question_set()
    assert len(docs) == len(records) == 24 * 4 * 3
    for index in (0, 1, 2, 100, len(records) - 1):
        assert docs[index]["answer"] == records[index].answer and docs[index]["kind"] == records[index].kind
        assert task.doc_to_visual(docs[index])[0].tobytes() == records[index].image.tobytes()
    color_doc = next(doc for doc in docs if doc["kind"] == "color")
    assert task.process_results(color_doc, [f" {color_doc['answer'].upper()}."]) == {"accuracy": 1.0, "color_accuracy": 1.0}
    assert task.process_results(color_doc, ["a " + color_doc["answer"]])["accuracy"] == 0.0


def shapes_table_metrics(stdout: str) -> set[str]:
    rows = [line for line in stdout.splitlines() if line.startswith("|vargpt_shapes_qa")]
    return {row.split("|")[4].strip() for row in rows}


def test_lmms_eval_command_line_finds_the_model_and_runs_the_offline_task(tiny_dir, tmp_path):
    """lmms-eval's own command: the model found through the entry point, the task through --include_path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "vargpt",
        "--model_args", f"pretrained={tiny_dir},dtype=float32,device=cpu",
        "--tasks", "vargpt_shapes_qa", "--limit", "3", "--batch_size", "3", "--include_path", str(TASKS_DIR),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Error during evaluation" not in result.stdout, result.stdout[-3000:]
    assert shapes_table_metrics(result.stdout) == {"accuracy", "shape_accuracy", "color_accuracy", "background_accuracy"}


def test_package_command_line_adds_its_tasks_to_lmms_eval(tiny_dir, tmp_path, capsys, monkeypatch):
    """`python -m transformers_vargpt.eval` is lmms-eval's command line with the package's tasks included."""
    from transformers_vargpt.eval.__main__ import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() hands lmms-eval its arguments through sys.argv
    monkeypatch.chdir(tmp_path)
    main([
        "--model", "vargpt", "--model_args", f"pretrained={tiny_dir},dtype=float32,device=cpu",
        "--tasks", "vargpt_shapes_qa", "--limit", "3", "--batch_size", "3", "--verbosity", "WARNING",
    ])
    stdout = capsys.readouterr().out
    assert "Error during evaluation" not in stdout, stdout[-3000:]
    assert shapes_table_metrics(stdout) == {"accuracy", "shape_accuracy", "color_accuracy", "background_accuracy"}
