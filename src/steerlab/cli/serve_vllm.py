"""``steerlab serve --engine vllm``: vLLM's OpenAI server (with the steerlab plugin) on a loopback
port, and steerlab's front (:mod:`steerlab.serve.upstream`) on ``--host``/``--port``."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, SteerlabError
from ..serve.background import free_port
from .args import parse_layers

START_TIMEOUT_S = 1800.0  # a first start compiles and profiles the model; large models on CPU are slow


def _model(args) -> tuple[str, str, str | None]:
    """(what vLLM loads, the name clients use, the steerlab name vectors must be made for or None)."""
    from ..model import builtin_model_dir
    from ..sources import DEFAULT_MODEL, resolve_builtin

    name = args.model or DEFAULT_MODEL
    builtin = resolve_builtin(name)
    if builtin is not None:
        return str(builtin_model_dir(builtin.name)), builtin.name, builtin.name
    if str(name).endswith(".gguf"):
        raise InputError("--engine vllm takes a built-in name, a hub id or a model directory, not a .gguf file.")
    return str(name), Path(str(name)).name or str(name), None


def _facts(model_dir: str) -> tuple[int, int]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size), int(text.num_hidden_layers)


def _die_with_parent() -> None:
    """In the vLLM server's process, before it starts: on Linux, ask the kernel to send it SIGTERM if
    this process dies without stopping it (killed, crashed); vLLM then stops its own workers."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SteerlabError(f"vLLM's server exited ({proc.returncode}) while starting; the end of its log "
                                f"({log}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise SteerlabError(f"vLLM's server did not start within {timeout:.0f} s; see {log}.")


def serve_vllm(args, api_key: str | None, uvicorn: Any) -> int:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise InputError("--engine vllm needs vLLM next to steerlab: run `make setup-vllm`, then "
                         "`.venv-vllm/bin/steerlab serve --engine vllm ...`.") from None
    from ..serve import ServeConfig
    from ..serve.upstream import create_upstream_app
    from ..vector import load_vector_folder
    from ..vllm.program import ModelFacts

    model_dir, served, steerlab_name = _model(args)
    hidden, layers = _facts(model_dir)
    try:
        pair_layers = parse_layers(args.actadd_layers) if args.actadd_layers else []
    except ValueError:
        raise InputError(f"--actadd-layers takes block indices such as 6,8 (got {args.actadd_layers!r}).") from None
    if not args.vectors and not pair_layers:
        raise InputError("--engine vllm needs --vectors FOLDER and/or --actadd-layers to have anything to steer with.")
    plugin: dict = {"max_multiplier": args.max_multiplier}
    vectors = {}
    if args.vectors:  # checked here too, so a bad folder fails before vLLM spends minutes starting
        vectors = load_vector_folder(args.vectors, ModelFacts(steerlab_name or served, hidden, layers),
                                     allow_other_model=steerlab_name is None)
        plugin["vectors"] = str(Path(args.vectors).resolve())
    if steerlab_name:
        plugin["model_name"] = steerlab_name
    if pair_layers:
        plugin["actadd_layers"] = pair_layers
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", served, "--additional-config", json.dumps({"steerlab": plugin})]
    if args.dtype != "auto":
        cmd += ["--dtype", args.dtype]
    cmd += shlex.split(args.vllm_args)
    log = Path(tempfile.mkdtemp(prefix="steerlab-vllm-")) / "vllm.log"
    print(f"starting vLLM's server for {served} (log: {log}) ...", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)

    # Ctrl-C and SIGTERM end server.run() with KeyboardInterrupt (uvicorn re-raises the signal it caught
    # after shutting down, which would otherwise end this process before vLLM's server is stopped).
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        _wait(proc, url, log, START_TIMEOUT_S)
        from transformers import AutoTokenizer

        config = ServeConfig(max_queue=args.max_queue, max_tokens=args.max_tokens, max_multiplier=args.max_multiplier,
                             allow_control_tokens=args.allow_control_tokens)
        app = create_upstream_app(url, served, vectors, layers, api_key=api_key, config=config,
                                  tokenizer=AutoTokenizer.from_pretrained(model_dir))
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                               timeout_graceful_shutdown=5))
        print(f"serving {served} on vLLM with vectors {sorted(vectors) or 'none'} on http://{args.host}:{args.port} "
              f"(playground at /, OpenAI API at /v1); Ctrl-C stops", flush=True)
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return 0
