"""The gateway: one OpenAI-compatible endpoint in front of every deployment (``llmdock serve``).

wire.py        error envelope and the GatewayError tree (pure)
routing.py     route table, replica choice by least outstanding requests (pure)
keys.py        key generation, hashing, constant-time checks, per-key rate limits (pure)
keystore.py    keys and usage in SQLite (migration 2)
sse.py         usage figures from JSON bodies and SSE streams (pure)
metrics.py     Prometheus text format, hand-rolled to stay cheap on the hot path
http.py        the HTTP/1.1 server (httptools): keep-alive, limits, streaming, cancellation
upstream.py    the pooled HTTP/1.1 client to engines: one chunk in, one chunk out
proxy.py       the /v1/* pass-through: auth, routing, retry, usage, metrics
supervisor.py  discovery, health probes, restarts with backoff, on-demand start, idle stop
admin.py       admin REST API and its OpenAPI schema
app.py         wires it all and runs the server
"""
