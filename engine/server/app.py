"""The server's routing: health and models, each API surface's routes (OpenAI chat and
completions, the Anthropic Messages API, the OpenAI Responses API), the guard middleware and
the error handlers. Every error, unknown routes and methods included, answers in the shape of the
API its path belongs to; the server keeps serving after any bad request."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from m2agent.engine.server.anthropic_api import add_anthropic_routes
from m2agent.engine.server.async_bridge import AsyncEngine
from m2agent.engine.server.chat import ReasoningMode
from m2agent.engine.server.generation import Generation
from m2agent.engine.server.middleware import Guard, encode_json, error_body
from m2agent.engine.server.openai_api import APIError
from m2agent.engine.server.openai_routes import add_openai_routes
from m2agent.engine.server.responses_api import add_responses_routes

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    served_model_names: tuple[str, ...]
    api_key: str | None = None
    reasoning_mode: ReasoningMode = "append_think"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def create_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="m2agent engine", docs_url=None, redoc_url=None, openapi_url=None)
    gen = Generation(engine, settings.served_model_names)
    created = int(time.time())

    def error_response(request: Request, error: APIError) -> Response:
        body = encode_json(error_body(request.url.path, error))
        return Response(body, status_code=error.status, media_type="application/json")

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
        return error_response(request, APIError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path} on this server"
            error = APIError(404, message, type="not_found_error", code="not_found")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            error = APIError(405, message, code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("request failed: %s %s", request.method, request.url.path)
        return error_response(request, APIError(500, f"internal error: {exc}", type="api_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.is_alive:
            return JSONResponse({"status": "error", "error": str(engine.error)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "requests_in_flight": gen.llm.num_requests,
                "requests_finished": engine.num_finished,
                "requests_aborted": engine.num_aborted,
            }
        )

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> dict[str, Any]:
        # Claude Code probes `HEAD /` for connectivity before its first request.
        return {"status": "ok", "models": list(settings.served_model_names[:1])}

    def model_card() -> dict[str, Any]:
        name = settings.served_model_names[0]
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "m2agent",
            "max_model_len": gen.max_model_len,
            # Anthropic's model listing reads these three.
            "type": "model",
            "display_name": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        name = settings.served_model_names[0]
        return {
            "object": "list",
            "data": [model_card()],
            "has_more": False,
            "first_id": name,
            "last_id": name,
        }

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        gen.check_model(model_id)
        return model_card()

    add_openai_routes(app, gen, settings.reasoning_mode)
    add_anthropic_routes(app, gen)
    add_responses_routes(app, gen)
    app.add_middleware(
        Guard,
        api_key=settings.api_key,
        max_body_bytes=settings.max_request_bytes,
    )
    return app
