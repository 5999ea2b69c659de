"""Real llama.cpp against steerlab on the embedded model's own GGUF file.

steerlab exports a CAA vector as a GGUF control vector; llama.cpp (through llama-cpp-python,
built from its sdist, which vendors llama.cpp) loads SmolLM2-135M-Instruct.Q4_1.gguf, and the
next-token logits of a few prompts are read with and without the control vector. The same is done
in steerlab on the dequantised model. Reported: the correlation of the logit *changes* across the
vocabulary (expected > 0.9) and whether the top-1 shifts agree.

llama-cpp-python's low-level API does not expose llama.cpp's file loader for control vectors, so
the file is read here with the ``gguf`` package and laid out the way llama.cpp's loader does
(``direction.N`` at buffer offset ``(N-1) * n_embd``); libllama then applies the buffer to its layers.

llama-cpp-python lives in its own environment (it builds llama.cpp, ~10+ minutes on 2 cores):
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python gguf numpy
Run: LLAMA_PYTHON=/tmp/llvenv/bin/python .venv/bin/python benchmarks/llamacpp_interop.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import save_report

import steerlab
from steerlab import Window, datasets
from steerlab.gguf_io import export_control_vector
from steerlab.methods import caa
from steerlab.sources import BUILTIN_MODELS, builtin_gguf_path

PROMPTS = ["I think that the weather today is", "My favourite food is", "The best way to learn is"]

LLAMA_SIDE = r'''
import ctypes, json, sys
import numpy as np
import gguf
import llama_cpp
import llama_cpp.llama
# ggml's AMX / repacked CPU buffers crash in this sandbox; plain CPU buffers do not.
_defaults = llama_cpp.llama_model_default_params
def _params():
    p = _defaults()
    p.use_extra_bufts = False
    return p
llama_cpp.llama.llama_cpp.llama_model_default_params = _params
model_path, cvec_path, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
prompts = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=model_path, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm._model.model)
buf = np.zeros(n_embd * n_layer, dtype=np.float32)
for t in gguf.GGUFReader(cvec_path).tensors:
    idx = int(t.name.split(".")[1])
    buf[(idx - 1) * n_embd: idx * n_embd] = np.asarray(t.data, dtype=np.float32) * scale
def run(apply):
    out = []
    for p in prompts:
        data = buf if apply else np.zeros_like(buf)
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_apply_adapter_cvec(llm._ctx.ctx, ptr, data.size, n_embd, 1, n_layer - 1)
        assert rc == 0, rc
        llm.reset()
        toks = llm.tokenize(p.encode(), add_bos=False, special=False)
        llm.eval(toks)
        out.append({"tokens": toks, "logits": np.asarray(llm.scores[len(toks) - 1]).tolist()})
    return out
print(json.dumps({"plain": run(False), "steered": run(True)}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description="An exported control vector in real llama.cpp vs steerlab.")
    parser.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", "/tmp/llvenv/bin/python"),
                        help="python of the environment holding llama-cpp-python (default: $LLAMA_PYTHON)")
    python = parser.parse_args().llama_python
    if not Path(python).exists():
        sys.exit(f"LLAMA_PYTHON={python} not found; see this file's docstring to build llama-cpp-python.")
    lm = steerlab.load_model()
    layer, scale = 12, 4.0
    train, _ = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
    vec = caa.extract(lm, train, layer, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        cvec = export_control_vector(vec, Path(tmp) / "sentiment.gguf", model_hint="llama")
        gguf_path = builtin_gguf_path(BUILTIN_MODELS["smollm2-135m"])
        proc = subprocess.run([python, "-c", LLAMA_SIDE, str(gguf_path), str(cvec), str(scale)],
                              input=json.dumps(PROMPTS), capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([theirs["plain"][i]["tokens"]])
        assert ids[0].tolist() == lm.tokenizer(prompt)["input_ids"], "tokenizers disagree"
        with torch.no_grad():
            plain = lm.model(ids).logits[0, -1]
            with lm.steer(vec.interventions(scale, Window.all())):
                steered = lm.model(ids).logits[0, -1]
            # Control: the same vector one block later, to show the layer numbering matters.
            shifted = steerlab.SteeringVector({layer + 1: vec.layers[layer]}, lm.name, lm.hidden_size)
            with lm.steer(shifted.interventions(scale, Window.all())):
                off_by_one = lm.model(ids).logits[0, -1]
        ours_delta = steered - plain
        l_plain = torch.tensor(theirs["plain"][i]["logits"])
        l_steered = torch.tensor(theirs["steered"][i]["logits"])
        their_delta = l_steered - l_plain
        corr = float(torch.corrcoef(torch.stack([ours_delta, their_delta]))[0, 1])
        base_corr = float(torch.corrcoef(torch.stack([plain, l_plain]))[0, 1])
        wrong = float(torch.corrcoef(torch.stack([off_by_one - plain, their_delta]))[0, 1])
        rows.append((prompt, corr, wrong, base_corr, int(steered.argmax()) == int(l_steered.argmax()),
                     float(ours_delta.norm()), float(their_delta.norm())))
    lines = ["# llama.cpp interop on smollm2-135m", "",
             f"CAA sentiment vector (block {layer}, open answers) exported with `steerlab export` and applied by "
             f"llama.cpp (llama-cpp-python, Q4_1 GGUF) at scale {scale:g} vs steerlab on the dequantised model "
             "(every position); llama.cpp side run by `LLAMA_PYTHON` (see this script's docstring).", "",
             "| prompt | corr. of logit changes | same, steerlab at block L+1 | corr. of unsteered logits | "
             "same steered top-1 | norm of change (steerlab / llama.cpp) |", "|---|---:|---:|---:|---|---:|"]
    for prompt, corr, wrong, base_corr, same, n1, n2 in rows:
        lines.append(f"| {prompt} | {corr:.3f} | {wrong:.3f} | {base_corr:.4f} | {same} | {n1:.1f} / {n2:.1f} |")
    save_report("llamacpp-interop", lines)


if __name__ == "__main__":
    main()
