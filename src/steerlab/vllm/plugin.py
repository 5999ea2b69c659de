"""``register``: the ``vllm.general_plugins`` entry point, run by vLLM in each of its processes.

It wraps three methods of vLLM's classes in memory (nothing on disk changes), each a no-op unless
the engine was started with ``additional_config={"steerlab": {...}}``:

* ``InputProcessor.__init__`` and ``process_inputs`` (front end): build the front end when the
  engine starts, then check and annotate steered requests (:class:`~steerlab.vllm.frontend.FrontEnd`);
* ``load_model`` of the GPU and CPU model runners: build the tables and install the hooks
  (:class:`~steerlab.vllm.worker.WorkerSteering`) before vLLM compiles the model or captures graphs;
* ``GPUModelRunner._model_forward`` (vLLM's documented override point around each forward pass):
  write the programs of newly scheduled requests before the model runs;
* ``to_sampling_params`` of the OpenAI server's chat and completion requests: a ``steering`` field in
  the request body (an extra field, as ``steerlab serve`` takes it) goes into ``extra_args``, so the
  same body works on both servers; ``vllm_xargs: {"steering": "<JSON>"}`` works too.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from ..errors import InputError
from .program import EXTRA_KEY, PluginConfig

_STATE = "_steerlab_steering"


def register() -> None:
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_steerlab_wrapped", False):
        return
    GPUModelRunner._steerlab_wrapped = True
    _wrap(InputProcessor, "__init__", _after_init)
    _wrap(InputProcessor, "process_inputs", _after_process_inputs)
    for module, name in (("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
                         ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest")):
        try:
            request_cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # another vLLM layout: vllm_xargs still works
            continue
        _wrap(request_cls, "to_sampling_params", _after_to_sampling_params)
    _wrap(GPUModelRunner, "load_model", _after_load_model)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        CPUModelRunner = None
    if CPUModelRunner is not None and "load_model" in vars(CPUModelRunner):
        _wrap(CPUModelRunner, "load_model", _after_load_model)
    original_forward = GPUModelRunner._model_forward

    @functools.wraps(original_forward)
    def _model_forward(self, *args: Any, **kwargs: Any) -> Any:
        steering = self.__dict__.get(_STATE)
        if steering is not None:
            steering.prepare(self, kwargs.get("positions", args[1] if len(args) > 1 else None))
        return original_forward(self, *args, **kwargs)

    GPUModelRunner._model_forward = _model_forward


def _wrap(cls: type, name: str, after) -> None:
    original = vars(cls)[name]

    @functools.wraps(original)
    def wrapped(self, *args: Any, **kwargs: Any) -> Any:
        return after(self, original(self, *args, **kwargs))

    setattr(cls, name, wrapped)


def _front(processor: Any) -> Any:
    front = processor.__dict__.get("_steerlab_front")
    if front is None:
        from .frontend import FrontEnd

        front = processor.__dict__["_steerlab_front"] = FrontEnd(processor.vllm_config, processor.tokenizer)
    return front


def _after_init(processor: Any, result: None) -> None:
    # An engine started for steering checks its vectors (and loads the ActAdd reference model) now, not
    # on the first request.
    if PluginConfig.from_additional(processor.vllm_config.additional_config) is not None:
        _front(processor)


def _after_process_inputs(processor: Any, request: Any) -> Any:
    front = _front(processor)
    try:
        return front.admit(request)
    except InputError as err:  # vLLM's own validation error: an HTTP 400 naming the parameter
        from vllm.exceptions import VLLMValidationError

        raise VLLMValidationError(str(err), parameter=getattr(err, "param", "steering")) from None


def _after_to_sampling_params(body: Any, params: Any) -> Any:
    raw = (getattr(body, "__pydantic_extra__", None) or {}).get(EXTRA_KEY)
    if raw is None:
        return params
    extra = dict(params.extra_args or {})
    if EXTRA_KEY in extra:
        from vllm.exceptions import VLLMValidationError

        raise VLLMValidationError("steering is given twice: in the body and in vllm_xargs; give it once.",
                                  parameter="steering")
    extra[EXTRA_KEY] = raw  # checked by the front end like any other spec
    params.extra_args = extra
    return params


def _after_load_model(runner: Any, result: Any) -> Any:
    config = PluginConfig.from_additional(runner.vllm_config.additional_config)
    if config is not None and _STATE not in runner.__dict__:
        from .worker import WorkerSteering

        runner.__dict__[_STATE] = WorkerSteering(runner, config)
    return result
