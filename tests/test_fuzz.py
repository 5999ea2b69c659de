"""Property tests (Hypothesis, bounded in examples and time, loopback only): no client input makes the
server answer 500 or stop serving; no damaged vector or dataset file gives anything but the library's
own clear error."""

import json

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerlab import datasets
from steerlab.datasets import DatasetError
from steerlab.vector import SteeringVector, VectorFileError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Any text, lone surrogates included (what a hostile JSON body can carry).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
NUMBER = st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True, allow_infinity=True))
JSON = st.recursive(st.none() | st.booleans() | NUMBER | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]),
                                 "content": TEXT | JSON})
STEERING = st.fixed_dictionaries({}, optional={
    "vectors": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["v", "nope", ""]) | TEXT,
                                               "multiplier": NUMBER}, optional={
        "layers": st.lists(NUMBER, max_size=3) | JSON, "op": st.sampled_from(["add", "project_out", "clamp", "x"]),
        "value": NUMBER, "window": st.sampled_from(["own", "all", "generated", "user", "?"]) | JSON}), max_size=20),
    "actadd": st.fixed_dictionaries({"positive": TEXT, "negative": TEXT, "layer": NUMBER, "coeff": NUMBER},
                                    optional={"mode": st.sampled_from(["pad", "overlay", "x"])}),
    "pace": st.fixed_dictionaries({"task": TEXT}),
})
CHAT = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3) | JSON}, optional={
    "max_tokens": NUMBER | JSON, "max_completion_tokens": NUMBER, "temperature": NUMBER, "top_p": NUMBER,
    "seed": NUMBER, "stop": TEXT | st.lists(TEXT, max_size=6), "stream": st.booleans(), "n": NUMBER,
    "frequency_penalty": NUMBER, "steering": STEERING | JSON,
})


def _dumps(body) -> str:
    return json.dumps(body, allow_nan=True)  # NaN / Infinity tokens: what a careless client sends


@pytest.fixture(scope="module")
def live(smol):
    pytest.importorskip("fastapi")
    from steerlab.serve import ServeConfig, create_app
    from steerlab.serve.background import BackgroundServer

    vec = SteeringVector({8: torch.randn(smol.hidden_size)}, smol.name, smol.hidden_size)
    app = create_app(smol, {"v": vec}, config=ServeConfig(max_tokens=3, default_tokens=2), max_batch=4)
    with BackgroundServer(app) as server:
        yield server


@pytest.mark.slow
@FAST
@given(body=CHAT)
def test_no_request_body_gets_a_500_and_the_server_keeps_serving(live, body):
    r = httpx.post(live.url + "/v1/chat/completions", content=_dumps(body),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:300], body)
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"message", "type"}


@pytest.mark.slow
@FAST
@given(prompt=TEXT | JSON, extra=st.dictionaries(st.sampled_from(["max_tokens", "seed", "stop", "stream"]), JSON))
def test_no_completion_body_gets_a_500(live, prompt, extra):
    r = httpx.post(live.url + "/v1/completions", content=_dumps({"prompt": prompt, **extra}),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:300])


@pytest.mark.slow
def test_the_server_still_answers_after_the_fuzzing(live):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200


def _damage(good: bytes, data) -> bytes:
    """Up to 6 bytes overwritten at random places, then cut at a random length."""
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(0, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw[: data.draw(st.integers(0, len(raw)))])


@pytest.fixture(scope="module")
def vector_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    SteeringVector({1: torch.ones(4), 2: torch.zeros(4)}, "m", 4, meta={"a": 1}).save(path)
    return path.read_bytes()


@FAST
@given(data=st.data())
def test_a_damaged_vector_file_loads_or_says_what_is_wrong(vector_bytes, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("d") / "x.safetensors"
    path.write_bytes(_damage(vector_bytes, data))
    try:
        vec = SteeringVector.load(path)
    except VectorFileError:
        return
    assert all(bool(t.isfinite().all()) for t in vec.layers.values())


@FAST
@given(header=JSON)
def test_any_vector_header_loads_or_says_what_is_wrong(tmp_path_factory, header):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("h") / "x.safetensors"
    save_file({"layer.1": torch.ones(4)}, str(path), metadata={"steerlab": json.dumps(header, allow_nan=True)})
    with pytest.raises(VectorFileError):
        SteeringVector.load(path)


ITEM = st.fixed_dictionaries({}, optional={
    "question": TEXT | JSON, "answer_matching_behavior": st.sampled_from(["(A)", " (B)", "Yes", ""]) | TEXT | JSON,
    "answer_not_matching_behavior": st.sampled_from(["(B)", " (A)", "No"]) | TEXT | JSON,
    "positive": TEXT | JSON, "negative": TEXT | JSON, "prompt": TEXT | JSON, "statement": TEXT})


@FAST
@given(items=st.lists(ITEM | JSON, max_size=4), suffix=st.sampled_from([".jsonl", ".json"]),
       garbage=st.binary(max_size=8))
def test_a_dataset_file_loads_or_names_file_and_line(tmp_path_factory, items, suffix, garbage):
    path = tmp_path_factory.mktemp("ds") / f"data{suffix}"
    if suffix == ".jsonl":
        text = "\n".join(json.dumps(i, allow_nan=True) for i in items).encode("utf-8", "surrogatepass")
    else:
        text = json.dumps(items, allow_nan=True).encode("utf-8", "surrogatepass")
    path.write_bytes(text + garbage)
    try:
        pairs = datasets.load(path)
    except DatasetError as err:
        assert str(path) in str(err)
        return
    for p in pairs:  # whatever loads is valid text that a tokenizer can take
        for field in (p.prompt, p.positive, p.negative):
            assert isinstance(field, str)
            field.encode("utf-8")


@pytest.fixture(scope="module")
def small_dictionary(tmp_path_factory):
    from steerlab.pace import ConceptDictionary

    atoms = {1: torch.nn.functional.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=1)}
    d = ConceptDictionary(["love", "hate", "#tag", "concept", "tab\there"], atoms, "m", 4, {1: torch.zeros(4)}, {})
    path = tmp_path_factory.mktemp("dict") / "d.safetensors"
    d.save(path)
    return d, path.read_bytes()


@FAST
@given(data=st.data())
def test_a_damaged_dictionary_file_loads_or_says_what_is_wrong(small_dictionary, tmp_path_factory, data):
    from steerlab.pace import ConceptDictionary, DictionaryFileError

    path = tmp_path_factory.mktemp("dd") / "d.safetensors"
    path.write_bytes(_damage(small_dictionary[1], data))
    try:
        d = ConceptDictionary.load(path)
    except DictionaryFileError as err:
        assert str(path) in str(err)
        return
    for layer in d.layers:  # whatever loads is usable: finite atoms of the declared shape
        assert d.matrix(layer).shape == (d.hidden_size, len(d)) and bool(d.matrix(layer).isfinite().all())


LABEL_LINE = st.tuples(st.sampled_from(["love", "hate", "\\#tag", "concept", "tab\\there", "nope"]) | TEXT,
                       st.sampled_from(["benign", "undesirable", "maybe"]) | TEXT,
                       st.sampled_from(["0.5", "nan"]) | TEXT).map("\t".join)


@FAST
@given(lines=st.lists(LABEL_LINE | TEXT, max_size=6), garbage=st.binary(max_size=6))
def test_a_labels_file_loads_or_names_file_and_line(small_dictionary, tmp_path_factory, lines, garbage):
    from steerlab.errors import SteerlabError
    from steerlab.pace import Partition

    path = tmp_path_factory.mktemp("lab") / "labels.tsv"
    path.write_bytes("\n".join(["concept\tlabel\tscore", *lines]).encode("utf-8", "surrogatepass") + garbage)
    try:
        part = Partition.load(path, small_dictionary[0], "detox")
    except SteerlabError as err:
        assert str(path) in str(err)
        return
    assert len(part.undesirable) == len(small_dictionary[0])
    again = part.save(path.with_suffix(".again.tsv"))  # what loads also round-trips
    assert torch.equal(Partition.load(again, small_dictionary[0]).undesirable, part.undesirable)


@FAST
@given(data=st.data(), meta=st.dictionaries(TEXT, JSON, max_size=3))
def test_steerlab_info_prints_strict_json_or_one_error_line(vector_bytes, tmp_path_factory, data, meta, capsys):
    """The CLI on a damaged file, or on a good file whose metadata holds anything JSON can (NaN, huge
    numbers, odd strings): valid strict JSON and status 0, or one `error:` line and status 2."""
    from steerlab.cli import main

    folder = tmp_path_factory.mktemp("info")
    damaged = folder / "damaged.safetensors"
    damaged.write_bytes(_damage(vector_bytes, data))
    odd = folder / "meta.safetensors"
    SteeringVector({1: torch.ones(4)}, "m", 4, meta=meta).save(odd)
    for path in (damaged, odd):
        capsys.readouterr()
        code = main(["info", str(path)])
        out, err = capsys.readouterr()
        if code == 0:
            def refuse(constant: str, printed: str = out) -> None:
                pytest.fail(f"invalid JSON constant {constant} in: {printed}")

            json.loads(out, parse_constant=refuse)
            assert err == ""
        else:
            assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
