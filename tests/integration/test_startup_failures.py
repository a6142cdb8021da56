"""A model that cannot be loaded makes `bertserve serve` exit non-zero with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.server import error_lines, run_serve

pytestmark = pytest.mark.integration


def test_missing_directory_exits_with_one_line(tmp_path: Path) -> None:
    done = run_serve("--model", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "no such checkpoint directory" in lines[0] and "--demo" in lines[0]
    assert "Traceback" not in done.stderr


def test_directory_without_config_exits_with_one_line(tmp_path: Path) -> None:
    done = run_serve("--model", str(tmp_path))
    assert done.returncode == 1
    assert "no config.json" in error_lines(done.stderr)[0]


def test_unreachable_hub_exits_with_one_line_naming_the_alternatives() -> None:
    done = run_serve("--model", "bert-base-cased-not-cached-anywhere", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1
    assert "cannot fetch model 'bert-base-cased-not-cached-anywhere'" in lines[0]
    assert "--model /path/to/checkpoint" in lines[0] and "--demo" in lines[0]
    assert "Traceback" not in done.stderr


def test_corrupt_weights_fail_at_replica_load_with_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    done = run_serve("--model", str(broken), "--ray-num-cpus", "1", "--startup-timeout-s", "120")
    assert done.returncode == 1, done.stderr[-2000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-2000:]
    assert f"cannot load checkpoint '{broken}'" in lines[0]


def test_invalid_flag_value_exits_2() -> None:
    done = run_serve("--replicas", "0")
    assert done.returncode == 2
    assert error_lines(done.stderr) == ["bertserve: error: --replicas must be at least 1"]


def test_token_budget_below_the_model_length_is_rejected_before_ray_starts(tiny_checkpoint: Path) -> None:
    done = run_serve("--model", str(tiny_checkpoint), "--max-batch-tokens", "64")
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "bertserve: error: --max-batch-tokens (64) must be at least the model's maximum sequence length (128)"
    ]


def test_a_head_that_does_not_match_its_configured_task_exits_before_ray_starts(
    head_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    emotion = head_checkpoints["emotion"]
    config.write_text(f"models:\n  - name: ner\n    checkpoint: {emotion}\n    tasks: [classify_tokens]\n")
    done = run_serve("--config", str(config))
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert line == (
        "bertserve: error: model 'ner' is configured for ClassifyTokens but its checkpoint is a "
        "BertForSequenceClassification (sequence-classification head), which serves ClassifySequence, "
        "Embed, Tokenize"
    )
    assert "Traceback" not in done.stderr


def test_a_bad_configuration_file_exits_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "a"\ncheckpoint = "/x"\nreplicas = "two"\n')
    done = run_serve("--config", str(config))
    assert done.returncode == 1
    assert error_lines(done.stderr) == ["bertserve: error: models[0]: replicas must be a int, got 'two'"]
