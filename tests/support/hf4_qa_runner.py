"""Run `pipeline("question-answering")` of transformers 4.57.6 on a batch of cases.

Executed by the python of the reference environment (tests/support/hf4_reference.py), with
`-I`, so it imports nothing from the project. Reads on stdin

    {"checkpoint": "/path", "cases": [{"question": ..., "context": ..., "options": {...}}]}

where options are the pipeline's call arguments (top_k, max_answer_len, doc_stride, max_seq_len,
max_question_len, handle_impossible_answer, align_to_words), and writes on stdout

    {"transformers": "4.57.6", "results": [{"answers": [...]} or {"error": "..."}]}

with every result a list of {"answer", "score", "start", "end"} (the pipeline returns a bare
dict when there is one answer). `--versions` prints the versions it imports, and nothing else.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def _versions() -> dict[str, str]:
    import huggingface_hub
    import numpy
    import tokenizers
    import torch
    import transformers

    return {
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def _answers(found: Any) -> list[dict[str, Any]]:
    items = found if isinstance(found, list) else [found]
    return [
        {"answer": a["answer"], "score": float(a["score"]), "start": int(a["start"]), "end": int(a["end"])}
        for a in items
    ]


def _run(request: dict[str, Any]) -> dict[str, Any]:
    import torch

    # Typed as Any: this runs against transformers 4.57.6, not the 5.x whose stubs a type
    # checker in the project's venv would see (5.x has no "question-answering" pipeline).
    transformers: Any = importlib.import_module("transformers")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # the machine's cores are shared with the server under test
    qa = transformers.pipeline("question-answering", model=request["checkpoint"], device="cpu")
    if not qa.tokenizer.is_fast:
        raise SystemExit("the checkpoint's tokenizer is not a fast tokenizer")
    results: list[dict[str, Any]] = []
    for case in request["cases"]:
        try:
            found = qa(question=case["question"], context=case["context"], **case["options"])
        except Exception as exc:  # the pipeline's refusals are results too
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        else:
            results.append({"answers": _answers(found)})
    return {"transformers": transformers.__version__, "results": results}


def main() -> None:
    if sys.argv[1:] == ["--versions"]:
        print(json.dumps(_versions()))
        return
    json.dump(_run(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
