"""The gateway: the one HTTP entry point (Serve ingress). It routes each
OpenAI request by its `model` field to the engine replica that serves it and
streams the answer back unchanged; vLLM's server implements the protocol.

Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("sekisho.gateway")
app = FastAPI(title="Sekisho", docs_url=None, redoc_url=None, openapi_url=None)
MAX_BODY_BYTES = 4 * 1024 * 1024


def openai_error(status: int, message: str, type_: str, param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status)


class Gateway:
    """Serve ingress: model name -> engine deployment handle."""

    def __init__(self, routes: dict[str, object], model_info: dict[str, dict]):
        """Args:
            routes: served model name -> DeploymentHandle of the engine serving it.
            model_info: served model name -> metadata shown in /v1/models.
        """
        import httpx

        self.routes, self.model_info = routes, model_info
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5),
                                        limits=httpx.Limits(max_connections=512))

    async def _engine_url(self, model: str) -> str:
        return await self.routes[model].url.remote()

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "sekisho", **info}
            for name, info in self.model_info.items()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward(request, "/v1/completions")

    async def _forward(self, request: Request, path: str) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return openai_error(413, f"request body is {len(body)} bytes; the limit is "
                                f"{MAX_BODY_BYTES}", "invalid_request_error")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return openai_error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(payload, dict):
            return openai_error(400, "request body must be a JSON object", "invalid_request_error")
        model = payload.get("model")
        if not isinstance(model, str) or model not in self.routes:
            return openai_error(404, f"The model `{model}` does not exist.", "invalid_request_error",
                                "model", "model_not_found")
        url = await self._engine_url(model) + path
        upstream = self.client.build_request("POST", url, content=body,
                                             headers={"content-type": "application/json"})
        resp = await self.client.send(upstream, stream=True)
        headers = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "cache-control")}
        if not payload.get("stream"):
            content = await resp.aread()
            await resp.aclose()
            return Response(content, status_code=resp.status_code, headers=headers)

        async def relay():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code, headers=headers)
