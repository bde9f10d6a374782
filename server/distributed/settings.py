"""Settings of a Ray Serve deployment: every Cameo setting plus the `CAMEO_RAY_*` ones.

`ClusterSettings` extends `server.settings.Settings`, so the same environment variables and
flags apply (`CAMEO_ADAPTER_SLOTS` / `--adapter-slots`, ...), and adds the cluster's own as
`CAMEO_RAY_<NAME>` / `--ray-<name>`. The Cameo part (`cameo_settings()`) is what every replica
receives, serialized: replicas do not read their own environment for it, so one driver decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from server.settings import Settings


class ClusterSettings(Settings):
    model_config = SettingsConfigDict(**{**Settings.model_config,
                                         "cli_prog_name": "python -m server.distributed"})

    ray_address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`, ...); unset: RAY_ADDRESS, else a new
    local cluster."""
    ray_app_name: str = "cameo"
    """Serve application name."""
    ray_engine_replicas: int | None = Field(default=None, ge=1)
    """A fixed number of engine replicas; when set, autoscaling is off."""
    ray_min_replicas: int = Field(default=1, ge=0)
    """Autoscaling: fewest engine replicas (0 allows scaling to zero)."""
    ray_max_replicas: int = Field(default=1, ge=1)
    """Autoscaling: most engine replicas."""
    ray_initial_replicas: int | None = Field(default=None, ge=0)
    """Autoscaling: engine replicas at start (default: the minimum)."""
    ray_target_ongoing_requests: float | None = Field(default=None, gt=0)
    """Autoscaling: ongoing requests per engine replica to aim for (default: max_batch_size)."""
    ray_max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests one engine replica accepts at once, running or queued in its engine (default:
    twice max_batch_size); more wait in the router."""
    ray_upscale_delay_s: float = Field(default=30.0, ge=0)
    """Autoscaling: how long the load must stay high before adding replicas."""
    ray_downscale_delay_s: float = Field(default=600.0, ge=0)
    """Autoscaling: how long the load must stay low before removing replicas."""
    ray_engine_num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per engine replica (Ray also sets OMP_NUM_THREADS from it)."""
    ray_engine_num_gpus: float | None = Field(default=None, ge=0)
    """GPUs per engine replica; default 1 when the device is cuda (or auto on a cluster with
    GPUs), else 0."""
    ray_engine_memory_gb: float | None = Field(default=None, gt=0)
    """Host memory reserved per engine replica, for Ray's scheduler (GB)."""
    ray_ingress_replicas: int = Field(default=1, ge=1)
    """Ingress (HTTP) replicas. Each opens the registry and reconciles it at start: keep it fixed."""
    ray_ingress_num_cpus: float = Field(default=0.5, ge=0)
    """CPUs reserved per ingress replica."""
    ray_ingress_max_ongoing_requests: int = Field(default=1000, ge=1)
    """HTTP requests one ingress replica handles at once (streams included)."""
    ray_retries: int = Field(default=3, ge=0)
    """Times the ingress re-sends a request whose engine replica failed (died, unreachable)."""

    @model_validator(mode="after")
    def _check_replicas(self) -> ClusterSettings:
        if self.ray_max_replicas < self.ray_min_replicas:
            raise ValueError("ray_max_replicas must be at least ray_min_replicas")
        initial = self.ray_initial_replicas
        if initial is not None and not self.ray_min_replicas <= initial <= self.ray_max_replicas:
            raise ValueError("ray_initial_replicas must lie between the minimum and the maximum")
        return self

    def cameo_settings(self) -> Settings:
        """The plain Cameo settings every replica runs with."""
        return Settings.model_validate(self.model_dump(include=set(Settings.model_fields)))

    def replica_payload(self) -> dict[str, Any]:
        """`cameo_settings()` as JSON-safe values (what deployments are bound with). Relative
        folders are made absolute here: replicas do not run in the driver's directory."""
        settings = self.cameo_settings()
        folders = {name: getattr(settings, name) for name in ("registry_dir", "seed_dir",
                                                              "cache_dir")}
        absolute = {k: Path(v).expanduser().absolute() for k, v in folders.items() if v}
        return settings.model_copy(update=absolute).model_dump(mode="json")

    @property
    def target_ongoing_requests(self) -> float:
        return self.ray_target_ongoing_requests or float(self.max_batch_size)

    @property
    def max_ongoing_requests(self) -> int:
        return self.ray_max_ongoing_requests or 2 * self.max_batch_size

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Serve's autoscaling_config for the engine deployment; None with a fixed count."""
        if self.ray_engine_replicas is not None:
            return None
        config: dict[str, Any] = {
            "min_replicas": self.ray_min_replicas,
            "max_replicas": self.ray_max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.ray_upscale_delay_s,
            "downscale_delay_s": self.ray_downscale_delay_s,
        }
        if self.ray_initial_replicas is not None:
            config["initial_replicas"] = self.ray_initial_replicas
        return config


def settings_from_payload(payload: dict[str, Any]) -> Settings:
    """Rebuild the settings a replica was bound with (validation only, no environment)."""
    return Settings.model_validate(payload)
