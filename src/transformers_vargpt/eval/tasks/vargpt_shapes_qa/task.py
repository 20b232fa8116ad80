"""lmms-eval task `vargpt_shapes_qa`: the shapes world's held-out one-word questions, generated at load time.

The documents are `shapes_world.question_set(seed, images_per_combination, image_size)` (the YAML's
`dataset_kwargs`), the same questions the bundled model's own evaluation asks, so both report the same accuracy.
"""

from __future__ import annotations

import datasets
from lmms_eval.api.task import ConfigurableTask

from transformers_vargpt.shapes_world import ONE_WORD_KINDS, normalize_answer, question_set

QUESTION_SET_ARGUMENTS = ("seed", "images_per_combination", "image_size")


class ShapesQATask(ConfigurableTask):
    """A YAML task whose dataset is built in memory from the shapes world instead of downloaded."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        # the YAML's `class` key names this class; TaskConfig has no such field
        super().__init__(config={key: value for key, value in (config or {}).items() if key != "class"}, **kwargs)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        settings = dict(dataset_kwargs or {})
        unknown = sorted(set(settings) - set(QUESTION_SET_ARGUMENTS))
        if unknown:
            raise ValueError(f"vargpt_shapes_qa: unknown dataset_kwargs {unknown}; expected {QUESTION_SET_ARGUMENTS}")
        records = question_set(**{key: int(value) for key, value in settings.items()})
        columns = {
            "image": [record.image for record in records],
            "kind": [record.kind for record in records],
            "question": [record.question for record in records],
            "answer": [record.answer for record in records],
        }
        features = datasets.Features(
            {"image": datasets.Image(), **{name: datasets.Value("string") for name in ("kind", "question", "answer")}}
        )
        test = datasets.Dataset.from_dict(columns, features=features)
        self.dataset = datasets.DatasetDict({"test": test})
        self.dataset_no_image = datasets.DatasetDict({"test": test.remove_columns("image")})


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match of the one answer; counted overall and under its question kind."""
    if doc["kind"] not in ONE_WORD_KINDS:
        raise ValueError(f"vargpt_shapes_qa scores one-word questions only, got kind {doc['kind']!r}")
    right = float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))
    return {"accuracy": right, f"{doc['kind']}_accuracy": right}
