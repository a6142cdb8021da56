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


def test_demo_model_is_built_once_served_offline_and_flagged_meaningless(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = {"HF_HUB_OFFLINE": "1"}
    running = start_server(["--demo", "--demo-dir", str(demo_dir), "--ray-num-cpus", "1"], env=env)
    try:
        with BertClient(running.address, timeout=30) as client:
            info = client.model_info()
            response = client.fill_mask("Paris is the [MASK] of France.")
    finally:
        assert running.stop() == 0
    assert info.name == "demo" and info.demo and "meaningless" in info.description
    assert info.max_sequence_length == 512
    assert len(response.results[0].masks[0].candidates) == 5
    assert "predictions are meaningless" in running.log()
    built = (demo_dir / MARKER_FILE).stat().st_mtime_ns
    again = start_server(["--demo", "--demo-dir", str(demo_dir), "--ray-num-cpus", "1"], env=env)
    assert again.stop() == 0
    assert (demo_dir / MARKER_FILE).stat().st_mtime_ns == built, "the cached demo checkpoint was rebuilt"
    assert "building_demo_checkpoint" not in again.log()


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
