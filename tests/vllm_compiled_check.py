"""Run by tests/test_vllm.py in a fresh process: the vLLM engine *with* its compilation (vLLM's CPU
platform traces the model once with Dynamo and compiles it with inductor), every spec of
``test_vllm.SPECS`` on a short and a chunked prompt, against steerlab's own engine. Prints one JSON
line: the compilation mode and backend vLLM chose, and the mismatches."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).parent))


def main(folder: str) -> None:
    from test_vllm import LONG, NEW, PAIR_LAYERS, SHORT, SPECS, reference
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import steerlab
    from steerlab.model import builtin_model_dir
    from steerlab.spec import SteeringFactory
    from steerlab.vector import load_vector_folder
    from steerlab.vllm import engine_config

    smol = steerlab.load_model()
    factory = SteeringFactory(smol, load_vector_folder(folder, smol))
    llm = LLM(model=str(builtin_model_dir("smollm2-135m")), dtype="float32", max_model_len=512, enforce_eager=False,
              seed=0, enable_prefix_caching=True, block_size=32, max_num_batched_tokens=64, max_num_seqs=32,
              additional_config=engine_config(folder, actadd_layers=PAIR_LAYERS))
    compilation = llm.llm_engine.vllm_config.compilation_config
    jobs = [(prompt, name) for name in SPECS for prompt in (SHORT, LONG)]
    outs = llm.generate([TokensPrompt(prompt_token_ids=smol.prepare([p]).input_ids[0].tolist()) for p, _ in jobs],
                        [SamplingParams(max_tokens=NEW, temperature=0,
                                        extra_args=None if SPECS[n] is None else {"steering": SPECS[n]})
                         for _, n in jobs], use_tqdm=False)
    mismatches = [[name, prompt[:20]] for (prompt, name), out in zip(jobs, outs, strict=True)
                  if list(out.outputs[0].token_ids) != reference(smol, factory, prompt, SPECS[name])]
    print(json.dumps({"mode": int(compilation.mode), "backend": compilation.backend, "jobs": len(jobs),
                      "mismatches": mismatches}))


if __name__ == "__main__":
    main(sys.argv[1])
