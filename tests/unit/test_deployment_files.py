"""Static checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml, and the
versions the Makefile and the Dockerfile install (constraints.txt).

No Docker engine is needed. Each check compares the files with the code that really runs them:
- the `bertserve` argv is parsed by the CLI's own argparse parser and then validated by
  `settings.from_sources`;
- the `ray` argv is checked against the option table printed by the installed
  `ray <subcommand> --help`;
- COPY sources and package directories are checked against the tree and pyproject.toml;
- the Makefile's installs are read from `make -n`, the Dockerfile's from its RUN steps: both use
  constraints.txt, whose pins lie inside pyproject.toml's ranges;
- docs/metrics.md's scrape target is checked against the compose front end's --metrics-port.
So renaming a flag, a package directory or a port on one side, and not the other, fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from bertserve.server import cli as cli_mod
from bertserve.server import settings as settings_mod

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = ("ray-head", "gpu-worker", "frontend")


# --------------------------------------------------------------------------- compose helpers

_VAR_REF = re.compile(
    r"\$\$"  # escaped dollar
    r"|\$\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|\$(?P<bare>[A-Za-z_]\w*)"
)


def _interpolate(text: str) -> str:
    """What Compose makes of `text` when no variable is set: `${VAR:-default}` -> default, `$$` -> `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("braced") and m.group("op") in (":-", "-"):
            return m.group("arg")
        raise AssertionError(f"{text!r}: {m.group(0)} has no default (write ${{VAR:-default}})")

    return _VAR_REF.sub(sub, text)


def _walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "no services in docker-compose.yml"
    )
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _exec_list(service: dict[str, Any], key: str, name: str) -> list[str]:
    value = service.get(key)
    if value is None:
        return []
    assert isinstance(value, list), f"{name}.{key} must be a list (exec form), not {value!r}"
    return [_interpolate(str(v)) for v in value]


def _invocations(name: str, service: dict[str, Any]) -> list[list[str]]:
    """Every argv the container runs: its command, or each step of a `sh -c '... && exec "$@"'` entrypoint."""
    entrypoint = _exec_list(service, "entrypoint", name)
    command = _exec_list(service, "command", name)
    assert command, f"{name} has no command"
    if not entrypoint:
        return [command]
    assert entrypoint[:2] == ["sh", "-c"] and len(entrypoint) >= 3, (
        f"{name}.entrypoint: expected ['sh', '-c', script, ...], got {entrypoint}"
    )
    lexer = shlex.shlex(entrypoint[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    steps: list[list[str]] = [[]]
    for token in tokens:
        assert token == "&&" or not set(token) <= set("();<>|&"), (
            f"{name}.entrypoint: only `a && b` chains are understood here, found {token!r}"
        )
        if token == "&&":
            steps.append([])
        else:
            steps[-1].append(token)
    assert steps[-1] == ["exec", "$@"], (
        f'{name}.entrypoint must end with `exec "$@"` so that the command runs (and gets the stop signal)'
    )
    return [*steps[:-1], command]


def _split_flags(argv: list[str]) -> dict[str, str | None]:
    """--flag=value / --flag value / --switch -> {flag: value or None} (values taken as the next non-flag)."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                flag, value = arg.split("=", 1)
                flags[flag] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[arg] = argv[i + 1]
                i += 1
            else:
                flags[arg] = None
        i += 1
    return flags


def _by_program(services: dict[str, dict[str, Any]], program: str) -> list[tuple[str, list[str]]]:
    found = []
    for name, service in services.items():
        for argv in _invocations(name, service):
            if argv[0] == program:
                found.append((name, argv))
    return found


def _healthcheck_argv(name: str, service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test and test[0] == "CMD", (
        f"{name}.healthcheck.test must be the exec form ['CMD', ...], not {test!r}"
    )
    return [_interpolate(str(t)) for t in test[1:]]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), f"not host:port: {address!r}"
    return host, int(port)


# --------------------------------------------------------------------------- bertserve CLI


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _bertserve_parser() -> argparse.ArgumentParser:
    return cli_mod.build_parser()


def _parse_bertserve(argv: list[str], where: str, capsys: pytest.CaptureFixture[str]) -> argparse.Namespace:
    assert argv[0] == "bertserve"
    try:
        return _bertserve_parser().parse_args(argv[1:])
    except SystemExit:
        err = capsys.readouterr().err.strip().splitlines()
        raise AssertionError(f"{where}: `bertserve` rejects {argv[1:]}: {err[-1] if err else '?'}") from None


# --------------------------------------------------------------------------- ray CLI

_CLICK_BOOLEAN = frozenset({"true", "false", "1", "0", "yes", "no", "y", "n", "t", "f", "on", "off"})
_HELP_OPTION = re.compile(
    r"^  (?P<names>--?[\w-]+(?:, --?[\w-]+)*)(?: (?P<metavar>[A-Z]+|\[[^\]]+\]))?(?:\s|$)"
)


@functools.cache
def _ray_options(subcommand: str) -> dict[str, str | None]:
    """{--option: metavar (INTEGER, TEXT, BOOLEAN, [a|b]) or None for a switch}, from `ray SUB --help`."""
    exe = Path(sys.executable).with_name("ray")
    ray = str(exe) if exe.exists() else shutil.which("ray")
    assert ray, "the `ray` CLI is not installed next to this Python (ray is a dependency in pyproject.toml)"
    done = subprocess.run(
        [ray, subcommand, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (
        f"`ray {subcommand}` is not a command of the installed ray CLI: {done.stderr[-300:]}"
    )
    options: dict[str, str | None] = {}
    for line in done.stdout.splitlines():
        m = _HELP_OPTION.match(line)
        if m:
            for opt in m.group("names").split(", "):
                options[opt] = m.group("metavar")
    assert "--help" in options, f"could not read the options of `ray {subcommand} --help`"
    return options


def _check_ray_argv(argv: list[str], where: str) -> dict[str, str | None]:
    assert argv[0] == "ray" and len(argv) > 1, f"{where}: {argv}"
    subcommand, rest = argv[1], argv[2:]
    known = _ray_options(subcommand)
    flags = _split_flags(rest)
    assert all(a.startswith("--") or _is_value_of_previous(rest, i) for i, a in enumerate(rest)), (
        f"{where}: positional arguments in {rest}"
    )
    for flag, value in flags.items():
        assert flag in known, (
            f"{where}: `ray {subcommand}` has no option {flag} (installed ray {_ray_version()})"
        )
        metavar = known[flag]
        if metavar is None:
            assert value is None, f"{where}: {flag} is a switch but gets {value!r}"
            continue
        assert value is not None, f"{where}: {flag} needs a value ({metavar})"
        if metavar == "INTEGER":
            assert re.fullmatch(r"-?\d+", value), f"{where}: {flag}={value!r} is not an INTEGER"
        elif metavar == "FLOAT":
            float(value)
        elif metavar == "BOOLEAN":
            assert value.lower() in _CLICK_BOOLEAN, f"{where}: {flag}={value!r} is not a BOOLEAN"
        elif metavar.startswith("["):
            assert value in metavar.strip("[]").split("|"), f"{where}: {flag}={value!r} not in {metavar}"
    return flags


def _is_value_of_previous(args: list[str], i: int) -> bool:
    return i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1]


@functools.cache
def _ray_version() -> str:
    return importlib.metadata.version("ray")


def _bytes(size: str) -> int:
    """Docker's size syntax: 4gb, 512m, 1073741824 (binary multiples)."""
    m = re.fullmatch(r"(\d+)\s*([bkmg]?)b?", size.strip().lower())
    assert m, f"not a Docker size: {size!r}"
    return int(m.group(1)) << (10 * "bkmg".index(m.group(2) or "b"))


# --------------------------------------------------------------------------- Dockerfile helpers


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for instr, args in _dockerfile_instructions():
        if instr not in ("COPY", "ADD"):
            continue
        parts = json.loads(args) if args.startswith("[") else shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        assert len(parts) >= 2, f"{instr} {args}: needs a source and a destination"
        sources.extend(parts[:-1])
    return sources


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def _is_ignored(path: str) -> bool:
    """Docker's rule: a path is out when it or a directory above it matches; the last matching rule wins."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in _dockerignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def _normalise(source: str) -> str:
    return source.removeprefix("./").rstrip("/") or "."


# =========================================================================== compose tests


def test_compose_defines_the_head_the_gpu_workers_and_the_frontend(services: dict[str, Any]) -> None:
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_all_services_run_the_one_image_built_from_this_repository(services: dict[str, Any]) -> None:
    images = {_interpolate(services[name]["image"]) for name in SERVICES}
    assert len(images) == 1, f"services run different images: {images}"
    for name in SERVICES:
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name} has no build section"
        context = ROOT / _interpolate(build.get("context", "."))
        assert context.resolve() == ROOT, f"{name} builds from {context}, not the repository root"
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_every_variable_reference_in_compose_has_a_default(compose: dict[str, Any]) -> None:
    for path, text in _walk_strings(compose):
        for m in _VAR_REF.finditer(text):
            if m.group(0) == "$$":
                continue
            assert m.group("braced") and m.group("op") == ":-", (
                f"{path}: {m.group(0)!r} needs a default: ${{{m.group('braced') or m.group('bare')}:-...}}"
            )


def test_every_command_and_entrypoint_is_exec_form_and_runs_a_project_executable(
    services: dict[str, Any],
) -> None:
    scripts = _pyproject()["project"]["scripts"]
    dependencies = _pyproject()["project"]["dependencies"]
    for name in SERVICES:
        for argv in _invocations(name, services[name]):
            assert argv[0] in ("bertserve", "ray"), (
                f"{name} runs {argv[0]!r}, which the image does not provide"
            )
            if argv[0] == "bertserve":
                assert "bertserve" in scripts, (
                    "pyproject.toml [project.scripts] no longer declares `bertserve`"
                )
            else:
                assert any(re.match(r"ray\b", d) for d in dependencies), (
                    f"{name} runs `ray`, but ray is no longer a dependency in pyproject.toml"
                )


def test_bertserve_console_script_points_at_the_cli_main() -> None:
    target = _pyproject()["project"]["scripts"]["bertserve"]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr, None)), f"console script target {target} is not callable"
    assert module is cli_mod, f"the console script moved to {target}; update this test's parser source"


def test_frontend_command_is_accepted_by_bertserve_serve_and_yields_valid_settings(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    frontend = services["frontend"]
    argv = _invocations("frontend", frontend)[-1]
    assert argv[:2] == ["bertserve", "serve"], f"frontend command is {argv[:2]}, not `bertserve serve`"
    ns = _parse_bertserve(argv, "frontend.command", capsys)
    env = {k: _interpolate(str(v)) for k, v in (frontend.get("environment") or {}).items()}
    settings = settings_mod.from_sources(vars(ns), env=env)  # raises ValueError on an invalid combination
    assert settings.host == "0.0.0.0", "the front end must bind every interface inside its container"
    assert settings.ray_address, "the front end must join the compose Ray cluster, not start a local one"
    assert settings.model, "no model"


def test_frontend_bertserve_environment_variables_name_real_settings(services: dict[str, Any]) -> None:
    fields = {settings_mod.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(settings_mod.Settings)}
    for name in SERVICES:
        for key in services[name].get("environment") or {}:
            if key.startswith(settings_mod.ENV_PREFIX):
                assert key in fields, (
                    f"{name}.environment.{key} is not a bertserve setting (known: {sorted(fields)})"
                )


def test_frontend_publishes_the_port_that_bertserve_serve_listens_on(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ns = _parse_bertserve(_invocations("frontend", services["frontend"])[-1], "frontend.command", capsys)
    assert ns.port is not None, "pass --port explicitly so that the mapping below can be checked"
    container_ports = []
    for entry in services["frontend"].get("ports") or []:
        spec = _interpolate(str(entry)).split("/")[0]
        container_ports.append(int(spec.rsplit(":", 1)[-1]))
    assert ns.port in container_ports, f"frontend publishes {container_ports}, but serves on --port {ns.port}"


def test_frontend_healthcheck_runs_bertserve_health_against_the_served_port(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    frontend = services["frontend"]
    serve = _parse_bertserve(_invocations("frontend", frontend)[-1], "frontend.command", capsys)
    argv = _healthcheck_argv("frontend", frontend)
    assert argv[:2] == ["bertserve", "health"], (
        f"frontend healthcheck runs {argv[:2]}, not `bertserve health`"
    )
    health = _parse_bertserve(argv, "frontend.healthcheck", capsys)
    host, port = _host_port(health.address)
    assert host in ("127.0.0.1", "localhost"), f"healthcheck should probe the container itself, not {host}"
    assert port == serve.port, f"healthcheck probes port {port}, the server listens on {serve.port}"


def test_every_healthcheck_uses_the_exec_form(services: dict[str, Any]) -> None:
    checked = [name for name, service in services.items() if "healthcheck" in service]
    assert {"ray-head", "frontend"} <= set(checked), f"healthchecks found only on {checked}"
    for name in checked:
        argv = _healthcheck_argv(name, services[name])
        assert argv and argv[0] in ("bertserve", "ray"), f"{name} healthcheck runs {argv}"


def test_ray_commands_use_subcommands_and_options_of_the_installed_ray_cli(services: dict[str, Any]) -> None:
    argvs = _by_program(services, "ray")
    argvs += [
        (f"{n}.healthcheck", a)
        for n, s in services.items()
        if "healthcheck" in s
        for a in [_healthcheck_argv(n, s)]
        if a[0] == "ray"
    ]
    assert len(argvs) >= 4, f"expected ray commands for head, worker, frontend and a healthcheck, got {argvs}"
    for where, argv in argvs:
        _check_ray_argv(argv, where)


def test_ray_head_starts_the_head_on_the_port_that_every_node_and_the_frontend_join(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    head_argv = _invocations("ray-head", services["ray-head"])[-1]
    head = _check_ray_argv(head_argv, "ray-head")
    assert head_argv[1] == "start" and "--head" in head and "--block" in head, (
        "ray-head must run `ray start --head ... --block` (the container lives as long as Ray does)"
    )
    head_port = int(head.get("--port") or 6379)
    expected = ("ray-head", head_port)
    joins = 0
    for name, argv in _by_program(services, "ray"):
        if argv[1] == "start" and name != "ray-head":
            flags = _check_ray_argv(argv, name)
            assert _host_port(str(flags.get("--address"))) == expected, (
                f"{name} joins {flags.get('--address')}"
            )
            joins += 1
    assert joins >= 2, "gpu-worker and frontend should both join the head with `ray start --address`"
    serve = _parse_bertserve(_invocations("frontend", services["frontend"])[-1], "frontend.command", capsys)
    assert _host_port(serve.ray_address) == expected, (
        f"frontend --ray-address {serve.ray_address} is not the head"
    )
    status = _healthcheck_argv("ray-head", services["ray-head"])
    assert status[:2] == ["ray", "status"], f"ray-head healthcheck runs {status}"
    address = _split_flags(status[2:]).get("--address")
    if address is not None:
        assert _host_port(address)[1] == head_port, (
            f"ray-head healthcheck asks {address}, the head is on {head_port}"
        )


def test_frontend_waits_for_a_healthy_head(services: dict[str, Any]) -> None:
    depends = services["frontend"].get("depends_on") or {}
    assert isinstance(depends, dict) and depends.get("ray-head", {}).get("condition") == "service_healthy", (
        "frontend must wait for ray-head to be healthy before `ray start --address`"
    )
    assert "healthcheck" in services["ray-head"], "service_healthy on ray-head needs a ray-head healthcheck"


def test_gpu_worker_reserves_nvidia_gpus_and_offers_the_same_number_to_ray(services: dict[str, Any]) -> None:
    worker = services["gpu-worker"]
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert len(gpus) == 1, (
        f"gpu-worker should reserve one nvidia device entry with capabilities [gpu]: {devices}"
    )
    raw_count = str(gpus[0].get("count"))
    assert re.fullmatch(r"\$\{\w+:-\d+\}", raw_count), (
        f"GPU count: use a variable with a numeric default (${{GPUS_PER_WORKER:-1}}), not {raw_count!r}"
    )
    assert int(_interpolate(raw_count)) >= 1
    (argv,) = [a for a in _invocations("gpu-worker", worker) if a[:2] == ["ray", "start"]]
    raw_argv = [str(a) for a in worker["command"]]
    raw_num_gpus = _split_flags(raw_argv).get("--num-gpus")
    assert raw_num_gpus == raw_count, (
        f"`ray start --num-gpus={raw_num_gpus}` must follow the reservation count {raw_count} (same variable)"
    )
    _check_ray_argv(argv, "gpu-worker")


def test_gpu_worker_can_be_scaled_with_compose_scale(services: dict[str, Any]) -> None:
    worker = services["gpu-worker"]
    assert "container_name" not in worker, "a fixed container_name prevents `--scale gpu-worker=N`"
    assert not worker.get("ports"), "published host ports prevent `--scale gpu-worker=N`"


def test_only_the_gpu_worker_reserves_gpus(services: dict[str, Any]) -> None:
    for name in ("ray-head", "frontend"):
        assert (
            not services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        ), f"{name} needs no GPU"


def test_frontend_and_head_offer_no_resources_so_replicas_land_on_gpu_workers(
    services: dict[str, Any],
) -> None:
    for name in ("ray-head", "frontend"):
        (flags,) = [
            _check_ray_argv(a, name) for a in _invocations(name, services[name]) if a[:2] == ["ray", "start"]
        ]
        assert flags.get("--num-cpus") == "0" and flags.get("--num-gpus") == "0", (
            f"{name}: `ray start` should pass --num-cpus=0 --num-gpus=0, got {flags}"
        )


def test_every_ray_node_has_shared_memory_larger_than_its_object_store(services: dict[str, Any]) -> None:
    for name, argv in _by_program(services, "ray"):
        if argv[1] != "start":
            continue
        shm = services[name].get("shm_size")
        assert shm, f"{name} runs a Ray node but sets no shm_size (Docker's default /dev/shm is 64 MB)"
        store = _split_flags(argv).get("--object-store-memory")
        assert store is not None, (
            f"{name}: pass --object-store-memory, or Ray sizes it from host RAM, not /dev/shm"
        )
        assert int(store) < _bytes(_interpolate(str(shm))), (
            f"{name}: object store {store} B does not fit shm_size {shm}; Ray would fall back to disk"
        )


def test_hugging_face_cache_is_a_named_volume_shared_by_workers_and_frontend(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    env_hf_home = [
        args.split("HF_HOME=", 1)[1].split()[0]
        for instr, args in _dockerfile_instructions()
        if instr == "ENV" and "HF_HOME=" in args
    ]
    mounts_by_service = {}
    for name in ("gpu-worker", "frontend"):
        hf_home = (services[name].get("environment") or {}).get("HF_HOME") or (
            env_hf_home[-1] if env_hf_home else None
        )
        assert hf_home, f"{name}: HF_HOME is set neither in the service nor in the Dockerfile"
        named = {}
        for volume in services[name].get("volumes") or []:
            source, _, target = str(volume).partition(":")
            if source in (compose.get("volumes") or {}):
                named[source] = target.split(":")[0]
        covering = [src for src, target in named.items() if Path(hf_home).is_relative_to(target)]
        assert covering, f"{name}: HF_HOME={hf_home} is not on a named volume ({named})"
        mounts_by_service[name] = (covering[0], named[covering[0]])
    assert len(set(mounts_by_service.values())) == 1, (
        f"workers and frontend use different caches: {mounts_by_service}"
    )
    volume, target = mounts_by_service["gpu-worker"]
    demo_dir = (services["frontend"].get("environment") or {}).get("BERTSERVE_DEMO_DIR")
    if demo_dir is not None:
        assert Path(demo_dir).is_relative_to(target), (
            f"--demo builds its checkpoint in {demo_dir}; gpu-worker replicas read it, so put it on {volume}"
        )


# =========================================================================== Dockerfile tests


def test_dockerfile_copies_only_sources_that_exist_and_the_context_keeps() -> None:
    sources = _copy_sources()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        path = _normalise(source)
        assert path != ".", "COPY . copies the whole context; copy only what the build needs"
        assert (ROOT / path).exists(), f"COPY source {source} does not exist"
        assert not _is_ignored(path), f"COPY source {source} is excluded by .dockerignore"


def test_dockerfile_copies_everything_both_distributions_need_to_build() -> None:
    copied = {_normalise(s) for s in _copy_sources()}

    def is_copied(path: str) -> bool:
        parts = Path(path).parts
        return any("/".join(parts[: i + 1]) in copied for i in range(len(parts)))

    project = _pyproject()
    needed = [
        "pyproject.toml",
        "client/pyproject.toml",
        *project["tool"]["setuptools"]["package-dir"].values(),
    ]
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    needed += [
        str(p.relative_to(ROOT))
        for p in (ROOT / "client").iterdir()
        if p.is_dir() and not p.name.endswith(".egg-info") and not p.name.startswith((".", "__"))
    ]
    missing = [path for path in needed if not is_copied(path)]
    assert not missing, f"the image build would lack {missing}"


def _runs_with_build_args_expanded() -> list[str]:
    """RUN arguments, with ${NAME} of an earlier `ARG NAME=default` replaced by its default."""
    defaults: dict[str, str] = {}
    runs = []
    for instr, args in _dockerfile_instructions():
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
        elif instr == "RUN":
            runs.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), args))
    return runs


def test_dockerfile_installs_cuda_torch_before_both_distributions() -> None:
    runs = _runs_with_build_args_expanded()
    project = [i for i, r in enumerate(runs) if re.search(r"pip install\b.*\./client\b.*\s\.(\s|$)", r)]
    assert project, "no `pip install ./client .` RUN step"
    torch = [i for i, r in enumerate(runs) if re.search(r"pip install\b.*torch", r)]
    assert torch and torch[0] < project[0], "install torch in an earlier RUN step than the project"
    assert not re.search(r"download\.pytorch\.org/whl/cpu|\+cpu", runs[torch[0]]), (
        "the torch install pulls a CPU-only wheel; the GPU workers need PyPI's CUDA build"
    )


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args.split(":")[0] for instr, args in _dockerfile_instructions() if instr == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image should end with USER <non-root>"


def test_dockerfile_python_satisfies_requires_python() -> None:
    from packaging.specifiers import SpecifierSet

    (base,) = [args for instr, args in _dockerfile_instructions() if instr == "FROM"][-1:]
    m = re.search(r"python:(\d+\.\d+)", base)
    assert m, f"cannot tell the Python version of base image {base}"
    assert m.group(1) + ".0" in SpecifierSet(_pyproject()["project"]["requires-python"])


def test_dockerfile_default_command_is_the_project_console_script() -> None:
    cmds = [args for instr, args in _dockerfile_instructions() if instr in ("CMD", "ENTRYPOINT")]
    for args in cmds:
        assert args.startswith("["), f"use the exec form: {args}"
        assert json.loads(args)[0] in _pyproject()["project"]["scripts"], (
            f"{args} does not run a console script"
        )


def test_dockerignore_keeps_local_state_tests_and_caches_out_of_the_context() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_x.py",
        "bench/results/run.json",
        "server/__pycache__",
        "server/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/x",
        ".ruff_cache/x",
        "client/bertserve_client.egg-info/PKG-INFO",
    ):
        assert _is_ignored(path), f"{path} would be sent to the Docker build context"
    for path in ("server/cli.py", "workers/pool.py", "client/bertserve/v1/common_pb2.py", "pyproject.toml"):
        assert not _is_ignored(path), f".dockerignore excludes {path}, which the image needs"


# =========================================================================== compose: every command, metrics


def test_every_compose_command_and_healthcheck_is_accepted_by_the_cli_it_runs(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each argv a container runs (command, each entrypoint step, health check) is a project
    executable, and its own parser (bertserve's argparse, the installed ray CLI) accepts it."""
    checked = 0
    for name, service in services.items():
        argvs = [(f"{name}.command", argv) for argv in _invocations(name, service)]
        if "healthcheck" in service:
            argvs.append((f"{name}.healthcheck", _healthcheck_argv(name, service)))
        for where, argv in argvs:
            assert argv[0] in ("bertserve", "ray"), f"{where} runs {argv[0]!r}, which the image lacks"
            if argv[0] == "bertserve":
                _parse_bertserve(argv, where, capsys)
            else:
                _check_ray_argv(argv, where)
            checked += 1
    assert checked >= 6, f"expected the three services' commands and two health checks, checked {checked}"


def _frontend_metrics_port(services: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> int:
    ns = _parse_bertserve(_invocations("frontend", services["frontend"])[-1], "frontend.command", capsys)
    port = int(ns.metrics_port or 0)
    assert port > 0, "the frontend should serve Prometheus metrics: pass --metrics-port (docs/metrics.md)"
    return port


def test_frontend_serves_metrics_on_a_port_that_compose_and_the_image_expose(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port = _frontend_metrics_port(services, capsys)
    frontend = services["frontend"]
    exposed = {int(_interpolate(str(p)).split("/")[0]) for p in frontend.get("expose") or []}
    published = {
        int(_interpolate(str(p)).split("/")[0].rsplit(":", 1)[-1]) for p in frontend.get("ports") or []
    }
    assert port in exposed | published, (
        f"frontend serves metrics on {port} but exposes {sorted(exposed)} and publishes {sorted(published)}"
    )
    dockerfile_exposed = {
        int(p.split("/")[0])
        for instr, args in _dockerfile_instructions()
        if instr == "EXPOSE"
        for p in args.split()
    }
    assert port in dockerfile_exposed, (
        f"the Dockerfile should EXPOSE the metrics port {port} as it does the gRPC port"
    )


def test_docs_metrics_scrape_target_is_the_compose_frontend_and_its_metrics_port(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    targets = re.findall(r"targets:\s*\[([^\]]*)\]", text)
    assert targets, "docs/metrics.md shows no Prometheus scrape target"
    port = _frontend_metrics_port(services, capsys)
    for group in targets:
        for target in re.findall(r"[\"']([^\"']+)[\"']", group):
            host, target_port = _host_port(target)
            assert host in services, (
                f"docs/metrics.md scrapes {target}, but docker-compose.yml has no service {host!r} "
                f"(services: {sorted(services)})"
            )
            assert host == "frontend" and target_port == port, (
                f"docs/metrics.md scrapes {target}; the front end serves metrics on frontend:{port}"
            )


# =========================================================================== pinned versions


CONSTRAINTS = ROOT / "constraints.txt"
KEY_PINS = ("torch", "transformers", "ray", "grpcio", "protobuf")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraint_pins() -> dict[str, str]:
    """{canonical name: version} of constraints.txt's `name==version` lines."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"constraints.txt: pin exact versions (name==X.Y.Z), not {line!r}"
        )
        assert not req.extras, f"constraints.txt: pip refuses extras in constraints ({line!r})"
        pins[_canonical(req.name)] = specs[0].version
    return pins


def test_constraints_pin_the_key_packages_inside_pyproject_ranges() -> None:
    from packaging.requirements import Requirement

    pins = _constraint_pins()
    missing = [name for name in KEY_PINS if name not in pins]
    assert not missing, f"constraints.txt does not pin {missing}"
    project = _pyproject()["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(d for extra in project.get("optional-dependencies", {}).values() for d in extra),
        *client["dependencies"],
    ]
    for line in declared:
        req = Requirement(line)
        version = pins.get(_canonical(req.name))
        if version is not None:
            assert req.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {req.name}=={version}, outside pyproject's {line!r}"
            )


def _make_dry_run(tmp_path: Path, *args: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no `make` on this machine")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", f"VENV={tmp_path / 'venv'}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"make -n {' '.join(args)} failed: {done.stderr[-500:]}"
    return [line for line in done.stdout.splitlines() if not line.startswith("echo ")]


def _pip_installs(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(r"\bpip install\b", line)]


def _uses_constraints(line: str) -> bool:
    m = re.search(r"(?:--constraint|-c)[ =](\S+)", line)
    return bool(m) and (ROOT / m.group(1).strip("\"'")).resolve() == CONSTRAINTS.resolve()


def test_make_serve_installs_the_runtime_only_and_make_test_adds_the_dev_extras(tmp_path: Path) -> None:
    serve = _pip_installs(_make_dry_run(tmp_path, "serve"))
    assert serve, "make serve installs nothing into a fresh venv"
    assert not any("[dev]" in line for line in serve), f"make serve installs the dev extras: {serve}"
    test = _pip_installs(_make_dry_run(tmp_path, "test"))
    assert any("[dev]" in line for line in test), f"make test does not install .[dev]: {test}"
    # A venv set up by `make serve` (runtime stamp only): `make test` must still add the dev extras.
    (tmp_path / "venv").mkdir()
    runtime_stamps = [
        line.split()[-1] for line in _make_dry_run(tmp_path, "setup") if line.startswith("touch ")
    ]
    assert len(runtime_stamps) == 1, f"make setup should touch one stamp: {runtime_stamps}"
    Path(runtime_stamps[0]).touch()
    after_serve = _pip_installs(_make_dry_run(tmp_path, "test"))
    assert after_serve and all("[dev]" in line for line in after_serve), (
        f"after `make serve`, `make test` should install only the dev extras, runs {after_serve}"
    )


def test_makefile_installs_every_package_with_the_constraints_file(tmp_path: Path) -> None:
    installs = _pip_installs(_make_dry_run(tmp_path, "-B", "setup-dev"))
    packages = [line for line in installs if not re.search(r"--upgrade pip\s*$", line)]
    assert len(packages) >= 3, f"expected torch, runtime and dev installs: {installs}"
    for line in packages:
        assert _uses_constraints(line), f"the Makefile installs without --constraint constraints.txt: {line}"
        assert not re.search(r"\b[\w.-]+\s*(==|>=|<=|~=)", line), (
            f"the Makefile names a version itself; pins belong in constraints.txt: {line}"
        )
    (torch,) = [line for line in packages if re.search(r"\btorch\b", line)]
    assert "--index-url" not in torch, "by default the torch install should use pip's configured index"
    cpu = "https://download.pytorch.org/whl/cpu"
    (torch_cpu,) = [
        line
        for line in _pip_installs(_make_dry_run(tmp_path, "-B", "setup", f"TORCH_INDEX={cpu}"))
        if re.search(r"\btorch\b", line)
    ]
    assert f"--index-url {cpu}" in torch_cpu, f"TORCH_INDEX does not reach the torch install: {torch_cpu}"


def test_dockerfile_installs_every_package_with_the_same_constraints_file() -> None:
    instructions = _dockerfile_instructions()
    pip_runs = [i for i, (instr, args) in enumerate(instructions) if instr == "RUN" and "pip install" in args]
    assert pip_runs, "the Dockerfile installs nothing with pip"
    copied_at = [
        i
        for i, (instr, args) in enumerate(instructions)
        if instr == "COPY" and "constraints.txt" in shlex.split(args)[:-1]
    ]
    assert copied_at and copied_at[0] < pip_runs[0], "COPY constraints.txt before the first pip install"
    for i in pip_runs:
        args = instructions[i][1]
        for command in re.split(r"&&|;", args):
            if "pip install" not in command:
                continue
            assert re.search(r"(?:--constraint|-c)[ =]\"?constraints\.txt", command), (
                f"the Dockerfile installs without --constraint constraints.txt: {command.strip()}"
            )
            assert not re.search(r"[\w.-]+\s*(==|>=|<=|~=|<|>)\s*\d", command), (
                f"the Dockerfile names a version itself; pins belong in constraints.txt: {command.strip()}"
            )
