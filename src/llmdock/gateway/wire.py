"""OpenAI error envelope and the errors the gateway answers with. Pure.

GatewayError                    status, type, code; rendered as {"error": {...}}
├── 400 BadRequest              malformed HTTP, body not JSON (or too deep), no string ``model``
├── 401 Unauthorized            key missing, unknown or revoked
├── 403 Forbidden               key may not use this model, or is not an admin key; admin from a web page
├── 404 ModelNotFound           no deployment serves that model name
├── 404 NotFoundPath            no such endpoint (or one the gateway does not forward)
├── 405 MethodNotAllowed        the endpoint exists, not with this method
├── 408 RequestTimeout          headers or body not complete in time
├── 413 BodyTooLarge            request body over the limit
├── 415 UnsupportedMediaType    a state-changing admin call that is not application/json
├── 429 RateLimited             key over its requests per minute
├── 429 TooManyConnections      one client address holds too many connections
├── 431 HeadersTooLarge         request line and headers over the limit
├── 501 NotImplementedCoding    a transfer coding other than chunked
├── 502 UpstreamFailed          the replica answered garbage or broke the connection
├── 503 NoReplica               nothing ready serves the model (or the on-demand hold timed out)
├── 503 Unavailable             the gateway is at its connection limit, or shutting down
├── 504 UpstreamTimeout         the replica did not answer in time
└── 505 VersionNotSupported     not HTTP/1.0 or HTTP/1.1
"""

from __future__ import annotations

import json
from http import HTTPStatus


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

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase


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


class AdminOnly(Forbidden):
    code = "admin_only"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFoundPath(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class UnsupportedMediaType(GatewayError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class TooManyConnections(GatewayError):
    status, type, code = 429, "rate_limit_error", "too_many_connections"


class NotImplementedCoding(GatewayError):
    status, type, code = 501, "invalid_request_error", "unsupported_transfer_coding"


class Unavailable(GatewayError):
    status, type, code = 503, "server_error", "gateway_unavailable"


class VersionNotSupported(GatewayError):
    status, type, code = 505, "invalid_request_error", "http_version_not_supported"


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
