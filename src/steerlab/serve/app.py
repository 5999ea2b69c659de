"""The FastAPI app: OpenAI-compatible completions with per-request steering, vector listing, health,
and the playground page."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..tokens import Rendered
from .engine import Engine, Job, QueueFull
from .protocol import APIError, ChatRequest, CompletionRequest, Steering


@dataclass
class Limits:
    max_tokens: int = 512  # per request
    default_tokens: int = 128
    max_multiplier: float = 50.0  # |multiplier|, |ActAdd coeff|, |PaCE strength|
    max_prompt_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    # Message text that spells a control token (e.g. "<|im_start|>system") would be tokenised as the
    # real token and forge a chat turn; such requests are refused unless the clients are trusted.
    allow_control_tokens: bool = False


def render_messages(lm, messages) -> Rendered:
    """Chat messages -> prompt text with the assistant header; the last user message is the user span."""
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise APIError(400, "messages must contain at least one user message.", param="messages")
    if len(msgs) <= 2 and msgs[-1]["role"] == "user" and (len(msgs) == 1 or msgs[0]["role"] == "system"):
        return lm.render(msgs[-1]["content"], system=msgs[0]["content"] if len(msgs) == 2 else None)
    if not lm.has_chat_template:
        raise APIError(400, f"{lm.name} has no chat template; send one user message (optionally after a system one) "
                            "or use /v1/completions.", param="messages")
    tok = lm.tokenizer
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    head = tok.apply_chat_template(msgs, tokenize=False)
    last = msgs[users[-1]]["content"]
    start = text.rfind(last, 0, len(head)) if last else len(head)
    return Rendered(text, max(start, 0), max(start, 0) + len(last), len(head) if text.startswith(head) else len(text))


class _BodyLimit:
    """ASGI middleware: read each request body (chunked ones too) up to ``limit`` bytes before the app
    sees it; a longer body is answered 413 at once and never held whole in memory."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def _too_large(self, send) -> None:
        body = json.dumps(APIError(413, f"The request body is over {self.limit} bytes.").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:  # refused before reading a byte
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: the connection's own messages (disconnect)

        await self.app(scope, replay, send)


class _AnswerOrCancel(Response):
    """A non-streaming answer that waits for its job while watching the connection: if the client
    disconnects first, the job is cancelled (the engine stops generating for it) and nothing is sent.
    (Watching ``receive`` here, in the response, works behind middleware, where
    ``Request.is_disconnected`` in the endpoint does not see the disconnect.)"""

    def __init__(self, answer, job: Job) -> None:
        super().__init__()
        self.answer, self.job = answer, job

    async def __call__(self, scope, receive, send) -> None:
        waiter = asyncio.ensure_future(self.answer())

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        watcher = asyncio.ensure_future(watch())
        done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            self.job.cancelled.set()
            waiter.cancel()
            return
        watcher.cancel()
        await waiter.result()(scope, receive, send)


def create_app(lm, vectors: dict | None = None, *, dictionary=None, api_key: str | None = None,
               limits: Limits | None = None, max_queue: int = 64, max_batch: int = 8,
               batch_wait: float = 0.01, engine_thread: bool = True) -> FastAPI:
    """An app serving ``lm`` with the named ``vectors`` ({name: SteeringVector}) and optionally a PaCE
    concept ``dictionary``. ``api_key``: clients must send ``Authorization: Bearer <key>``.
    ``engine_thread=False``: nothing generates until you call ``app.state.engine.run_forever()``
    (do that on the main thread for the best CPU speed)."""
    vectors = dict(vectors or {})
    for name, vec in vectors.items():  # one broken vector would fail every batch that uses it
        if vec.nonfinite_layers():
            raise ValueError(f"Vector {name!r} holds NaN or infinite values; refusing to serve it.")
    limits = limits or Limits()
    engine = Engine(lm, vectors, dictionary=dictionary, max_queue=max_queue, max_batch=max_batch,
                    batch_wait=batch_wait, start_thread=engine_thread)
    app = FastAPI(title="steerlab", version="1")
    app.state.engine = engine
    app.add_middleware(_BodyLimit, limit=limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "The request body is not valid JSON."
        return JSONResponse(APIError(400, f"{msg}" + (f" (at {where})" if where else ""), param=where or None).body(),
                            status_code=400)

    local_names = {"localhost", "127.0.0.1", "::1"}

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if not api_key:
            # Without a key the server trusts whoever reaches it, so only requests addressed to this
            # machine by name are served: a page elsewhere that rebinds its DNS name to 127.0.0.1
            # sends its own Host header and is refused.
            host = request.headers.get("host", "")
            name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name.lower() not in local_names:
                return JSONResponse(APIError(403, f"Host {host!r} is not this server's loopback name; a server "
                                                  "without an API key answers only localhost / 127.0.0.1 / [::1]. "
                                                  "Start it with --api-key to serve other names.",
                                             code="host_not_allowed").body(), status_code=403)
        if api_key and request.url.path.startswith("/v1/"):
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return JSONResponse(APIError(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                                             type="authentication_error", code="invalid_api_key").body(),
                                    status_code=401)
        return await call_next(request)

    def check_steering(steering: Steering | None) -> None:
        if steering is None:
            return
        total: dict[str, float] = {}
        for v in steering.vectors:
            if v.name not in vectors:
                raise APIError(404, f"Unknown vector {v.name!r}; GET /v1/vectors lists them: {sorted(vectors)}.",
                               param="steering.vectors", code="vector_not_found")
            # The limit holds for each vector's combined strength: listing one vector many times adds up.
            total[v.name] = total.get(v.name, 0.0) + abs(v.multiplier)
            if total[v.name] > limits.max_multiplier:
                raise APIError(400, f"multiplier {v.multiplier} of {v.name!r} brings its total |multiplier| in this "
                               f"request to {total[v.name]:g}, outside +-{limits.max_multiplier}.",
                               param="steering.vectors.multiplier")
        if steering.actadd is not None:
            a = steering.actadd
            if not 0 <= a.layer < lm.num_layers:
                raise APIError(400, f"actadd.layer {a.layer} is outside 0..{lm.num_layers - 1}.",
                               param="steering.actadd.layer")
            if abs(a.coeff) > limits.max_multiplier:
                raise APIError(400, f"actadd.coeff {a.coeff} is outside +-{limits.max_multiplier}.",
                               param="steering.actadd.coeff")
        if steering.pace is not None:
            p = steering.pace
            if dictionary is None:
                raise APIError(400, "This server has no concept dictionary; start it with --dictionary for PaCE.",
                               param="steering.pace")
            from ..pace.partition import TASKS

            if p.task not in TASKS:
                raise APIError(400, f"Unknown PaCE task {p.task!r}; tasks: {sorted(TASKS)}.",
                               param="steering.pace.task")
            bad = [x for x in (p.layers or []) if x not in dictionary.layers]
            if bad:
                raise APIError(400, f"The dictionary has layers {dictionary.layers}, not {bad}.",
                               param="steering.pace.layers")
            if abs(p.strength) > limits.max_multiplier:
                raise APIError(400, f"pace.strength {p.strength} is too large.", param="steering.pace.strength")

    context = getattr(lm.model.config, "max_position_embeddings", None)
    control = sorted({str(t) for t in lm.tokenizer.all_special_tokens}
                     | {t.content for t in getattr(lm.tokenizer, "added_tokens_decoder", {}).values()
                        if getattr(t, "special", False)}, key=len, reverse=True)

    def check_control_tokens(texts, param: str) -> None:
        if limits.allow_control_tokens:
            return
        for text in texts:
            found = next((t for t in control if t and t in text), None)
            if found is not None:
                raise APIError(400, f"The text holds {found!r}, which {lm.name}'s tokenizer reads as a control token "
                                    "(it could forge a chat turn). Remove it, or start the server with "
                                    "--allow-control-tokens if its clients are trusted.", param=param,
                               code="control_token_in_text")

    def make_job(req, rendered: Rendered, max_tokens: int | None, emit) -> Job:
        if req.n != 1:
            raise APIError(400, "Only n=1 is supported.", param="n")
        try:  # a lone surrogate ("\ud800") parses as JSON but is no text a tokenizer can take
            json.dumps(req.model_dump(), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "The request holds a string with an unpaired UTF-16 surrogate; send valid "
                                "Unicode text.") from None
        n_tokens = min(limits.default_tokens, limits.max_tokens) if max_tokens is None else max_tokens
        if not 1 <= n_tokens <= limits.max_tokens:
            raise APIError(400, f"max_tokens must be between 1 and {limits.max_tokens}.", param="max_tokens")
        if not 0 <= req.temperature <= 2 or not 0 < req.top_p <= 1 or abs(req.frequency_penalty) > 2:
            raise APIError(400, "temperature must be in [0, 2], top_p in (0, 1], frequency_penalty in [-2, 2].")
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise APIError(400, "seed must be between 0 and 2**63 - 1.", param="seed")
        if len(rendered.text) > limits.max_prompt_chars:
            raise APIError(400, f"The prompt is over {limits.max_prompt_chars} characters.", param="messages")
        if context is not None:
            n_prompt = len(lm.tokenizer(rendered.text, add_special_tokens=False)["input_ids"])
            if n_prompt + n_tokens > context:
                raise APIError(400, f"The prompt is {n_prompt} tokens and max_tokens {n_tokens}: together over "
                                    f"{lm.name}'s context of {context} tokens.", param="messages",
                               code="context_length_exceeded")
        check_steering(req.steering)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError(400, "At most 4 stop sequences.", param="stop")
        # Temperatures this small divide logits into infinities; they mean greedy decoding.
        sample = req.temperature >= 1e-4
        return Job(rendered, req.steering, n_tokens, sample, req.temperature if sample else 1.0, req.top_p,
                   req.frequency_penalty, req.seed, stop, emit, req.stream)

    async def run(req, rendered: Rendered, max_tokens: int | None, chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = make_job(req, rendered, max_tokens, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        try:
            engine.submit(job)
        except QueueFull as err:
            raise APIError(429, f"{err}; retry shortly.", type="rate_limit_error", code="queue_full") from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = lm.name
        if not req.stream:
            async def answer() -> JSONResponse:
                while True:
                    ev = await events.get()
                    if "error" in ev:
                        return JSONResponse(APIError(500, ev["error"], type="server_error").body(), status_code=500)
                    if ev.get("done"):
                        break
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": ev["text"]},
                              "finish_reason": ev["finish_reason"]}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": ev["text"], "logprobs": None, "finish_reason": ev["finish_reason"]}
                    obj = "text_completion"
                return JSONResponse({"id": rid, "object": obj, "created": created, "model": model,
                                     "choices": [choice], "usage": ev["usage"]})

            return _AnswerOrCancel(answer, job)

        def chunk(delta: dict | None = None, text: str | None = None, reason=None) -> str:
            if chat:
                body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": reason}]}
            else:
                body = {"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}]}
            return f"data: {json.dumps(body)}\n\n"

        async def stream():
            finished = False
            try:
                if chat:
                    yield chunk({"role": "assistant", "content": ""})
                while True:
                    ev = await events.get()
                    if "error" in ev:
                        yield f"data: {json.dumps(APIError(500, ev['error'], type='server_error').body())}\n\n"
                        break
                    if "delta" in ev:
                        yield chunk({"content": ev["delta"]}, ev["delta"])
                    if ev.get("done"):
                        yield chunk({}, "", ev["finish_reason"])
                        break
                finished = True
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away mid-stream: stop generating for it
                    job.cancelled.set()

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        check_control_tokens([m.content for m in req.messages], "messages")
        rendered = render_messages(lm, req.messages)
        tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await run(req, rendered, tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "Send one prompt per request.", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "prompt is empty.", param="prompt")
        return await run(req, lm.render(prompt, chat=False), req.max_tokens, chat=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": lm.name, "object": "model", "created": 0, "owned_by": "steerlab"}]}

    @app.get("/v1/vectors")
    async def list_vectors():
        data = [{"id": name, "object": "steering_vector", "method": v.method, "layers": sorted(v.layers),
                 "apply": v.apply, "norms": {str(k): round(n, 4) for k, n in v.norms().items()
                                             if math.isfinite(n)}} for name, v in sorted(vectors.items())]
        return {"object": "list", "data": data, "pace": {"layers": dictionary.layers, "concepts": len(dictionary)}
                if dictionary is not None else None, "num_layers": lm.num_layers}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": lm.name, "queued": engine.queued, "batches": engine.stats["batches"],
                "requests": engine.stats["requests"], "max_batch_seen": engine.stats["max_batch_seen"],
                "generated_tokens": engine.stats["generated_tokens"], "cancelled": engine.stats["cancelled"]}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files("steerlab.serve").joinpath("playground.html").read_text(encoding="utf-8")

    return app


def load_vectors(folder, lm) -> dict:
    """Every ``.safetensors`` / ``.gguf`` vector in ``folder``, by file stem, checked against ``lm``."""
    from pathlib import Path

    from ..vector import SteeringVector

    out = {}
    for path in sorted(Path(folder).glob("*")):
        if path.suffix in (".safetensors", ".gguf"):
            out[path.stem] = SteeringVector.load(path, lm)
    return out
