"""bertserve.v1.AdminService: operator actions (ScaleModel). Registered by app.py only when
`admin_enabled` is set; the bearer-token interceptor (security.py) covers it like BertService."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from bertserve.server import convert
from bertserve.server.errors import ServingError, status_for
from bertserve.server.logs import get_logger
from bertserve.server.models import ModelRegistry
from bertserve.v1 import admin_pb2, admin_pb2_grpc

_log = get_logger(component="admin")
SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ScaleModel(
        self, request: admin_pb2.ScaleModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ScaleModelResponse:
        try:
            model = self._registry.named(request.model)
            _log.info("scale_requested", model=model.name, replicas=request.replicas, wait=request.wait)
            await model.scale(request.replicas, wait=request.wait)
        except ServingError as exc:
            await context.abort(status_for(exc), exc.message)
        return admin_pb2.ScaleModelResponse(
            model=convert.model_info(model, self._registry.default_for(model))
        )


def add_to_server(registry: ModelRegistry, server: grpc.aio.Server) -> None:
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(registry), server)
