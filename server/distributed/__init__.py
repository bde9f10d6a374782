"""Cameo on a Ray cluster (Ray Serve): one ingress deployment, one engine deployment.

- `ingress.CameoIngress`: the same FastAPI app as `cameo-server` (`server.api.app.create_app`),
  over a `Cameo` composition whose engine service is `service.RayEngineService`: the tokenizer
  and the registry (no model weights) here, generation forwarded to the engine deployment
  through a deployment handle, multiplexed by persona, with a retry when a replica fails.
- `engine.CameoEngine`: each replica runs the Cameo engine on its own copy of the base model;
  persona adapters are Serve multiplexed models, so the router sends a persona's requests to a
  replica that already holds its adapter.
- `app.build_app`: the application for `serve run server.distributed.app:build_app`;
  `python -m server.distributed` starts (or joins) a cluster and runs it.

Only `wire` and `settings` can be imported without Ray installed.
"""
