"""Serve ServingArgs on this machine: a local Ray, Ray Serve and the same app the cluster runs."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.blob_uri import is_blob_uri
from tokenplane_serving.cpu_placement import keep_off_engine_cpus
from tokenplane_serving.mapping import FAST_PATH_ENV, HOLD_ENV, ray_environment

__all__ = [
    "API_KEY_ENV",
    "LocalServeError",
    "LocalServer",
    "local_api_keys",
    "local_cache_store",
    "main",
    "serve_local",
]


class LocalServeError(RuntimeError):
    """A local serving failure with a one-line, user-facing message (print `str(err)`, no traceback)."""


@dataclass
class LocalServer:
    """Handle on a running local deployment.

    Attributes:
        base_url: Root URL, e.g. `http://127.0.0.1:8000`; OpenAI clients want `openai_base_url`.
        model_id: The served model name.
        startup_s: Seconds from `serve_local` to ready (a replica generated a token; see `serve_local`).
        metrics_url: Prometheus endpoint of Ray's metrics agent (vLLM, Serve and tokenplane metrics),
            when `serve_local` was given a `metrics_port`.
        api_key: The key a client sends, when `local_api_keys` made the run's keys (auth mode api_key).
    """

    base_url: str
    model_id: str
    startup_s: float = 0.0
    metrics_url: str | None = None
    api_key: str | None = None
    _stopped: bool = field(default=False, repr=False)
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def openai_base_url(self) -> str:
        """`base_url` + `/v1`, the `base_url` argument of `openai.OpenAI`."""
        return f"{self.base_url}/v1"

    def stop(self) -> None:
        """Shut down Ray Serve and the local Ray (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        _shutdown()
        for cleanup in reversed(self._cleanup):  # what the run started besides Ray (Redis for batch, cache)
            with contextlib.suppress(Exception):
                cleanup()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _shutdown() -> None:
    import ray
    from ray import serve

    # Best effort: a half-started Serve must not stop Ray from going down.
    with contextlib.suppress(Exception):
        if ray.is_initialized():
            serve.shutdown()  # type: ignore[no-untyped-call]
    with contextlib.suppress(Exception):
        ray.shutdown()


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).exists()


def _preflight(args: ServingArgs, host: str, port: int) -> None:
    source = args.model.source
    if _looks_local(source):
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise LocalServeError(f"model directory {path} not found or has no config.json (try `make model`)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise LocalServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _app_failure(app_name: str) -> str | None:
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # the controller may still be starting
        return None
    if app is not None and str(app.status).endswith("DEPLOY_FAILED"):
        first_line = (app.message or "deployment failed").strip().splitlines()
        return first_line[-1] if first_line else "deployment failed"
    return None


def _import_in_background(module: str) -> Future[ModuleType]:
    """Import `module` on a daemon thread; `.result()` returns it, or raises what the import raised."""
    future: Future[ModuleType] = Future()

    def run() -> None:
        try:
            future.set_result(importlib.import_module(module))
        except BaseException as err:  # handed to whoever waits for the module
            future.set_exception(err)

    threading.Thread(target=run, name=f"import {module}", daemon=True).start()
    return future


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _set_ray_environment(args: ServingArgs) -> None:
    # Ray's processes inherit this process's environment at ray.init. HAProxy's side ports (stats,
    # metrics) and files default to fixed values; a local run takes free ports and its own directory.
    haproxy_dir = tempfile.mkdtemp(prefix="tp-hap-", dir="/tmp")  # HAProxy caps socket paths at 97 bytes
    env = {
        **ray_environment(args),
        # One HAProxy thread moves a laptop's traffic; Ray's default of 4 competes with the engine for cores.
        "RAY_SERVE_HAPROXY_NBTHREAD": os.environ.get("RAY_SERVE_HAPROXY_NBTHREAD", "1"),
        # A direct-ingress replica behind HAProxy stays reachable this long when stopped, so load balancers can
        # deregister it (Ray's default 30 s, ray/serve/_private/replica.py `_drain_behind_haproxy`). Locally the
        # only balancer is Ray's own HAProxy, which Serve stops first: without this every stop took 30 s more.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0"
        ),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        # HAProxy's backup server at zero replicas: Ray's fallback proxy, on fixed 8500/9500 by default.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{haproxy_dir}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{haproxy_dir}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": haproxy_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{haproxy_dir}/server-state",
    }
    for name in HOLD_ENV:  # a server of this process before may have held requests; this one's args decide
        os.environ.pop(name, None)
    os.environ.update(env)


def _check_direct_streaming() -> None:
    # After the app's import, not in _set_ray_environment: importing Ray Serve LLM there (about 9 s) would run
    # before Ray starts instead of beside it.
    from tokenplane_serving.ray_internals import direct_streaming_enabled

    if not direct_streaming_enabled():
        raise LocalServeError(
            "ray.serve.llm was imported before serve_local could enable direct streaming; "
            "set " + " ".join(f"{k}={v}" for k, v in FAST_PATH_ENV.items()) + " in the environment"
        )


def _start_batch_redis(args: ServingArgs, server: LocalServer) -> None:
    # The Batch API's queue: the user's Redis when the variable names one, else a redis-server of this run,
    # its append-only file next to the batch store so queued work survives a restart of `tokenplane up`.
    env = args.batch.redis_url_env
    if os.environ.get(env):
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalServeError(f"batch is enabled but there is no Redis: set {env} or install redis-server (make redis)")
    store = args.batch.store if args.batch.store and not is_blob_uri(args.batch.store) else None
    data_dir = Path(store or os.path.expanduser(f"~/.cache/tokenplane/batch/{args.app_name}")) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    started = _spawn_redis(binary, data_dir, persistent=True)
    if started is None:
        raise LocalServeError(f"redis-server did not start for the batch queue (its data: {data_dir})")
    port, stop_redis = started

    def stop() -> None:
        os.environ.pop(env, None)
        stop_redis()

    server._cleanup.append(stop)
    os.environ[env] = f"redis://127.0.0.1:{port}/0"


def _spawn_redis(binary: str, data_dir: Path, *, persistent: bool) -> tuple[int, Callable[[], None]] | None:
    """Start a redis-server on a free loopback port, with an append-only file in `data_dir` if `persistent`.

    Returns:
        Its port and how to stop it; None (and stopped) when it did not answer PING within 10 s.
    """
    port = _free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir), "--save", ""]
    command += ["--appendonly", "yes" if persistent else "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()

    deadline = time.monotonic() + 10
    while not _redis_answers(port):
        if time.monotonic() > deadline or process.poll() is not None:
            stop()
            return None
        time.sleep(0.05)
    return port, stop


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def local_cache_store(args: ServingArgs, console: Console) -> tuple[ServingArgs, Callable[[], None] | None]:
    """Give a local run's response cache its Redis, so `tokenplane up` needs nothing typed.

    The URL already in the environment (`cache.redis_url_env`) wins; else a private, non-persistent
    `redis-server` is started on a free port for this run; without one installed the cache is turned off with a
    note (it is an optimisation: the endpoint serves the same answers without it).

    Returns:
        The args to serve, and how to stop the Redis this started (None when it started none).
    """
    variable = args.cache.redis_url_env
    if not args.cache.enabled or not variable or os.environ.get(variable):
        return args, None
    binary = shutil.which("redis-server")
    off = args.model_copy(update={"cache": args.cache.model_copy(update={"enabled": False})})
    if binary is None:
        console.print(
            f"[yellow]![/] Response cache off: ${variable} is unset and redis-server is not installed "
            "(`make redis`, or apt-get install redis-server)"
        )
        return off, None
    workdir = tempfile.mkdtemp(prefix="tp-redis-")
    started = _spawn_redis(binary, Path(workdir), persistent=False)
    if started is None:
        shutil.rmtree(workdir, ignore_errors=True)
        console.print("[yellow]![/] Response cache off: redis-server did not start on 127.0.0.1")
        return off, None
    port, stop_redis = started

    def stop() -> None:
        os.environ.pop(variable, None)  # the next local run starts its own
        stop_redis()
        shutil.rmtree(workdir, ignore_errors=True)

    os.environ[variable] = f"redis://127.0.0.1:{port}/0"  # Ray's processes inherit it at ray.init
    console.print(f"[green]✓[/] Redis for the response cache on 127.0.0.1:{port} (stops with the server)")
    return args, stop


API_KEY_ENV = "TOKENPLANE_API_KEY"


def local_api_keys(args: ServingArgs, console: Console) -> tuple[ServingArgs, str | None, Callable[[], None] | None]:
    """Give a local run of an `apiKey` deployment a key a client can send.

    The CR's keys live in a Kubernetes Secret that the cluster mounts at `api_keys_dir`; on this machine that
    directory does not exist, and every request would be refused. A directory that exists is used as it is.
    Otherwise the run's one key is `$TOKENPLANE_API_KEY`, or a random one printed here, in a private temporary
    directory removed when the server stops.

    Returns:
        The args to serve, the key made for this run (None when none was made), and how to remove its directory.
    """
    directory = args.auth.api_keys_dir
    if args.auth.mode != "api_key" or (directory and Path(directory).is_dir()):
        return args, None, None
    key = os.environ.get(API_KEY_ENV, "").strip()
    chosen = bool(key)
    key = key or f"tp-local-{secrets.token_urlsafe(18)}"
    workdir = tempfile.mkdtemp(prefix="tp-keys-")  # mode 0700: only this user reads the key
    (Path(workdir) / "local").write_text(key, encoding="utf-8")
    where = f"from ${API_KEY_ENV}" if chosen else f"generated for this run; set ${API_KEY_ENV} to choose it"
    console.print(f"[green]✓[/] API key ({where}): {escape(key)}", highlight=False, soft_wrap=True)
    served = args.model_copy(update={"auth": args.auth.model_copy(update={"api_keys_dir": workdir})})
    return served, key, lambda: shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: LocalServer, app_name: str, deadline: float, console: Console) -> None:
    # /-/ready answers 200 only once a replica generated a token, and it needs no credential.
    with console.status(f"Loading model [bold]{server.model_id}[/] (vLLM engine starting)"):
        while True:
            failure = _app_failure(app_name)
            if failure:
                raise LocalServeError(f"deployment failed: {failure}")
            if time.monotonic() > deadline:
                raise LocalServeError("model did not become ready in time (see Ray logs in /tmp/ray/session_latest)")
            try:
                ready = _http_json(f"{server.base_url}/-/ready", timeout=10)
            except (urllib.error.URLError, OSError, ValueError):
                ready = {}
            if ready.get("ready"):
                break
            time.sleep(0.25)  # part of the measured cold start: poll often, /-/ready is cheap
    console.print(f"[green]✓[/] Model {server.model_id} loaded and generating")


def _isolate_engine(console: Console) -> Callable[[], None]:
    """Place the processes now and print where; return what places the ones that come later (new replicas)."""
    placement = keep_off_engine_cpus()
    if placement is not None:
        console.print(
            f"[green]✓[/] Engine on CPU {_cpu_list(placement.engine_cpus)}, "
            f"Ray and the front end on CPU {_cpu_list(placement.other_cpus)}"
        )

    def again() -> None:
        nonlocal placement
        with contextlib.suppress(OSError):  # an optimisation: never what stops the server
            placement = keep_off_engine_cpus(previous=placement) or placement

    return again


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _deploy_batch_consumer(args: ServingArgs, console: Console) -> None:
    # After the model is ready, not beside it: its replica (a Ray worker importing the consumer, about 1.2 s
    # on 2 cores) is no part of serving completions, and the endpoint already accepts batches (they wait in
    # the Redis queue until the consumer runs them).
    from ray import serve

    from tokenplane_serving.batch.consumer import batch_app_name, build_consumer_app

    with console.status("Starting the Batch API's consumer"):
        serve.run(build_consumer_app(args), name=batch_app_name(args), route_prefix=None, blocking=False)
    console.print("[green]✓[/] Batch API consumer running")


def _curl_line(server: LocalServer) -> str:
    body = {"model": server.model_id, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
    auth = f"-H {shlex.quote('Authorization: Bearer ' + server.api_key)} " if server.api_key else ""
    return (
        f"curl {server.openai_base_url}/chat/completions -H 'Content-Type: application/json' {auth}"
        f"-d {shlex.quote(json.dumps(body))}"
    )


def _wait_for_signal(tick: Callable[[], None] | None = None, tick_s: float = 30.0) -> None:
    """Return on SIGINT or SIGTERM; meanwhile call `tick` every `tick_s`."""
    stop = threading.Event()

    def _handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        next_tick = time.monotonic() + tick_s
        while not stop.wait(0.5):
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + tick_s
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_local(
    args: ServingArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: int | None = None,
    block: bool = True,
    timeout_s: float = 600.0,
    verbose: bool = False,
    console: Console | None = None,
    metrics_port: int | None = None,
    isolate_engine: bool = False,
) -> LocalServer:
    """Run `args` on a local Ray and Ray Serve, exactly as `build_app` runs in the cluster.

    Prints progress (Ray up, model loading, ready), then the endpoint and a curl line. Ready means
    the app's `/-/ready` reports that a replica generated a token: the endpoint serves completions and
    accepts batches. The Batch API's consumer, which runs queued batches, starts after that and before this
    returns (`startup_s` does not include it).

    Args:
        args: What to serve; use `accelerator.kind = "cpu"` on a machine without GPUs.
        host: Interface the HTTP proxy binds.
        port: HTTP port.
        num_cpus: Logical CPUs given to Ray; default: enough for the replicas plus ingress,
            at least the machine's count (Ray CPUs are scheduling slots, not cores).
        block: Serve until SIGINT/SIGTERM, then shut down and return the stopped handle. With False,
            return the running handle at once; call `stop()` (or use it as a context manager).
        timeout_s: How long the model may take to become ready.
        verbose: Stream Ray and vLLM logs to this terminal (they always go to /tmp/ray/session_latest).
        console: Rich console for progress; a stderr console by default.
        metrics_port: Serve Prometheus metrics on this port (refreshed every 2 s); off if None.
        isolate_engine: Once ready, move this process and every process it started (Ray's, the replica's, Redis)
            off the CPUs a CPU engine computes on (`tokenplane_serving.cpu_placement`), and every 30 s while it
            serves (replicas that started since). For a process that does nothing but serve, like `tokenplane up`:
            the move applies to all of this process's threads.

    Returns:
        The `LocalServer` handle (`base_url`, `openai_base_url`, `model_id`, `startup_s`, `stop()`).

    Raises:
        LocalServeError: The model directory is missing, the port is taken, the deployment failed
            or did not get ready in time. The message is one line; Ray is shut down already.
    """
    console = console or Console(stderr=True)
    started = time.monotonic()
    place_processes: Callable[[], None] | None = None
    _preflight(args, host, port)
    if num_cpus is None:
        needed = 2 + (1 + args.accelerator.cpus_per_replica) * args.scaling.max_replicas
        num_cpus = max(os.cpu_count() or 1, int(needed + 0.999))

    _set_ray_environment(args)
    # Importing the app (Ray Serve LLM and vLLM, about 10 s of one core) overlaps Ray's start, which mostly
    # waits on its own processes: the cold start is shorter by about the shorter of the two. The import is the
    # longer one, so it starts first and imports Ray Serve (1.3 s) for this thread too.
    app_module = _import_in_background("tokenplane_serving.app")
    import ray

    if not verbose:
        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server = LocalServer(base_url=f"http://{host}:{port}", model_id=args.model.id)
    if args.batch.enabled:
        _start_batch_redis(args, server)  # before ray.init: Ray's workers inherit the Redis URL
    args, stop_redis = local_cache_store(args, console)
    if stop_redis is not None:
        server._cleanup.append(stop_redis)
    args, server.api_key, remove_keys = local_api_keys(args, console)
    if remove_keys is not None:
        server._cleanup.append(remove_keys)
    metrics: dict[str, Any] = {}
    if metrics_port is not None:
        server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        metrics = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 2000}}
    try:
        with console.status("Starting Ray"):
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.WARNING,
                **metrics,
            )
            from ray import serve

            serve.start(http_options={"host": host, "port": port})
        console.print(f"[green]✓[/] Ray up ({num_cpus} CPUs)")
        with console.status("Deploying the app"):
            build_app = app_module.result().build_app
            _check_direct_streaming()
            serve.run(build_app(args), name=args.app_name, route_prefix="/", blocking=False)
        _wait_ready(server, args.app_name, started + timeout_s, console)
        server.startup_s = time.monotonic() - started
        if isolate_engine:
            place_processes = _isolate_engine(console)
        if args.batch.enabled:
            _deploy_batch_consumer(args, console)
    except ValueError as err:  # build_app's checks; ValidationError is a ValueError too
        server.stop()
        raise LocalServeError(str(err).strip().splitlines()[0]) from None
    except BaseException:
        server.stop()
        raise
    console.print(f"[green]✓[/] Ready in {server.startup_s:.0f}s: [bold]{server.openai_base_url}[/]")
    console.print(f"  {_curl_line(server)}", soft_wrap=True, highlight=False, markup=False)
    if not block:
        return server
    console.print("Serving until Ctrl-C")
    try:
        _wait_for_signal(place_processes)
    finally:
        with console.status("Shutting down"):
            server.stop()
        console.print("[green]✓[/] Stopped")
    return server


def main(argv: list[str] | None = None) -> int:
    """`python -m tokenplane_serving.local ARGS.yaml [--port N]`: serve a ServingArgs YAML until Ctrl-C.

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        The exit code.
    """
    import argparse

    import yaml
    from pydantic import ValidationError

    parser = argparse.ArgumentParser(prog="python -m tokenplane_serving.local", description=main.__doc__)
    parser.add_argument("args_file", type=Path, help="YAML file holding a ServingArgs mapping")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--verbose", action="store_true", help="stream Ray and vLLM logs")
    ns = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        args = ServingArgs.model_validate(yaml.safe_load(ns.args_file.read_text()))
        serve_local(args, host=ns.host, port=ns.port, verbose=ns.verbose, console=console, isolate_engine=True)
    except (LocalServeError, OSError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False)
        return 1
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        console.print(f"[red]error:[/] invalid serving args: {where}: {first['msg']}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
