"""The `compile` option: off by default, set by flag, environment or per model in the config
file; a compiled replica answers every task of every head like the eager one, on several input
shapes, without compiling again after its warm-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.server.cli import build_parser
from bertserve.server.config_file import ConfigError, model_entries
from bertserve.server.settings import from_sources
from bertserve.workers.protocol import EncodedBatch, FillMaskArgs, Task
from bertserve.workers.spec import ReplicaSpec


def _parse(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(["serve", *argv]))


def test_compile_is_off_by_default_and_set_by_flag_or_environment() -> None:
    assert from_sources({}, env={}).compile is False
    assert ReplicaSpec(model_name="m", checkpoint="c").compile is False
    assert from_sources(_parse("--compile"), env={}).compile is True
    assert from_sources({}, env={"BERTSERVE_COMPILE": "1"}).compile is True
    assert from_sources(_parse("--no-compile"), env={"BERTSERVE_COMPILE": "true"}).compile is False


def test_compile_is_set_per_model_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bertserve.yaml"
    path.write_text(
        "models:\n  - {name: fast, checkpoint: /m/a, compile: true}\n  - {name: plain, checkpoint: /m/b}\n"
    )
    fast, plain = model_entries(from_sources({"config": str(path)}, env={}))
    assert (fast.settings.compile, plain.settings.compile) == (True, False)
    path.write_text("models:\n  - checkpoint: /m/a\n    compile: 'yes'\n")
    with pytest.raises(ConfigError, match="compile must be a bool"):
        model_entries(from_sources({"config": str(path)}, env={}))


def _batches(vocab: int, seed: int = 0) -> list[EncodedBatch]:
    """One unpadded single input and a padded batch of three of another length."""
    rng = np.random.default_rng(seed)
    out = []
    for rows, length in ((1, 7), (3, 13)):
        ids = rng.integers(5, vocab, size=(rows, length), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[1:, length - 4 :] = 0
        ids[mask == 0] = 0
        types = np.zeros_like(ids)
        types[:, length // 2 :] = 1
        out.append(EncodedBatch(ids, mask, types))
    return out


def _outputs(backend: Any, batch: EncodedBatch) -> dict[str, np.ndarray[Any, Any]]:
    got: dict[str, np.ndarray[Any, Any]] = {}
    for task in backend.tasks:
        if task is Task.FILL_MASK:
            rows = np.arange(batch.size, dtype=np.int64)
            targets = np.arange(backend.vocab_size, dtype=np.int64)
            args = FillMaskArgs(rows, np.full_like(rows, 2), top_k=5, targets=tuple(targets for _ in rows))
            fill = backend.fill_mask(batch, args)
            got["fill_mask.top_scores"] = fill.top_scores
            got["fill_mask.probs"] = np.stack(fill.target_scores)
        elif task is Task.NEXT_SENTENCE:
            got["next_sentence"] = backend.next_sentence(batch).logits
        elif task is Task.CLASSIFY_SEQUENCE:
            got["classify_sequence"] = backend.classify_sequence(batch).logits
        elif task is Task.CLASSIFY_TOKENS:
            got["classify_tokens"] = backend.classify_tokens(batch).logits
        elif task is Task.ANSWER_QUESTION:
            span = backend.answer_question(batch)
            got["answer_question.start"] = span.start_logits
            got["answer_question.end"] = span.end_logits
        elif task is Task.EMBED:
            emb = backend.embed(batch)
            got["embed.cls"] = emb.cls
            got["embed.mean"] = emb.mean
    return got


HEAD_TASKS = {
    "pretraining": {Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED},
    "emotion": {Task.CLASSIFY_SEQUENCE, Task.EMBED},
    "ner": {Task.CLASSIFY_TOKENS, Task.EMBED},
    "squad": {Task.ANSWER_QUESTION, Task.EMBED},
}


@pytest.mark.parametrize("head", list(HEAD_TASKS))
def test_compiled_backend_matches_eager_for_every_task_and_shape(
    head: str, tiny_checkpoint: Path, head_checkpoints: dict[str, Path]
) -> None:
    import torch

    from bertserve.workers.backends.torch_bert import TorchBertBackend

    checkpoint = str(tiny_checkpoint if head == "pretraining" else head_checkpoints[head])
    spec = ReplicaSpec(model_name=head, checkpoint=checkpoint, dtype="float32", threads=1)
    eager = TorchBertBackend(spec)
    compiled = TorchBertBackend(dataclasses.replace(spec, compile=True))
    assert (eager.compiled, compiled.compiled) == (False, True)
    assert set(compiled.tasks) == HEAD_TASKS[head]
    assert type(compiled.model.base_model).__name__ == "_CompiledEncoder"
    # The warm-up compiled one graph for every batch size and length: no task recompiles.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in _batches(eager.vocab_size):
            want, got = _outputs(eager, batch), _outputs(compiled, batch)
            assert want.keys() == got.keys()
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_compile_failure_is_a_one_line_load_error(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from bertserve.workers.backends import torch_bert

    def broken(fn: Any, **kwargs: Any) -> Any:
        def run(*args: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong trace")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    spec = ReplicaSpec(model_name="tiny", checkpoint=str(tiny_checkpoint), dtype="float32", compile=True)
    with pytest.raises(torch_bert.ModelLoadError) as caught:
        torch_bert.TorchBertBackend(spec)
    message = str(caught.value)
    assert message.startswith("torch.compile of model 'tiny' failed: RuntimeError: InvalidCxxCompiler")
    assert "\n" not in message
