"""``steerlab serve``: the OpenAI-compatible server."""

from __future__ import annotations

import signal

from ..errors import InputError
from ..serve.config import ServeConfig
from .args import add_model_args, load_model


def cmd_serve(args) -> int:
    import ipaddress
    import os

    try:
        import uvicorn

        from ..serve import ServeConfig, create_app, load_vectors
    except ImportError as err:
        raise InputError(f"steerlab serve needs the serve extra: pip install 'steerlab[serve]' ({err}).") from None
    api_key = args.api_key or os.environ.get("STEERLAB_API_KEY")
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        raise InputError(f"Binding to {args.host} exposes the server beyond this machine: set --api-key or "
                         "STEERLAB_API_KEY (or bind to 127.0.0.1).")
    if args.engine == "vllm":
        from .serve_vllm import serve_vllm

        return serve_vllm(args, api_key, uvicorn)
    if args.actadd_layers or args.vllm_args:
        raise InputError("--actadd-layers and --vllm-args are options of --engine vllm.")
    lm = load_model(args)
    vectors = load_vectors(args.vectors, lm) if args.vectors else {}
    dictionary = None
    if args.dictionary:
        from ..pace import ConceptDictionary

        dictionary = ConceptDictionary.load(args.dictionary, lm)
    config = ServeConfig(max_queue=args.max_queue, max_batch=args.max_batch, max_tokens=args.max_tokens,
                         max_multiplier=args.max_multiplier, allow_control_tokens=args.allow_control_tokens)
    app = create_app(lm, vectors, dictionary=dictionary, api_key=api_key, config=config, engine_thread=False)
    # HTTP on a background thread; generation on this (main) thread, where PyTorch runs fastest on CPU.
    import threading

    # On Ctrl-C, open connections get 5 s to finish before the HTTP thread gives up on them.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    http = threading.Thread(target=server.run, name="steerlab-http", daemon=True)
    http.start()
    print(f"serving {lm.name} with vectors {sorted(vectors) or 'none'} on http://{args.host}:{args.port} "
          f"(playground at /, OpenAI API at /v1); Ctrl-C stops")
    # Ctrl-C and SIGTERM (process managers, `docker stop`) both stop the server cleanly. The handlers are
    # set explicitly: a process started in the background by a non-interactive shell inherits SIGINT
    # as ignored, and Python then never raises KeyboardInterrupt (the server ran on for ever).
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        app.state.engine.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(timeout=10)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with per-request steering, and a playground")
    add_model_args(p)
    p.add_argument("--vectors", default=None, help="folder of .safetensors/.gguf vectors, served by file name")
    p.add_argument("--dictionary", default=None, help="a PaCE concept dictionary, for 'pace' steering")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="hf: Hugging Face generate in this process (default); vllm: vLLM's engine with the steerlab "
                        "plugin behind this server's API and playground (needs make setup-vllm)")
    p.add_argument("--actadd-layers", default=None,
                   help="--engine vllm: blocks at which requests may bring ActAdd pairs, e.g. 6,8")
    p.add_argument("--vllm-args", default="",
                   help="--engine vllm: more arguments for vLLM's server, e.g. '--tensor-parallel-size 2 "
                        "--max-model-len 4096'")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set STEERLAB_API_KEY)")
    defaults = ServeConfig()
    p.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help="requests waiting beyond this get HTTP 429")
    p.add_argument("--max-batch", type=int, default=defaults.max_batch, help="requests generated together in one batch")
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="per-request limit on new tokens")
    p.add_argument("--max-multiplier", type=float, default=defaults.max_multiplier,
                   help="per-request limit on each vector's total |multiplier|")
    p.add_argument("--allow-control-tokens", action="store_true",
                   help="let chat messages spell control tokens such as <|im_start|> (trusted clients only: such "
                        "text becomes real tokens and can forge chat turns; refused with a 400 by default)")
    p.set_defaults(func=cmd_serve)
