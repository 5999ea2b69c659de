"""The FastAPI app: OpenAI-compatible completions with per-request steering, vector listing, health,
and the playground page."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..errors import InputError
from ..spec import SpecError, SteeringFactory, SteeringSpec
from ..tokens import Rendered, TokenPrompt
from .config import ServeConfig
from .engine import Engine, Job, QueueFull
from .protocol import APIError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .shaping import Shaper, Vocab, merge_completion_logprobs, sse
from .validate import RequestValidator

if TYPE_CHECKING:
    from ..model import SteerModel

TOKENIZER_PATHS = frozenset({"/tokenize", "/detokenize", "/tokenizer_info"})


def render_messages(lm: SteerModel, messages) -> Rendered:
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

    def __init__(self, answer, jobs: list[Job]) -> None:
        super().__init__()
        self.answer, self.jobs = answer, jobs

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
            for job in self.jobs:
                job.cancelled.set()
            waiter.cancel()
            return
        watcher.cancel()
        await waiter.result()(scope, receive, send)


def create_app(lm: SteerModel, vectors: dict | None = None, *, dictionary=None, api_key: str | None = None,
               config: ServeConfig | None = None, engine_thread: bool = True, **settings) -> FastAPI:
    """An app serving ``lm`` with the named ``vectors`` ({name: SteeringVector}) and optionally a PaCE
    concept ``dictionary``. ``api_key``: clients must send ``Authorization: Bearer <key>``.
    ``config`` (or any of its fields as keywords): limits, queue and batch sizes.
    ``engine_thread=False``: nothing generates until you call ``app.state.engine.run_forever()``
    (do that on the main thread for the best CPU speed)."""
    vectors = dict(vectors or {})
    for name, vec in vectors.items():  # one broken vector would fail every batch that uses it
        if vec.nonfinite_layers():
            raise InputError(f"Vector {name!r} holds NaN or infinite values; refusing to serve it.")
    config = replace(config or ServeConfig(), **settings)
    factory = SteeringFactory(lm, vectors, dictionary, actadd_cache_size=config.actadd_cache,
                              max_multiplier=config.max_multiplier)
    validator = RequestValidator(lm, factory, config)
    engine = Engine(lm, factory, config, start_thread=engine_thread)
    app = FastAPI(title="steerlab", version="1")
    app.state.engine = engine
    add_error_handlers(app, config)

    app.middleware("http")(access_guard(api_key))

    vocab = Vocab(lm.tokenizer)

    def steering_of(req) -> SteeringSpec | None:
        """Steering written into the model name (``MODEL+VECTOR*MULT@WINDOW``), checked like the field."""
        try:
            named = SteeringSpec.from_model_name(req.model)
        except SpecError as err:
            raise APIError(400, str(err), param="model") from None
        if named is None:
            return None
        if req.steering is not None:
            raise APIError(400, "Steering is given both in the model name and in the steering field; use one.",
                           param="steering")
        return validator.steering(named.to_dict())

    def choice_body(shape: Shaper, job: Job, ev: dict) -> dict:
        """One finished choice in the endpoint's wire form."""
        k = job.logprobs or 0
        prompt_text = ""
        if job.echo:
            r = job.rendered
            prompt_text = lm.tokenizer.decode(list(r.ids)) if isinstance(r, TokenPrompt) else r.text
        logprobs = None
        if job.logprobs is not None:
            answer = ev["logprobs"] or []
            if shape.chat:
                logprobs = {"content": vocab.chat(answer, k), "refusal": None}
            else:
                parts = []
                if job.echo:
                    parts.append(vocab.completion(ev["prompt_ids"], ev["prompt_logprobs"], k))
                parts.append(vocab.completion([e.token for e in answer], answer, k, offset=len(prompt_text)))
                logprobs = merge_completion_logprobs(*parts)
        return shape.choice(job.index, prompt_text + ev["text"], ev["finish_reason"], logprobs)

    async def run(req, prompts: list[Rendered | TokenPrompt], max_tokens: int | None, chat_endpoint: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        named = steering_of(req)
        settings = [validator.job(req, p, max_tokens, spec=named) for p in prompts]
        if len(settings) * req.n > config.max_choices:
            raise APIError(400, f"{len(settings)} prompts x n={req.n} choices is over {config.max_choices}.",
                           param="n")

        def emit(ev: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        jobs = [Job.of(replace(s, index=p * req.n + j, seed=None if s.seed is None else (s.seed + j) % 2**63), emit)
                for p, s in enumerate(settings) for j in range(req.n)]
        for k, job in enumerate(jobs):
            try:
                engine.submit(job)
            except QueueFull as err:
                for queued in jobs[:k]:
                    queued.cancelled.set()
                raise APIError(429, f"{err}; retry shortly.", type="rate_limit_error", code="queue_full") from None
        shape = Shaper(chat_endpoint, lm.name)
        by_index = {job.index: job for job in jobs}

        def usage(done: dict[int, dict]) -> dict:
            prompt = sum(ev["usage"]["prompt_tokens"] for i, ev in done.items() if i % req.n == 0)
            completion = sum(ev["usage"]["completion_tokens"] for ev in done.values())
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        if not req.stream:
            async def answer() -> JSONResponse:
                done: dict[int, dict] = {}
                while len(done) < len(jobs):
                    ev = await events.get()
                    if "error" in ev:
                        for job in jobs:
                            job.cancelled.set()
                        return JSONResponse(APIError(500, ev["error"], type="server_error").body(), status_code=500)
                    if ev.get("done"):
                        done[ev["index"]] = ev
                choices = [choice_body(shape, by_index[i], done[i]) for i in sorted(done)]
                return JSONResponse(shape.answer(choices, usage(done)))

            return _AnswerOrCancel(answer, jobs)

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        k_of = {job.index: job.logprobs for job in jobs}
        offsets = dict.fromkeys(k_of, 0)

        def chunk_logprobs(index: int, entries) -> dict | None:
            k = k_of[index]
            if k is None:
                return None
            if chat_endpoint:
                return {"content": vocab.chat(entries, k), "refusal": None}
            return vocab.completion([e.token for e in entries], entries, k, offset=offsets[index])

        async def stream():
            finished = False
            done: dict[int, dict] = {}
            try:
                if chat_endpoint:
                    for job in jobs:
                        yield shape.chunk(role=True, index=job.index)
                while len(done) < len(jobs):
                    ev = await events.get()
                    if "error" in ev:
                        yield sse(APIError(500, ev["error"], type="server_error").body())
                        break
                    if "delta" in ev:
                        i = ev["index"]
                        yield shape.chunk(ev["delta"], index=i, logprobs=chunk_logprobs(i, ev.get("logprobs") or []))
                        offsets[i] += len(ev["delta"])
                    if ev.get("done"):
                        done[ev["index"]] = ev
                        yield shape.chunk(None, ev["finish_reason"], index=ev["index"])
                else:
                    if include_usage:
                        yield sse({**shape.answer([], usage(done)), "object": "chat.completion.chunk"
                                   if chat_endpoint else "text_completion"})
                    finished = True
                    yield sse("[DONE]")
            finally:
                if not finished:  # the client went away mid-stream (or a choice failed): stop generating
                    for job in jobs:
                        job.cancelled.set()

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        validator.control_tokens([m.content for m in req.messages], "messages")
        rendered = render_messages(lm, req.messages)
        tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await run(req, [rendered], tokens, chat_endpoint=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts: list[Any] = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt is empty.", param="prompt")
        if all(isinstance(t, int) for t in prompts):  # one prompt as token ids
            prompts = [prompts]
        rows: list[Rendered | TokenPrompt] = []
        for i, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if isinstance(p, str):
                if not p:
                    raise APIError(400, f"{where} is empty.", param=where)
                rows.append(lm.render(p, chat=False))
            else:
                rows.append(validator.token_prompt(list(p), where))
        return await run(req, rows, req.max_tokens, chat_endpoint=False)

    # vLLM's tokenizer endpoints: lm-eval's local-completions finds them and tokenizes with the
    # server's own tokenizer (no Hugging Face download on the client).
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = lm.tokenizer
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
                "model_max_length": validator.context}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        if req.prompt is not None:
            ids = lm.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        elif req.messages is not None:
            ids = lm.prepare([render_messages(lm, req.messages)]).input_ids[0].tolist()
        else:
            raise APIError(400, "Send prompt (text) or messages.", param="prompt")
        return {"count": len(ids), "max_model_len": validator.context, "tokens": ids, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        validator.token_ids(req.tokens, "tokens")
        return {"prompt": lm.tokenizer.decode(req.tokens)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": lm.name, "object": "model", "created": 0, "owned_by": "steerlab"}]}

    @app.get("/v1/vectors")
    async def list_vectors():
        return vector_listing(vectors, lm.num_layers, dictionary)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": lm.name, "queued": engine.queued, "batches": engine.stats["batches"],
                "requests": engine.stats["requests"], "max_batch_seen": engine.stats["max_batch_seen"],
                "generated_tokens": engine.stats["generated_tokens"], "cancelled": engine.stats["cancelled"]}

    app.get("/", response_class=HTMLResponse)(playground)
    return app


async def playground() -> str:
    return resources.files("steerlab.serve").joinpath("playground.html").read_text(encoding="utf-8")


def vector_listing(vectors: dict, num_layers: int, dictionary=None) -> dict:
    """The body of ``GET /v1/vectors``: each served vector's method, layers, window and norms."""
    data = [{"id": name, "object": "steering_vector", "method": v.method, "layers": sorted(v.layers),
             "apply": v.apply, "norms": {str(k): round(n, 4) for k, n in v.norms().items()
                                         if math.isfinite(n)}} for name, v in sorted(vectors.items())]
    return {"object": "list", "data": data, "pace": {"layers": dictionary.layers, "concepts": len(dictionary)}
            if dictionary is not None else None, "num_layers": num_layers}


def add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    """Request bodies over ``config.max_body_bytes`` get a 413; APIErrors and invalid bodies become
    OpenAI-style error bodies."""
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

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


LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def access_guard(api_key: str | None):
    """HTTP middleware: with ``api_key``, the API paths need ``Authorization: Bearer <key>``; without
    one, only requests addressed to this machine by a loopback name are served."""

    async def guard(request: Request, call_next):
        if not api_key:
            # Without a key the server trusts whoever reaches it, so only requests addressed to this
            # machine by name are served: a page elsewhere that rebinds its DNS name to 127.0.0.1
            # sends its own Host header and is refused.
            host = request.headers.get("host", "")
            name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name.lower() not in LOCAL_NAMES:
                return JSONResponse(APIError(403, f"Host {host!r} is not this server's loopback name; a server "
                                                  "without an API key answers only localhost / 127.0.0.1 / [::1]. "
                                                  "Start it with --api-key to serve other names.",
                                             code="host_not_allowed").body(), status_code=403)
        if api_key and (request.url.path.startswith("/v1/") or request.url.path in TOKENIZER_PATHS):
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return JSONResponse(APIError(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                                             type="authentication_error", code="invalid_api_key").body(),
                                    status_code=401)
        return await call_next(request)

    return guard
