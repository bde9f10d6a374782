"""The Serve application: `CameoIngress` in front of `CameoEngine`, sized from settings.

    serve run server.distributed.app:build_app                      # settings from CAMEO_*
    serve run server.distributed.app:build_app ray_max_replicas=4   # or as key=value arguments

`application(settings)` is the same for Python callers (tests, `python -m server.distributed`).
"""

from __future__ import annotations

from typing import Any

import ray
from ray import serve
from ray.serve import Application

from server.distributed.engine import CameoEngine
from server.distributed.ingress import CameoIngress
from server.distributed.settings import ClusterSettings

ENGINE_DEPLOYMENT = "CameoEngine"
INGRESS_DEPLOYMENT = "CameoIngress"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Entry point for `serve run` / `serve build`: environment, then the given arguments."""
    return application(ClusterSettings(**(args or {})))


def application(settings: ClusterSettings) -> Application:
    payload = settings.replica_payload()
    engine_actor: dict[str, Any] = {"num_cpus": settings.ray_engine_num_cpus,
                                    "num_gpus": engine_gpus(settings)}
    if settings.ray_engine_memory_gb is not None:
        engine_actor["memory"] = int(settings.ray_engine_memory_gb * 1024**3)
    scaling: dict[str, Any] = (
        {"num_replicas": settings.ray_engine_replicas} if settings.ray_engine_replicas
        else {"autoscaling_config": settings.autoscaling_config()})
    engine = serve.deployment(
        name=ENGINE_DEPLOYMENT,
        ray_actor_options=engine_actor,
        max_ongoing_requests=settings.max_ongoing_requests,
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=settings.drain_timeout,
        **scaling,
    )(CameoEngine)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=settings.ray_ingress_replicas,
        ray_actor_options={"num_cpus": settings.ray_ingress_num_cpus},
        max_ongoing_requests=settings.ray_ingress_max_ongoing_requests,
        graceful_shutdown_timeout_s=settings.drain_timeout,
    )(CameoIngress)
    allow_zero = settings.ray_engine_replicas is None and settings.ray_min_replicas == 0
    return ingress.bind(payload, engine.bind(payload), ENGINE_DEPLOYMENT, settings.ray_retries,
                        allow_zero)


def engine_gpus(settings: ClusterSettings) -> float:
    """GPUs per engine replica: as set, else 1 for a CUDA device (or `auto` on a cluster that
    has GPUs), else 0."""
    if settings.ray_engine_num_gpus is not None:
        return settings.ray_engine_num_gpus
    if settings.device.startswith("cuda"):
        return 1.0
    if settings.device == "auto" and ray.is_initialized():
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return 0.0
