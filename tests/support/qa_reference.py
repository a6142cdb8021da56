"""The Hugging Face question-answering pipeline, as a test reference.

transformers 5 removed `pipeline("question-answering")`. This runs the steps of its last
version (v4.53, fast tokenizer) with what transformers 5 still ships: the fast tokenizer's
overflowing windows, the model on each window alone (batch of one, no padding), the
pipeline's own span scoring (`select_starts_ends`, kept for document QA), word-aligned
character offsets, the merge of answers with equal texts, the null answer and the sort.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class QAPipelineReference:
    def __init__(self, path: str | Path, model: Any = None, tokenizer: Any = None) -> None:
        import transformers

        self.model = model or transformers.AutoModelForQuestionAnswering.from_pretrained(str(path)).eval()
        self.tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(str(path))

    def __call__(
        self,
        question: str,
        context: str,
        *,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        top_k: int = 1,
        max_answer_len: int = 15,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
    ) -> list[dict[str, Any]]:
        """Answers as the pipeline returns them: dicts with score, start, end, answer."""
        import torch
        from transformers.pipelines.document_question_answering import select_starts_ends

        hf = self.tokenizer
        max_len = min(hf.model_max_length, 384) if max_seq_len is None else max_seq_len
        stride = min(max_len // 2, 128) if doc_stride is None else doc_stride
        enc = hf(
            text=question,
            text_pair=context,
            padding="do_not_pad",
            truncation="only_second",
            max_length=max_len,
            stride=stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        min_null_score = 1000000.0
        found: list[dict[str, Any]] = []
        by_text: dict[str, dict[str, Any]] = {}
        for span in range(len(enc["input_ids"])):
            ids = enc["input_ids"][span]
            p_mask = [
                0 if seq == 1 or tok == hf.cls_token_id else 1
                for seq, tok in zip(enc.sequence_ids(span), ids, strict=True)
            ]
            with torch.inference_mode():
                out = self.model(
                    input_ids=torch.tensor([ids]),
                    token_type_ids=torch.tensor([enc["token_type_ids"][span]]),
                    attention_mask=torch.tensor([enc["attention_mask"][span]]),
                )
            starts, ends, scores, min_null_score = select_starts_ends(
                out.start_logits.numpy(),
                out.end_logits.numpy(),
                np.array([p_mask]),
                np.array([enc["attention_mask"][span]]),
                min_null_score,
                top_k,
                handle_impossible_answer,
                max_answer_len,
            )
            encoding = enc[span]  # the tokenizers.Encoding of this window
            for s, e, score in zip(starts.tolist(), ends.tolist(), scores.tolist(), strict=True):
                try:
                    if not align_to_words:
                        raise LookupError
                    start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                    end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
                except Exception:
                    start, end = encoding.offsets[s][0], encoding.offsets[e][1]
                text = context[start:end]
                same = by_text.get(text.lower())  # the pipeline keeps the first of equal texts
                if same is not None:
                    same["score"] += score
                else:
                    found.append({"score": score, "start": start, "end": end, "answer": text})
                    by_text[text.lower()] = found[-1]
        if handle_impossible_answer:
            found.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        return sorted(found, key=lambda a: a["score"], reverse=True)[:top_k]
