"""`serve --demo` works offline and says its predictions are meaningless; logs are JSON with
request ids and no request text."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from bertserve.v1 import bert_service_pb2_grpc, fill_mask_pb2
from bertserve.workers.tiny_bert import MARKER_FILE
from bertserve_client import BertClient
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.integration


def test_demo_models_are_built_once_served_offline_flagged_meaningless_and_log_json(
    tmp_path: Path,
) -> None:
    """`--demo` builds its four models once, serves every task offline, flags each model as
    meaningless, ends its start-up with a `ready` event naming the address and a call to try,
    and its log is one JSON object per line from start to end."""
    demo_dir = tmp_path / "demo"
    env = {"HF_HUB_OFFLINE": "1"}
    running = start_server(["--demo", "--demo-dir", str(demo_dir)], env=env)
    try:
        with BertClient(running.address, timeout=30) as client:
            models = {m.name: m for m in client.list_models().models}
            response = client.fill_mask("Paris is the [MASK] of France.")
            emotion = client.classify_sequence("I love it!")
            entities = client.classify_tokens("Angela Merkel visited São Paulo.")
            answers = client.answer_question("Where?", "The tower is in Paris.")
    finally:
        running.stop_cleanly()
    assert sorted(models) == ["demo", "demo-emotion", "demo-ner", "demo-squad"]
    assert all(m.demo and "meaningless" in m.description for m in models.values())
    assert models["demo"].max_sequence_length == 512
    assert list(models["demo-emotion"].labels) == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert "B-PER" in models["demo-ner"].labels
    assert len(response.results[0].masks[0].candidates) == 5
    assert emotion.model == "demo-emotion" and len(emotion.results[0].labels) == 6
    assert entities.model == "demo-ner" and answers.model == "demo-squad" and answers.results[0].answers
    events = [json.loads(line) for line in running.log().splitlines() if line.strip()]  # all JSON
    ready = [e for e in events if e["event"] == "ready"]
    assert len(ready) == 1 and ready[0]["address"] == running.address
    assert running.address in ready[0]["try_command"]
    assert events.index(ready[0]) > max(i for i, e in enumerate(events) if e["event"] == "serving")
    built = (demo_dir / "demo" / MARKER_FILE).stat().st_mtime_ns
    again = start_server(["--demo", "--demo-dir", str(demo_dir)], env=env)
    again.stop_cleanly()
    rebuilt = (demo_dir / "demo" / MARKER_FILE).stat().st_mtime_ns != built
    assert not rebuilt, "the cached demo models were rebuilt"
    assert "building_demo_checkpoints" in running.log() and "building_demo_checkpoints" not in again.log()


def test_logs_are_json_events_with_the_request_id_and_no_request_text(server: RunningServer) -> None:
    secret = "Confidential [MASK] zebra-unicorn"
    with grpc.insecure_channel(server.address) as channel:
        stub = bert_service_pb2_grpc.BertServiceStub(channel)
        stub.FillMask(fill_mask_pb2.FillMaskRequest(texts=[secret]), metadata=[("x-request-id", "ok-req-1")])
        with pytest.raises(grpc.RpcError):
            stub.FillMask(
                fill_mask_pb2.FillMaskRequest(texts=[secret], top_k=0),
                metadata=[("x-request-id", "bad-req-1")],
            )
    events = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    failed = [e for e in events if e.get("request_id") == "bad-req-1"]
    assert failed and failed[0]["event"] == "request_failed" and failed[0]["code"] == "INVALID_ARGUMENT"
    assert failed[0]["rpc"] == "FillMask" and "timestamp" in failed[0] and failed[0]["level"] == "info"
    assert "zebra-unicorn" not in server.log()
