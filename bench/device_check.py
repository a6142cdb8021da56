"""GPU placement check for bench/device.sh: start bertserve with replicas on CUDA and verify
through GetModelInfo that each replica is READY on its own GPU (or on a shared one when there
are more replicas than GPUs, with fractional GPUs per replica).

    python -m bench.device_check --replicas N --gpus G --out replicas.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from bench.model import DEFAULT_CACHE, build_bert_base
from bench.targets import BertserveProcess
from bertserve.v1 import bert_service_pb2_grpc, models_pb2


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args()
    share = min(1.0, ns.gpus / ns.replicas) if ns.replicas > ns.gpus else 1.0
    checkpoint = str(build_bert_base(DEFAULT_CACHE / "pretraining"))
    server = BertserveProcess(
        checkpoint,
        None,
        dtype="bfloat16",
        replicas=ns.replicas,
        threads=1,
        extra=["--device", "cuda", "--gpus-per-replica", f"{share:g}"],
    )
    try:
        server.start()
        with grpc.insecure_channel(server.address) as channel:
            info = bert_service_pb2_grpc.BertServiceStub(channel).GetModelInfo(
                models_pb2.GetModelInfoRequest(model="bert"), timeout=30
            )
    finally:
        server.stop()
    replicas = [
        {"id": r.replica_id, "device": r.device, "node": r.node_id, "state": r.state}
        for r in info.model.replicas
    ]
    ns.out.write_text(json.dumps({"dtype": info.model.dtype, "replicas": replicas}, indent=2))
    devices = [r.device for r in info.model.replicas]
    ready = all(r.state == models_pb2.REPLICA_STATE_READY for r in info.model.replicas)
    distinct = len(set(devices)) == min(ns.replicas, ns.gpus)
    print(json.dumps({"devices": devices, "all_ready": ready, "distinct_devices": distinct}))
    if not (ready and distinct and all(d.startswith("cuda:") for d in devices)):
        print("device check FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
