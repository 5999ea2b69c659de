"""The streaming GGUF conversion gives exactly the model transformers builds from the whole file."""

import shutil
import warnings

import pytest
import torch

from steerlab.gguf_convert import convert_gguf
from steerlab.model import _load_gguf
from steerlab.sources import BUILTIN_MODELS, ModelNotFoundError, builtin_gguf_path

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_streamed_conversion_equals_whole_file_load(name, tmp_path):
    try:
        gguf = builtin_gguf_path(BUILTIN_MODELS[name])
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    try:
        _compare(gguf, tmp_path)
    finally:  # the copy is up to 2.4 GB; CI's disk keeps pytest's last three runs
        shutil.rmtree(tmp_path, ignore_errors=True)


def _compare(gguf, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert convert_gguf(gguf, tmp_path, shard_bytes=64 * 2**20)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1  # really sharded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole, tok = _load_gguf(gguf)
        streamed = AutoModelForCausalLM.from_pretrained(tmp_path)
    a, b = whole.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": "Pick (A) or (B)."}], tokenize=False)
    assert tok(text)["input_ids"] == tok2(text)["input_ids"] and tok.chat_template == tok2.chat_template
