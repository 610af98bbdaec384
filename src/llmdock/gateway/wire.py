"""OpenAI error envelope and the errors the gateway answers with. Pure.

GatewayError                 status, type, code; rendered as {"error": {...}}
├── 400 BadRequest           body is not JSON, or has no string ``model``
├── 401 Unauthorized         key missing, unknown or revoked
├── 403 Forbidden            key may not use this model, or is not an admin key
├── 404 ModelNotFound        no deployment serves that model name
├── 413 BodyTooLarge         request body over the limit
├── 431 HeadersTooLarge      request line and headers over the limit
├── 429 RateLimited          key over its requests per minute
├── 502 UpstreamFailed       the replica answered garbage or broke the connection
├── 503 NoReplica            nothing ready serves the model (or the on-demand hold timed out)
└── 504 UpstreamTimeout      the replica did not answer in time
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.code, self.param)


def envelope(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as bytes, the shape OpenAI clients parse."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    """One SSE event carrying the envelope, sent when a stream cannot go on."""
    return b"data: " + envelope(message, "server_error", code) + b"\n\n"


class BadRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFoundPath(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class HeadersTooLarge(GatewayError):
    status, type, code = 431, "invalid_request_error", "headers_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class UpstreamFailed(GatewayError):
    status, type, code = 502, "server_error", "upstream_error"


class NoReplica(GatewayError):
    status, type, code = 503, "server_error", "model_unavailable"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "server_error", "upstream_timeout"
