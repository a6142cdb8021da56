"""Process lifecycle: assemble the models (assembly.py), serve gRPC, drain on signal."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bertserve.server import admin, core_calls, demo, reflection
from bertserve.server.assembly import StartupError, build_models
from bertserve.server.checkpoint import CheckpointError
from bertserve.server.dataplane import DataPlane
from bertserve.server.drain import Drain, DrainInterceptor, stop_server
from bertserve.server.health import SERVICE_NAME, HealthReporter
from bertserve.server.interceptors import ParseGuard
from bertserve.server.logs import configure_logging, get_logger
from bertserve.server.metrics import Metrics
from bertserve.server.models import ModelRegistry
from bertserve.server.security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    auth_token,
    server_credentials,
)
from bertserve.server.servicer import BertServicer, add_to_server
from bertserve.server.settings import Settings
from bertserve.v1 import bert_service_pb2
from bertserve.workers.errors import ReplicaLoadError
from bertserve.workers.protocol import Task

_log = get_logger(component="app")


class Server:
    """A running bertserve: gRPC server, health, models. Used by the CLI and by tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = HealthReporter()
        self.grpc_server: grpc.aio.Server | None = None
        self.registry: ModelRegistry | None = None
        self.port = 0
        # Recorded whether or not they are served over HTTP (--metrics-port).
        self.metrics = Metrics()
        self.drain = Drain(on_hold=lambda: self.metrics.call_rejected("shutting_down"))
        self.auth: BearerTokenInterceptor | None = None
        self.core_calls: core_calls.CoreCalls | None = None
        self._inflight_at_drain = 0
        # Called once Ray is up: Ray's core worker installs its own SIGTERM handler (run()).
        self.after_ray_init: Callable[[], None] | None = None

    def _serve_metrics(self) -> None:
        """Serve GET /metrics on --metrics-port, first: a taken port fails start-up at once."""
        s = self.settings
        if not s.metrics_port:
            return
        try:
            self.metrics.serve(s.host, s.metrics_port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(f"cannot bind the metrics port {s.host}:{s.metrics_port}: {reason}") from None
        _log.info("metrics_listening", host=s.host, port=self.metrics.port, path="/metrics")

    async def start(self) -> None:
        s = self.settings
        # TLS files and the token are checked first: a mistake there fails in a second, not after Ray.
        try:
            credentials = server_credentials(s)
            token = auth_token(s)
        except SecurityConfigError as exc:
            raise StartupError(str(exc)) from None
        self._serve_metrics()
        models, defaults = await build_models(
            s, self.health.schedule_update, self.metrics, after_ray_init=self.after_ray_init
        )
        try:
            self.registry = ModelRegistry(models, defaults)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.health.attach(self.registry)
        # Outermost first: the drain sees every call; then bytes that do not parse get
        # INVALID_ARGUMENT on every service; then the bearer token.
        interceptors: list[grpc.aio.ServerInterceptor] = [DrainInterceptor(self.drain), ParseGuard()]
        if token:
            self.auth = BearerTokenInterceptor(token, on_reject=self.metrics.call_rejected)
            interceptors.append(self.auth)
        servers_before = core_calls.server_ids()
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_receive_message_length),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        # Malformed request bytes get INVALID_ARGUMENT (the generated registration answers UNKNOWN).
        add_to_server(BertServicer(DataPlane(self.registry), metrics=self.metrics, drain=self.drain), server)
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        names: tuple[str, ...] = (
            bert_service_pb2.DESCRIPTOR.services_by_name["BertService"].full_name,
            "grpc.health.v1.Health",
        )
        if s.admin_enabled:
            # Not in security.OPEN_SERVICES: with a bearer token configured, it needs the token.
            admin.add_to_server(self.registry, server)
            names = (*names, admin.SERVICE_NAME)
            if not token:
                _log.warning("admin_without_auth", notice="AdminService is open to every client")
        reflection.enable(names, server)
        address = f"{s.host}:{s.port}"
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpcio raises instead of returning 0 on some versions
            self.port = 0
        if self.port == 0:
            raise StartupError(f"cannot bind {s.host}:{s.port}")
        await self.health.update()
        await server.start()
        self.grpc_server = server
        self.core_calls = core_calls.CoreCalls.created_since(servers_before)
        if s.port_file:  # the port answers from now on (NOT_SERVING until a replica is warm)
            Path(s.port_file).write_text(str(self.port))
        _log.info(
            "grpc_listening",
            host=s.host,
            port=self.port,
            health=SERVICE_NAME,
            tls="mutual" if s.tls_client_ca_file else ("server" if credentials else "off"),
            auth="bearer token" if token else "off",  # never the token itself
        )
        if token and credentials is None:
            _log.warning("auth_token_without_tls", notice="clients send the bearer token in plaintext")
        for model in models:
            if model.config.demo:
                _log.warning("demo_model", model=model.name, notice=demo.DEMO_NOTICE)
        try:
            await asyncio.gather(*(m.start(s.startup_timeout_s) for m in models))
            self.registry.refresh_defaults()
        except (ReplicaLoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        await self.health.update()
        for model in models:
            _log.info(
                "serving",
                model=model.name,
                replicas=model.ready_replicas,
                device=model.config.device,
                dtype=model.dtype,
                tasks=[t.value for t in model.tasks],
                default_for=[t.value for t in self.registry.default_for(model)],
            )
        self._say_ready(tls=credentials is not None)

    def _say_ready(self, tls: bool) -> None:
        """The last start-up line: where the server listens and a first call to try."""
        assert self.registry is not None
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        address = f"{shown}:{self.port}"
        message = f"bertserve is serving {len(self.registry.all())} model(s) on {address}"
        if tls or self.auth is not None:
            command = f"bertserve health --address {address}"  # a first call needs no credentials
        elif any(m.serves(Task.FILL_MASK) for m in self.registry.all()):
            command = (
                'python -c "from bertserve_client import BertClient; '
                f"print(BertClient('{address}').fill_mask('Paris is the [MASK] of France.'))\""
            )
        else:
            command = (
                'python -c "from bertserve_client import BertClient; '
                f"print(BertClient('{address}').tokenize('Hello world'))\""
            )
        if self.settings.log_format == "console":
            print(f"{message}. Try: {command}", file=sys.stderr, flush=True)
        else:
            _log.info("ready", address=address, message=message, try_command=command)

    def note_signal(self) -> None:
        """Count, in the signal handler itself, the calls gRPC core holds that the server has not
        read: received before the signal, they are served (drain.py)."""
        self.drain.mark_signal(None if self.core_calls is None else self.core_calls.live())

    def begin_drain(self) -> None:
        """Phase 1 of the drain: from here on a call received after the signal is held, not
        served (drain.py)."""
        if self.drain.draining:
            return
        self.drain.begin()
        self._inflight_at_drain = self.drain.active
        _log.info(
            "drain_started",
            calls_in_flight=self.drain.active,
            calls_received_not_read=self.drain.received_unread,
        )

    async def stop(self) -> None:
        """Drain (drain.py): new calls held, health NOT_SERVING, the calls received before finish
        within the grace period, then the port closes and the held calls get UNAVAILABLE; then
        the replicas are released."""
        self.begin_drain()
        await self.health.shutting_down()
        if self.grpc_server is not None:
            settled = await stop_server(
                self.grpc_server, self.drain, self.settings.grace_period_s, time.monotonic
            )
            _log.info(
                "drained",
                calls_in_flight_at_signal=self._inflight_at_drain,
                calls_unread_at_signal=self.drain.received_unread,
                finished_in_grace_period=settled,
                refused_while_draining=self.drain.refused,
            )
        if self.auth is not None:
            self.auth.log_left_out()
        if self.registry is not None:
            for model in self.registry.all():
                await model.stop()
        await asyncio.to_thread(self.metrics.close)  # waits for the HTTP thread's poll loop
        _log.info("stopped")


async def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; 0 after a drain, 1 when start-up failed.

    A signal during start-up drains too: the port may already answer calls while replicas warm.
    """
    configure_logging(settings.log_level, settings.log_format)
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        server.begin_drain()
        stop.set()

    def handle(signum: int, frame: object) -> None:
        # A plain signal handler runs at the next bytecode, before the event loop's current turn
        # ends: the count of calls received before the signal is taken here, the drain begins
        # on the loop.
        server.note_signal()
        loop.call_soon_threadsafe(on_signal, context=contextvars.Context())

    def install_signal_handlers() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handle)

    install_signal_handlers()
    # ray.init() puts Ray's own SIGTERM handler in place (it exits at once, code 15): ours goes back
    # right after it, before the port opens.
    server.after_ray_init = install_signal_handlers
    try:
        starting = asyncio.create_task(server.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            stopping.cancel()
            try:
                starting.result()
            except (StartupError, CheckpointError) as exc:
                print(f"bertserve: error: {exc}", file=sys.stderr)
                await server.stop()
                return 1
            await stop.wait()
        else:
            _log.info("shutdown_requested_during_startup")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupError, CheckpointError):
                await starting
        _log.info("shutdown_requested", grace_period_s=settings.grace_period_s)
        await server.stop()
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
