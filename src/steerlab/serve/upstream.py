"""``steerlab serve --engine vllm``: steerlab's HTTP front on vLLM's engine.

vLLM's own OpenAI server (with the steerlab plugin, :mod:`steerlab.vllm`) runs on a loopback port
and does the generating and the steering; this app stands in front of it and gives clients what
``steerlab serve`` gives them: the playground page, ``GET /v1/vectors``, the API key or loopback-
name check, the body-size limit, a bound on requests in flight (HTTP 429 beyond it), and steerlab's
limits on ``max_tokens`` and ``n`` (HTTP 400 with steerlab's error bodies). Everything else, the
``steering`` field included, is checked by vLLM and the plugin, whose 400s are passed on as they
are (OpenAI-style ``{"error": {...}}`` bodies). Responses stream through as vLLM writes them; a
client that disconnects closes the upstream request, and vLLM aborts it.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .app import TOKENIZER_PATHS, access_guard, add_error_handlers, playground, vector_listing
from .config import ServeConfig
from .protocol import APIError
from .validate import control_token_strings, refuse_control_tokens

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
# What is passed on to vLLM, and no other path: its admin and debug routes stay unreachable.
FORWARDED_POST = GENERATION_PATHS | {"/tokenize", "/detokenize"}
FORWARDED_GET = frozenset({"/v1/models", "/tokenizer_info"})


def _message_texts(messages: Any):
    """Every text in OpenAI chat messages (content as a string or as a list of parts)."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            yield from (part["text"] for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str))


def create_upstream_app(upstream: str, model: str, vectors: dict, num_layers: int, *, api_key: str | None = None,
                        config: ServeConfig | None = None, tokenizer: Any = None, engine: str = "vllm") -> FastAPI:
    """An app that serves steerlab's front for the OpenAI server at ``upstream`` (serving ``model``,
    with the steerlab plugin and the same ``vectors``). With the model's ``tokenizer``, chat text that
    spells its control tokens is refused as on ``steerlab serve`` (unless ``config.allow_control_tokens``)."""
    config = config or ServeConfig()
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(None, connect=10))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(title="steerlab", version="1", lifespan=lifespan)
    add_error_handlers(app, config)
    app.middleware("http")(access_guard(api_key))
    state = {"in_flight": 0}
    control = control_token_strings(tokenizer) if tokenizer is not None and not config.allow_control_tokens else []

    def body_of(raw: bytes, path: str) -> bytes:
        """The request body with steerlab's limits applied (the model named if the client left it out,
        as the playground does)."""
        try:
            body = json.loads(raw)
        except ValueError:
            raise APIError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        if path in GENERATION_PATHS:
            for key in ("max_tokens", "max_completion_tokens"):
                value = body.get(key)
                if value is not None and (type(value) is not int or not 0 <= value <= config.max_tokens):
                    raise APIError(400, f"{key} must be between 1 and {config.max_tokens} (0 with echo).", param=key)
            if not any(body.get(k) is not None for k in ("max_tokens", "max_completion_tokens")):
                body["max_tokens"] = min(config.default_tokens, config.max_tokens)
            if path == "/v1/chat/completions" and control:
                refuse_control_tokens(control, list(_message_texts(body.get("messages"))), "messages", model)
            n = body.get("n", 1)
            if type(n) is not int or not 1 <= n <= config.max_choices:
                raise APIError(400, f"n must be between 1 and {config.max_choices}.", param="n")
        body.setdefault("model", model)
        return json.dumps(body).encode()

    async def forward(request: Request, content: bytes | None = None) -> Response:
        if state["in_flight"] >= config.max_queue:
            raise APIError(429, f"{state['in_flight']} requests are in flight (the limit is {config.max_queue}); "
                                "retry shortly.", type="rate_limit_error", code="queue_full")
        state["in_flight"] += 1
        try:
            upstream_request = client.build_request(
                request.method, request.url.path, content=content,
                headers={"content-type": "application/json"} if content is not None else None)
            answer = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as err:
            state["in_flight"] -= 1
            raise APIError(503, f"The {engine} engine did not answer ({type(err).__name__}); it may still be "
                                "starting or have stopped.", type="server_error", code="engine_unavailable") from None

        async def relay():
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:  # also when the client has gone: closing the upstream request makes vLLM abort it
                await answer.aclose()
                state["in_flight"] -= 1

        headers = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(relay(), status_code=answer.status_code, headers=headers)

    async def post(request: Request) -> Response:
        return await forward(request, body_of(await request.body(), request.url.path))

    async def get(request: Request) -> Response:
        return await forward(request)

    for path in sorted(FORWARDED_POST):
        app.post(path)(post)
    for path in sorted(FORWARDED_GET):
        app.get(path)(get)

    @app.get("/v1/vectors")
    async def list_vectors() -> dict[str, Any]:
        return vector_listing(vectors, num_layers)

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            ok = (await client.get("/health")).status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse({"status": "ok" if ok else "engine_unavailable", "model": model, "engine": engine,
                             "in_flight": state["in_flight"]}, status_code=200 if ok else 503)

    app.get("/", response_class=HTMLResponse)(playground)

    assert TOKENIZER_PATHS <= FORWARDED_POST | FORWARDED_GET  # the guard's key check covers every path forwarded
    return app
