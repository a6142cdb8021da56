"""Investigation tools: one question each, answered in one run, beside the benchmark.

The benchmark (`python -m bench`: bench/run.py with the load generator, targets, workloads,
baselines and report around it) is what docs/benchmarks.md's figures come from. The tools here
answer narrower questions about a change or a host, reusing the benchmark's parts; each prints
JSON and writes nothing else:

    python -m bench.tools.ab                 two server configurations (or checkouts), interleaved A/B
    python -m bench.tools.latency_breakdown  where one request's time goes, per transport
    python -m bench.tools.grpc_floor         a do-nothing gRPC round trip after an idle gap
    python -m bench.tools.stack_floor        client -> gRPC server -> model process, no bertserve code

docs/benchmarks.md ("Investigation tools") says what each has been used for.
"""
