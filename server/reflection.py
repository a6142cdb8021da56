"""Server reflection, as both `grpc.reflection.v1.ServerReflection` and its predecessor
`grpc.reflection.v1alpha.ServerReflection`.

grpcio-reflection ships v1alpha only; grpcurl and newer tools ask for v1 first. The two protocols
are the same messages under another package name, so v1 is served by the same servicer: its file
descriptor is v1alpha's, renamed, and added to the default descriptor pool (so v1 can describe
itself too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE, V1ALPHA_SERVICE)
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_messages() -> tuple[Any, Any]:
    """The v1 request and response classes (the v1alpha descriptor under the v1 package)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
        proto.name = _V1_FILE
        proto.package = V1_PACKAGE
        old = f".{reflection_pb2.DESCRIPTOR.package}."
        for message in proto.message_type:
            for fld in message.field:
                if fld.type_name:  # proto2: assigning even "" would mark a scalar field as typed
                    fld.type_name = fld.type_name.replace(old, f".{V1_PACKAGE}.")
        for service in proto.service:
            for method in service.method:
                method.input_type = method.input_type.replace(old, f".{V1_PACKAGE}.")
                method.output_type = method.output_type.replace(old, f".{V1_PACKAGE}.")
        pool.Add(proto)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{V1_PACKAGE}.ServerReflectionRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{V1_PACKAGE}.ServerReflectionResponse")
    )
    return request, response


def enable(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) for `service_names` and the reflection services."""
    names = (*service_names, *SERVICE_NAMES)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    request, response = _v1_messages()

    async def info(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The v1alpha servicer builds v1alpha responses; their bytes are v1's.
        async for reply in servicer.ServerReflectionInfo(_as_v1alpha(requests), context):
            yield response.FromString(reply.SerializeToString())

    handler = grpc.stream_stream_rpc_method_handler(
        info, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )


async def _as_v1alpha(requests: Any) -> Any:
    async for request in requests:
        yield reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())
