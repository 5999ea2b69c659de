"""The OpenAI wire format that evaluation clients use (log-probabilities, echo, n, seed, token-id
prompts, tokenizer endpoints), checked with the official openai client against the model's own
forward passes on the embedded model."""

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402

from steerlab import datasets  # noqa: E402
from steerlab.logprobs import token_string  # noqa: E402
from steerlab.methods import caa  # noqa: E402
from steerlab.serve import ServeConfig, create_app  # noqa: E402
from steerlab.serve.background import BackgroundServer  # noqa: E402
from steerlab.spec import SteeringFactory  # noqa: E402
from steerlab.tokens import TokenPrompt  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "The best thing about a rainy day is"
STEER = {"vectors": [{"name": "sentiment", "multiplier": 8, "window": "all"}]}


@pytest.fixture(scope="module")
def vectors(smol):
    pairs = datasets.to_open_answers(datasets.builtin("sentiment"))[:24]
    return {"sentiment": caa.extract(smol, pairs, [8], progress=False)}


@pytest.fixture(scope="module")
def server(smol, vectors):
    app = create_app(smol, vectors, config=ServeConfig(max_tokens=32, max_multiplier=20), batch_wait=0.02)
    with BackgroundServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def reference_logprobs(lm, vectors, ids: list[int], steering: dict | None, assistant_start: int) -> torch.Tensor:
    """log-softmax of the model's own logits over ``ids`` in one plain forward pass, under ``steering``
    (the engine-independent reference): row t is the distribution of token t + 1."""
    factory = SteeringFactory(lm, vectors)
    steer = factory.build(steering)
    batch = lm.prepare([TokenPrompt(tuple(ids), assistant_start)], padding_side="right")
    with lm.steer(steer, batch=batch), torch.no_grad():
        logits = lm.model(input_ids=batch.input_ids).logits[0].float()
    return logits.log_softmax(-1)


@pytest.mark.parametrize("steering", [None, STEER], ids=["unsteered", "steered"])
def test_generated_logprobs_equal_the_models_own(smol, vectors, client, steering):
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                  extra_body={"steering": steering} if steering else None)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 6
    ids = smol.tokenizer(PROMPT)["input_ids"]
    n_prompt = len(ids)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        row = reference_logprobs(smol, vectors, ids, steering, n_prompt - 1)[-1]  # greedy: re-derive each token
        tok = int(row.argmax())
        assert token == token_string(smol.tokenizer, tok)
        assert value == pytest.approx(float(row[tok]), abs=2e-3)
        assert list(top.values()) == sorted(top.values(), reverse=True) and len(top) == 3
        assert max(top.values()) == pytest.approx(value, abs=1e-6)
        ids.append(tok)


def test_steering_moves_the_logprobs(client):
    plain = client.completions.create(model="m", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5)
    steered = client.completions.create(model="m", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5,
                                        extra_body={"steering": STEER})
    assert plain.choices[0].logprobs.top_logprobs[0] != steered.choices[0].logprobs.top_logprobs[0]


@pytest.mark.parametrize("steering", [None, STEER], ids=["unsteered", "steered"])
def test_echo_prompt_logprobs_equal_a_forward_pass(smol, vectors, client, steering):
    ids = smol.tokenizer("Paris is the capital of France.", add_special_tokens=False)["input_ids"]
    r = client.completions.create(model="m", prompt=ids, max_tokens=0, echo=True, logprobs=1,
                                  extra_body={"steering": steering} if steering else None)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text == "Paris is the capital of France." and choice.finish_reason == "length"
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(ids))]
    ref = reference_logprobs(smol, vectors, ids, steering, len(ids) - 1)
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(float(ref[t - 1, ids[t]]), abs=2e-3)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0


def test_echo_with_one_new_token_is_what_lm_eval_reads(smol, client):
    """lm-eval's local-completions sends echo, max_tokens 1, logprobs 1 and reads token_logprobs[ctxlen:-1]."""
    ids = smol.tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    r = client.completions.create(model="m", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    scored = client.completions.create(model="m", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(scored.choices[0].logprobs.token_logprobs[1:], abs=1e-4)


def test_chat_logprobs_stream_equals_whole(client):
    kw = dict(model="m", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0,
              logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw).choices[0]
    content = whole.logprobs.content
    assert [c.token for c in content][: len(content)] and all(len(c.top_logprobs) == 2 for c in content)
    assert all(bytes(c.bytes).decode("utf-8", "replace") for c in content)
    streamed = []
    text = ""
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == whole.message.content
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-5)


def test_n_choices_with_a_seed_are_reproducible(smol, client):
    kw = dict(model="m", prompt="Once upon a time", max_tokens=10, temperature=1.0, n=3, seed=11)
    first = client.completions.create(**kw)
    again = client.completions.create(**kw)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) >= 2  # each choice draws its own tokens
    assert first.usage.prompt_tokens == len(smol.tokenizer("Once upon a time")["input_ids"])  # counted once
    assert first.usage.completion_tokens == 30  # 3 choices x 10 tokens (sampling rarely ends this early)


def test_several_prompts_in_one_request(client):
    r = client.completions.create(model="m", prompt=["The capital of France is", "Two plus two is"], max_tokens=3,
                                  temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    alone = client.completions.create(model="m", prompt="Two plus two is", max_tokens=3, temperature=0)
    assert alone.choices[0].text == r.choices[2].text


def test_steering_in_the_model_name_equals_the_field(client):
    named = client.completions.create(model="smollm2-135m+sentiment*8@all", prompt=PROMPT, max_tokens=1,
                                      temperature=0, logprobs=2)
    field = client.completions.create(model="m", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=2,
                                      extra_body={"steering": STEER})
    assert named.choices[0].logprobs.token_logprobs == pytest.approx(field.choices[0].logprobs.token_logprobs,
                                                                     abs=1e-5)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "Hi", "echo": True, "stream": True}, "echo"),
    ({"prompt": "Hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "Hi", "logprobs": -1}, "logprobs"),
    ({"prompt": "Hi", "n": 0}, "n"),
    ({"prompt": "Hi", "n": 17}, "n"),
    ({"prompt": ["a", "b", "c", "d", "e"], "n": 4}, "n"),
    ({"prompt": "Hi", "best_of": 3}, "best_of"),
    ({"prompt": "Hi", "logit_bias": {"50": 5}}, "logit_bias"),
    ({"prompt": [10 ** 9]}, "prompt"),
    ({"prompt": [[1, 2], [-4]]}, "prompt[1]"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "Hi", "model": "m+sentiment*lots"}, "model"),
    ({"prompt": "Hi", "model": "m+sentiment*2@sideways"}, "model"),
    ({"prompt": "Hi", "model": "m+sentiment*2", "steering": STEER}, "steering"),
    ({"prompt": "Hi", "echo": True, "logprobs": 1, "max_tokens": 0,
      "steering": {"actadd": {"positive": "Love", "negative": "Hate", "layer": 6, "mode": "pad"}}},
     "steering.actadd.mode"),
])
def test_unsupported_completion_requests_are_400(server, body, param):
    r = httpx.post(server.url + "/v1/completions", json={"model": "m", **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_unsupported_chat_requests_are_400(server, body, param):
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_tokenizer_endpoints(smol, server):
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == smol.tokenizer.eos_token and info["chat_template"]
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "Hello there", "add_special_tokens": False}).json()
    assert ids["tokens"] == smol.tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    back = httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()
    assert back["prompt"] == "Hello there"
    assert httpx.post(server.url + "/detokenize", json={"tokens": [-1]}).status_code == 400
