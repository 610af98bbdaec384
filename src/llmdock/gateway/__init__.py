"""The gateway: one OpenAI-compatible endpoint in front of every deployment (``llmdock serve``).

wire.py        error envelope and the GatewayError tree (pure)
routing.py     route table, replica choice by least outstanding requests (pure)
keys.py        key generation, hashing, constant-time checks, model allow-lists, scopes (pure)
quotas.py      per-key quotas: tokens per UTC day/month, rpm, tpm, requests at once (pure)
congestion.py  a deployment's concurrency bound and the bounded queue in front of it
keystore.py    keys and usage in SQLite (migration 2)
sse.py         usage figures from JSON bodies and SSE streams (pure)
metrics.py     Prometheus text format, hand-rolled to stay cheap on the hot path
limits.py      every limit as one policy object with its defaults (the table of them), JSON shape check
server.py      uvicorn + h11 with the limits on top: caps, deadlines, refusals as envelopes
asgi.py        Request / Response / Stream over ASGI; strict framing; a client that leaves cancels
engine.py      the client to engines (aiohttp): one chunk in, one chunk out; Unreachable/Silent/Broken
forwarding.py  which routes go to an engine, path checks, query strings scrubbed of keys (pure)
proxy.py       the /v1/* pass-through: auth, routing, retry, usage, metrics
supervisor.py  discovery, health probes, restarts with backoff, on-demand start, idle stop
admin.py       admin REST API (admin key, or a local caller), its OpenAPI schema
app.py         wires it all and runs the server
"""
