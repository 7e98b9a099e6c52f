"""The seq2seq-ot experiment: the toy language pair, BLEU, a few training steps, a micro run."""

import dataclasses
import json

import numpy as np
import torch

from couplings.experiments import get
from couplings.experiments.runner import run_experiment
from couplings.experiments.seq2seq_ot import (
    EOS,
    METHODS,
    PAD,
    Seq2Seq,
    Seq2SeqOTConfig,
    ToyTranslation,
    _losses,
    corpus_bleu,
)


def _translate(task: ToyTranslation, src: list[int]) -> list[int]:
    """The grammar's translation, written independently of the generator: drop articles, put
    the adjective after its noun in the noun's gender, an auxiliary before fertile verbs."""
    out, pending_adj = [], None
    for w in src:
        if w == task.the:
            continue
        if w in task.src_adj:
            pending_adj = task.src_adj.index(w)
        elif w in task.src_noun:
            noun = task.src_noun.index(w)
            out.append(task.tgt_noun[noun])
            if pending_adj is not None:
                out.append(task.tgt_adj[pending_adj][noun % 2])
                pending_adj = None
        else:
            verb = task.src_verb.index(w)
            out += ([task.aux] if verb < task.n_fertile else []) + [task.tgt_verb[verb]]
    return out


def test_toy_translation_follows_its_grammar():
    task = ToyTranslation()
    src, tgt = task.sample(400, torch.Generator().manual_seed(0))
    assert src.shape[1] <= task.max_source_len and tgt.shape[1] <= task.max_target_len
    source_words = set(range(3, 3 + task.n_source_words))
    target_words = set(range(3 + task.n_source_words, task.vocab_size))
    assert len(target_words) == task.n_target_words == 27 and len(source_words) == 22
    reorders = 0
    for s, t in zip(src.tolist(), tgt.tolist(), strict=True):
        s = [w for w in s if w != PAD]
        t = [w for w in t if w != PAD]
        assert t[-1] == EOS and EOS not in t[:-1]
        assert set(s) <= source_words and set(t[:-1]) <= target_words
        assert t[:-1] == _translate(task, s)
        reorders += any(a in task.src_adj and b in task.src_noun
                        for a, b in zip(s[:-1], s[1:], strict=True))
    assert reorders > 50  # the reordering rule is exercised
    # the two synonyms of an adjective both occur (agreement with the noun)
    flat = set(tgt.flatten().tolist())
    assert all(f in flat for pair in task.tgt_adj for f in pair)


def test_corpus_bleu_matches_the_definition():
    # one sentence, precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty
    assert abs(corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]]) - 100 * 0.2**0.25) < 1e-9
    assert abs(corpus_bleu([[1, 2, 3, 4], [5, 6, 7, 8, 9]], [[1, 2, 3, 4], [5, 6, 7, 8, 9]])
               - 100.0) < 1e-9
    # brevity penalty exp(1 - r / c) for a correct but short hypothesis
    value = corpus_bleu([[1, 2, 3, 4, 5, 6, 7, 8]], [[1, 2, 3, 4, 5, 6]])
    assert abs(value - 100 * np.exp(1 - 8 / 6)) < 1e-9
    assert corpus_bleu([[1, 2, 3, 4]], [[9, 9, 9, 9]]) == 0.0
    assert corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 9, 4, 5]]) == 0.0  # no 4-gram match, unsmoothed
    # exact copies score 100 whatever their lengths (nltk would give 90.4 here)
    refs = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    assert abs(corpus_bleu(refs, refs) - 100.0) < 1e-9
    # corpus level: clipped counts summed over sentences, then one geometric mean
    refs, hyps = [[1, 2, 3, 4, 5], [6, 7, 8, 9]], [[1, 2, 3, 4, 6], [6, 7, 8, 9]]
    precisions = [8 / 9, 6 / 7, 4 / 5, 2 / 3]  # matched / hypothesis n-grams, n = 1..4
    assert abs(corpus_bleu(refs, hyps) - 100 * np.prod(precisions) ** 0.25) < 1e-9


def test_a_few_training_steps_decrease_the_loss():
    torch.manual_seed(0)
    task = ToyTranslation()
    src, tgt = task.sample(16, torch.Generator().manual_seed(1))
    config = dataclasses.replace(Seq2SeqOTConfig(), ot_max_iter=10)
    model = Seq2Seq(task.vocab_size, emb_dim=16, hidden=32, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        losses = _losses(model, src, tgt, *METHODS["MLE+OT+seq"], config)
        opt.zero_grad()
        losses["total"].backward()
        assert model.embedding.weight.grad is not None
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["total"] < 0.7 * history[0]["total"]
    assert history[-1]["ot"] < history[0]["ot"]
    assert set(history[0]) == {"mle", "total", "ot", "seq"}


def test_quick_config_is_small_and_registered():
    experiment = get("seq2seq-ot")
    quick = experiment.config(quick=True)
    full = experiment.config()
    assert quick.n_seeds == 1 and len(quick.regimes) == 1 and "MLE" in quick.methods
    assert "MLE+OT" in quick.methods and quick.steps < full.steps
    assert full.n_seeds == 3 and set(full.methods) == set(METHODS) and len(full.regimes) == 2


def test_micro_run_produces_the_tables(tmp_path):
    config = dataclasses.replace(Seq2SeqOTConfig.quick(), regimes=(16,), n_seeds=2, steps=3,
                                 n_test=16, batch_size=8, ot_max_iter=5,
                                 methods=("MLE", "MLE+OT", "MLE+OT+seq"))
    record = run_experiment(get("seq2seq-ot"), config, seed=0, out=tmp_path,
                            show_progress=False)
    tables = record.result.tables
    assert tables[0].columns == ["train pairs", "method", "token acc. (%)", "exact match (%)",
                                 "BLEU", "test NLL/token", "test soft-copy OT"]
    assert len(tables[0].rows) == 3 and len(tables[1].rows) == 2
    metrics = json.loads((tmp_path / "seq2seq-ot" / "metrics.json").read_text())["metrics"]
    for method in config.methods:
        cell = metrics["summary"]["16"][method]
        assert len(cell["bleu"]["per_seed"]) == 2
        assert 0 <= cell["token_accuracy"]["mean"] <= 1 and 0 <= cell["bleu"]["mean"] <= 100
    assert metrics["verdict"].startswith("Verdict")
    assert (tmp_path / "seq2seq-ot" / "report.md").exists()
    # every method of a seed saw the same data and initialisation: equal before training
    units = metrics["units"]
    firsts = {u["method"]: u["curve"][0][1] for u in units if u["seed"] == 0}
    assert len(set(np.round(list(firsts.values()), 10))) == 1
