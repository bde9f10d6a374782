"""`python -m server.distributed`: run Cameo on Ray Serve, on a new local cluster or an existing
one (`--ray-address auto`, or RAY_ADDRESS), with HTTP on CAMEO_HOST:CAMEO_PORT.

Every `cameo-server` setting applies (environment or flags), plus the `CAMEO_RAY_*` ones, e.g.

    python -m server.distributed --ray-min-replicas 1 --ray-max-replicas 4 --adapter-slots 8

Ctrl-C or SIGTERM deletes the application (and stops the cluster when this command started it).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType

import ray
from ray import serve

from server.distributed.app import application
from server.distributed.settings import ClusterSettings
from server.logs import configure

log = logging.getLogger("server.distributed")


def main(argv: list[str] | None = None) -> None:
    settings = ClusterSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)  # type: ignore[call-arg]
    configure(settings.log_level, settings.json_logs)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    ray.init(address=settings.ray_address, log_to_driver=True)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs its own handler
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(application(settings), name=settings.ray_app_name, route_prefix="/")
        log.info("Cameo on Ray Serve: http://%s:%d (application %r)", settings.host,
                 settings.port, settings.ray_app_name)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: deleting application %r", settings.ray_app_name)
        serve.delete(settings.ray_app_name)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
