"""lm-evaluation-harness against a steered model, two ways: lm-eval's own local-completions client
pointed at steerlab serve, and the in-process ``steerlab`` model type; offline tasks only."""

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("fastapi")

from steerlab import datasets  # noqa: E402
from steerlab.cli import main  # noqa: E402
from steerlab.evaluate.harness import SteerlabLM, task_manager  # noqa: E402
from steerlab.evaluate.tasks import task_name, write_tasks  # noqa: E402
from steerlab.methods import caa  # noqa: E402
from steerlab.serve import create_app  # noqa: E402
from steerlab.serve.background import BackgroundServer  # noqa: E402

pytestmark = pytest.mark.slow
TASK = "steerlab_facts_mc"
LIMIT = 16


@pytest.fixture(scope="module")
def vector_file(smol, tmp_path_factory):
    pairs = datasets.to_open_answers(datasets.builtin("sentiment"))[:24]
    path = tmp_path_factory.mktemp("vec") / "sentiment.safetensors"
    caa.extract(smol, pairs, [8], progress=False).save(path)
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return task_manager(tmp_path_factory.mktemp("tasks"))


def per_request(results: dict) -> list[list[float]]:
    """Each document's log-likelihood of each choice, in document order."""
    return [[float(x[0][0]) for x in s["resps"]] for s in sorted(results["samples"][TASK], key=lambda s: s["doc_id"])]


def test_server_and_in_process_routes_agree(smol, vector_file, tasks):
    from steerlab.vector import SteeringVector

    inproc, served = {}, {}
    for mult in (0, 12):
        spec = {"vectors": [{"name": str(vector_file), "multiplier": mult, "window": "all"}]}
        inproc[mult] = lm_eval.simple_evaluate(model=SteerlabLM(lm=smol, steering=spec), tasks=[TASK],
                                               task_manager=tasks, limit=LIMIT, log_samples=True)
    app = create_app(smol, {"sentiment": SteeringVector.load(vector_file, smol)}, batch_wait=0.0)
    with BackgroundServer(app) as srv:
        for mult in (0, 12):
            served[mult] = lm_eval.simple_evaluate(
                model="local-completions", tasks=[TASK], task_manager=tasks, limit=LIMIT, log_samples=True,
                model_args=f"model=smollm2-135m+sentiment*{mult}@all,base_url={srv.url}/v1/completions,max_retries=1")
    for mult in (0, 12):
        assert served[mult]["results"][TASK]["acc,none"] == inproc[mult]["results"][TASK]["acc,none"]
        a, b = per_request(served[mult]), per_request(inproc[mult])
        assert len(a) == LIMIT and all(x == pytest.approx(y, abs=1e-3) for x, y in zip(a, b, strict=True))
    # the steering is real: the strong vector costs this task accuracy (1.0 -> 0.75 on the whole set)
    assert inproc[12]["results"][TASK]["acc,none"] < inproc[0]["results"][TASK]["acc,none"]
    assert per_request(inproc[12]) != per_request(inproc[0])



def test_chat_completions_route_generates_what_the_in_process_model_generates(smol, vector_file, tasks):
    """lm-eval's local-chat-completions (generation tasks, chat template applied by the server) against
    steerlab serve, steering in the model name, gives the same text per document as the in-process
    model with --apply_chat_template, steered (CAA's own window) and unsteered."""
    from steerlab.vector import SteeringVector

    task, limit = "steerlab_facts", 8

    def texts(results: dict) -> list[str]:
        return [s["resps"][0][0] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]

    app = create_app(smol, {"sentiment": SteeringVector.load(vector_file, smol)}, batch_wait=0.0)
    served, inproc = {}, {}
    with BackgroundServer(app) as srv:
        for mult in (0, 10):
            served[mult] = texts(lm_eval.simple_evaluate(
                model="local-chat-completions", tasks=[task], task_manager=tasks, limit=limit, log_samples=True,
                apply_chat_template=True, model_args=f"model=smollm2-135m+sentiment*{mult},"
                f"base_url={srv.url}/v1/chat/completions,max_retries=1"))
    for mult in (0, 10):
        spec = {"vectors": [{"name": str(vector_file), "multiplier": mult}]}
        inproc[mult] = texts(lm_eval.simple_evaluate(model=SteerlabLM(lm=smol, steering=spec), tasks=[task],
                                                     task_manager=tasks, limit=limit, log_samples=True,
                                                     apply_chat_template=True))
    assert served == inproc
    assert served[10] != served[0]  # the steering reached the generations


def test_tasks_are_written_offline(tmp_path, shared_data):
    caa_file = shared_data / "caa" / "corrigible-neutral-HHH.json"
    if not caa_file.exists():
        caa_file = next((shared_data / "caa").glob("*.json"))
    folder = write_tasks(tmp_path, behaviour_files=[caa_file])
    name = task_name(caa_file)
    assert (folder / f"{name}.yaml").exists()
    rows = [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines()]
    assert len(rows) == len(datasets.load(caa_file))
    assert all(r["choices"] == ["(A)", "(B)"] and r["target"] in (0, 1) for r in rows)
    assert {r["target"] for r in rows} == {0, 1}


def test_eval_command(vector_file, tmp_path, shared_data, capsys):
    caa_file = next((shared_data / "caa").glob("*.json"))
    code = main(["eval", "--tasks", "steerlab_quiz", "--behaviour", str(caa_file), "--limit", "6",
                 "--vector", f"{vector_file}:4", "--window", "all", "--task-folder", str(tmp_path / "tasks"),
                 "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(report["results"]) == {"steerlab_quiz", task_name(caa_file)}
    assert report["steering"]["vectors"][0]["multiplier"] == 4.0
    assert "steerlab_quiz" in capsys.readouterr().out


def test_eval_command_refuses_a_bad_window(vector_file, tmp_path, capsys):
    assert main(["eval", "--vector", str(vector_file), "--window", "sideways", "--out", str(tmp_path)]) == 2
    assert "window" in capsys.readouterr().err


def test_card_on_the_embedded_model(smol, vector_file, tmp_path):
    from steerlab.evaluate.card import dose_response
    from steerlab.vector import SteeringVector

    vec = SteeringVector.load(vector_file, smol)
    items = datasets.to_open_answers(datasets.builtin("sentiment"))[-8:]  # the form this vector was read on
    card = dose_response(smol, vec, "sentiment", items, [-4, 4],
                         tasks=["steerlab_facts_mc"], limit=8, task_folder=tmp_path / "tasks")
    assert [r.multiplier for r in card.rows] == [-4.0, 0.0, 4.0]  # 0 is always measured
    base = card.baseline()
    assert base.kl == pytest.approx(0.0, abs=1e-6)
    assert all(r.kl > 0.01 and r.perplexity > base.perplexity for r in card.rows if r.multiplier)
    # the behaviour column is CAA's p(matching) at each multiplier, as the behaviour scorer gives it
    from steerlab.evaluate.behaviour import answer_logprobs, p_matching

    direct = p_matching(answer_logprobs(smol, items, vec, [-4.0, 0.0, 4.0])).mean(1)
    assert [r.p_matching for r in card.rows] == pytest.approx(direct.tolist(), abs=1e-5)
    span = card.within_budget()
    assert span is not None and span[0] <= 0 <= span[1]
    folder = card.save(tmp_path / "card").parent
    assert (folder / "card.png").stat().st_size > 10_000
    saved = json.loads((folder / "card.json").read_text())
    assert saved["within_budget"] == list(span) and len(saved["rows"]) == 3
    assert "Within the budget" in (folder / "card.md").read_text()


def test_within_budget_reads_every_task():
    from steerlab.evaluate.card import CardRow, DoseResponseCard

    def row(m, a, b):
        return CardRow(m, 0.5, 0.0, {"x": a, "y": b}, {"x": 0.0, "y": 0.0}, 10.0, 0.0)

    card = DoseResponseCard("m", "v", [8], "b", 10, ["x", "y"], 2.0,
                            [row(-4, 0.70, 0.80), row(-2, 0.79, 0.80), row(0, 0.80, 0.80), row(2, 0.80, 0.785),
                             row(4, 0.80, 0.70)])
    assert card.within_budget() == (-2.0, 2.0)
    card.budget = 0.5
    assert card.within_budget() == (0.0, 0.0)


def test_rolling_log_likelihood_scores_every_token_once_in_windows(smol):
    """Perplexity tasks: a document within the window is one pass (prefix token, then every token);
    a longer one is cut into lm-eval's disjoint rolling windows, each token scored once with up to
    max_length tokens before it."""
    from lm_eval.api.instance import Instance
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = ("The harbour was quiet that morning. Gulls circled over the boats while the fishermen mended "
            "their nets and talked about the weather, the price of fuel and the football.")
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    ids = smol.tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = SteerlabLM(lm=smol)
    full = whole.score([[whole.prefix_token_id, *ids]])[0]
    full_sum = sum(e.logprob for e in full[1:])
    assert whole.loglikelihood_rolling(request)[0] == pytest.approx(full_sum, abs=1e-3)

    short = SteerlabLM(lm=smol, max_length=16)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=ids, prefix_token=whole.prefix_token_id, max_seq_len=16, context_len=1)]
    assert len(windows) > 2 and sum(len(target) for _, target in windows) == len(ids)
    by_hand = 0.0
    for context, target in windows:
        row = (context + target)[-17:]  # 16 tokens of input, predicting the next one each
        assert len(row) > len(target)  # every scored token has at least one token before it
        by_hand += sum(e.logprob for e in whole.score([row])[0][len(row) - len(target):])
    windowed = short.loglikelihood_rolling(request)[0]
    assert windowed == pytest.approx(by_hand, abs=1e-3)
    assert windowed < full_sum  # less context: a lower likelihood


def test_card_command_scores_held_out_option_texts(vector_file, tmp_path, capsys):
    code = main(["card", "--vector", str(vector_file), "--behaviour", "sentiment", "--split", "test", "--open-answers",
                 "--behaviour-items", "4", "--multipliers=0,4", "--tasks", "", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["behaviour"] == "sentiment (test half), option texts" and card["n_behaviour"] == 4
    assert [r["multiplier"] for r in card["rows"]] == [0, 4] and card["rows"][0]["kl"] == 0
