"""How the figures reach OpenTelemetry: the instrumentor that wires the
middleware into FastAPI apps (`instrumentor`), the middleware (`middleware`)
and the reporter it hands each request to (`reporter`), what one
instrumentation holds (`instrumentation`), the contract's names
(`attributes`), span attributes (`span`), the request's tenant (`tenant`),
response headers (`headers`),
metrics (`metrics`, fed by `metric_queue`) and the resource detector
(`resource`)."""
