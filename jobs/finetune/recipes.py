"""What a fine-tuning job is: the task, its recipe's defaults, and every setting of one run.

The defaults are those of transformers' example scripts behind the published bert-base results:
run_classification / run_ner (learning rate 2e-5, 3 epochs, batch 32, 128 tokens) and run_qa
(3e-5, 2 epochs, batch 12, 384 tokens, doc stride 128). The batch size is the global one: with
N workers each takes batch_size / N per step, so a run means the same thing on 1 or N workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
QUESTION_ANSWERING = "question-answering"
TASKS = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING)


@dataclass(frozen=True)
class Recipe:
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    doc_stride: int | None
    metric: str
    """The validation metric that picks the best epoch and drives early stopping (higher is better)."""
    auto_class: str
    """The transformers Auto class that puts the task's head on the base model."""


RECIPES = {
    TEXT_CLASSIFICATION: Recipe(2e-5, 3.0, 32, 128, None, "accuracy", "AutoModelForSequenceClassification"),
    TOKEN_CLASSIFICATION: Recipe(2e-5, 3.0, 32, 128, None, "f1", "AutoModelForTokenClassification"),
    QUESTION_ANSWERING: Recipe(3e-5, 2.0, 12, 384, 128, "f1", "AutoModelForQuestionAnswering"),
}

DEFAULT_MODEL = "bert-base-cased"
VALIDATION_FRACTION = 0.1
"""Share of the training rows held out for validation when the data has no validation split."""


@dataclass(frozen=True)
class Columns:
    """Column names in the data, per task (only the task's own are read)."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "ner_tags"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"


@dataclass(frozen=True)
class JobConfig:
    """Every setting of one run, as written to train_args.json (plain values: it also travels to
    Ray Train workers)."""

    task: str
    model: str
    output: str
    data: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    columns: Columns = field(default_factory=Columns)
    label_names: tuple[str, ...] | None = None
    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    doc_stride: int | None = None
    seed: int = 42
    early_stopping_patience: int | None = None
    workers: int = 0
    gpus: bool = False
    limit_train: int | None = None
    limit_eval: int | None = None
    bf16: bool = False
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    ray_address: str | None = None
    cpus_per_worker: int | None = None
    storage_path: str | None = None
    logging_steps: int | None = None
    """Steps between logged training losses (None: about 20 per epoch); the first step is always logged."""

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.task]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["label_names"] = list(self.label_names) if self.label_names is not None else None
        return out


def with_defaults(task: str, **given: Any) -> JobConfig:
    """A JobConfig for the task with the recipe's value for every hyper-parameter left as None."""
    if task not in RECIPES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    recipe = RECIPES[task]
    defaults = {
        "epochs": recipe.epochs,
        "learning_rate": recipe.learning_rate,
        "batch_size": recipe.batch_size,
        "max_length": recipe.max_length,
        "doc_stride": recipe.doc_stride,
    }
    for name, value in defaults.items():
        if given.get(name) is None:
            given[name] = value
    return JobConfig(task=task, **given)
