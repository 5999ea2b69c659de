"""``register``: the ``vllm.general_plugins`` entry point, run by vLLM in each of its processes.

It wraps three methods of vLLM's classes in memory (nothing on disk changes), each a no-op unless
the engine was started with ``additional_config={"steerlab": {...}}``:

* ``InputProcessor.process_inputs`` (front end): check and annotate steered requests
  (:class:`~steerlab.vllm.frontend.FrontEnd`);
* ``load_model`` of the GPU and CPU model runners: build the tables and install the hooks
  (:class:`~steerlab.vllm.worker.WorkerSteering`) before vLLM compiles the model or captures graphs;
* ``GPUModelRunner._model_forward`` (vLLM's documented override point around each forward pass):
  write the programs of newly scheduled requests before the model runs.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import InputError
from .program import PluginConfig

_STATE = "_steerlab_steering"


def register() -> None:
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_steerlab_wrapped", False):
        return
    GPUModelRunner._steerlab_wrapped = True
    _wrap(InputProcessor, "process_inputs", _after_process_inputs)
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
            steering.prepare(self)
        return original_forward(self, *args, **kwargs)

    GPUModelRunner._model_forward = _model_forward


def _wrap(cls: type, name: str, after) -> None:
    original = vars(cls)[name]

    @functools.wraps(original)
    def wrapped(self, *args: Any, **kwargs: Any) -> Any:
        return after(self, original(self, *args, **kwargs))

    setattr(cls, name, wrapped)


def _after_process_inputs(processor: Any, request: Any) -> Any:
    front = processor.__dict__.get("_steerlab_front")
    if front is None:
        from .frontend import FrontEnd

        front = processor.__dict__["_steerlab_front"] = FrontEnd(processor.vllm_config, processor.tokenizer)
    try:
        return front.admit(request)
    except InputError as err:  # vLLM's own validation error: an HTTP 400 naming the parameter
        from vllm.exceptions import VLLMValidationError

        raise VLLMValidationError(str(err), parameter=getattr(err, "param", "steering")) from None


def _after_load_model(runner: Any, result: Any) -> Any:
    config = PluginConfig.from_additional(runner.vllm_config.additional_config)
    if config is not None and _STATE not in runner.__dict__:
        from .worker import WorkerSteering

        runner.__dict__[_STATE] = WorkerSteering(runner, config)
    return result
