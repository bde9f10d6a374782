"""The engine service: the one seam between HTTP and whatever runs the model.

`protocol.EngineService` (generate, stats, merge, unmerge, health), its frozen `stats.ServiceStats`
snapshot, `local.LocalEngineService` (the engine in this process) and `base.BaseInfo` (the base
model without its weights, what the HTTP side reads). The Ray implementation lives in
`server.distributed.service`.
"""
