r"""``seq2seq-ot``: does the OT term of Chen et al. (ICLR 2019) help a small translation model?

Chen et al. add to the maximum-likelihood (MLE) loss of a sequence-to-sequence model an optimal
transport term between the decoder's *soft* output embeddings and the reference sentence's
embeddings (:func:`~couplings.seq_ot.soft_copy_ot_loss`, the "soft-copying" term), optionally
also one against the source sentence (:func:`~couplings.seq_ot.sequence_ot_loss`, the
"sequence-level" term), and train ``MLE + 0.1 * OT``. Their corpora (IWSLT14, Gigaword) are
downloads, unavailable here, so we run the method on a locally generated translation task and
report whether the term helps, seed by seed.

**Task.** A toy language pair with a tiny grammar. A source sentence is ``NP V NP`` or
``NP V NP V NP``, with a noun phrase ``NP = [the] [adjective] noun`` and a verb ``V``. Its
translation

- drops the article ``the`` (deletion),
- puts the adjective after the noun (local reordering),
- chooses between two synonyms of each adjective by the gender of its noun (agreement: a
  context-dependent choice between two target words with one source word),
- writes some verbs with an auxiliary (``V -> aux V'``, fertility 2).

Source vocabulary 22 words, target vocabulary 27, source length <= 10, target length <= 10 (+ an
end token). Both sides share one joint vocabulary and one embedding matrix (as with joint
sub-words in NMT); this is our choice for the sequence-level term: the generated soft embeddings
are compared with the source words' embeddings in the same space, no projection.

**Model.** A bidirectional GRU encoder, a GRU decoder with Luong ("general") attention, embedding
32, hidden 64, dropout 0.1, tied to nothing; teacher-forced training with Adam, greedy decoding
at test time.

**Arms** (same data, same initialisation and same batches for every arm of a seed: a paired
comparison): ``MLE``; ``MLE+OT`` = MLE + 0.1 soft-copy OT; ``MLE+OT+seq`` = MLE + 0.1 soft-copy
OT + 0.1 sequence-level OT. OT uses IPOT with ``beta = 1`` and 10 outer iterations, 1 inner
(the settings of the authors' texar code, ``IPOT_distance2``, behind their IWSLT numbers; their
NMT code uses ``beta = 0.5`` and 50 steps, five times the cost per training step, more than our
CPU budget allows), gradients through the unrolled iterations. Padding gets
zero transport weight. The soft-copy term matches every real target position (words and the end
token); the sequence-level term matches the target word positions with the source words.

**Regimes.** A low-data one (few training pairs, where a regulariser could matter) and a larger
one. **Metrics** on a held-out test set, greedy decoding: token accuracy (position-wise matches
with the reference, divided by the reference length, pooled over the test set), exact-match rate
and corpus BLEU-4 (``sacrebleu`` on the token ids, uniform weights, no smoothing). The
paper's IWSLT14 de-en BLEU (MLE 26.44 ± 0.18, MLE+OT 27.79 ± 0.12, from the authors' README) is
shown beside ours for the pattern only: the data differ.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from ..seq_ot import sequence_ot_loss, soft_copy_ot_loss
from .base import Compared, Experiment, ExperimentResult, RunContext, Table, torch_threads

__all__ = ["EXPERIMENT", "METHODS", "Seq2SeqOTConfig", "ToyTranslation", "corpus_bleu",
           "Seq2Seq", "train_and_evaluate"]

# method -> (weight of the soft-copy OT term, weight of the sequence-level OT term)
METHODS = {"MLE": (0.0, 0.0), "MLE+OT": (0.1, 0.0), "MLE+OT+seq": (0.1, 0.1)}

# Chen et al. 2019, IWSLT14 de-en BLEU (README of LiqunChen0606/OT-Seq2Seq); no "+seq" number
PAPER_BLEU = {"MLE": "26.44 ± 0.18", "MLE+OT": "27.79 ± 0.12"}

PAD, BOS, EOS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Seq2SeqOTConfig:
    """Settings; the defaults are the full setting.

    Attributes:
        regimes: training-set sizes, one regime each (e.g. a low-data one and a larger one).
        methods: names from :data:`METHODS`.
        n_seeds: independent (data, initialisation) draws per regime; every method runs on each.
        n_test: held-out test pairs.
        steps: training steps; batch_size: pairs per step; lr: Adam learning rate.
        emb_dim, hidden, dropout: model sizes.
        ot_beta, ot_max_iter: IPOT proximal step and outer iterations.
        num_threads: torch threads.
    """

    regimes: tuple[int, ...] = (150, 500)
    methods: tuple[str, ...] = tuple(METHODS)
    n_seeds: int = 3
    n_test: int = 1000
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    emb_dim: int = 32
    hidden: int = 64
    dropout: float = 0.1
    ot_beta: float = 1.0
    ot_max_iter: int = 10
    num_threads: int = 1

    @classmethod
    def quick(cls) -> Seq2SeqOTConfig:
        return cls(regimes=(150,), methods=("MLE", "MLE+OT"), n_seeds=1, n_test=300, steps=300)

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}.")
        if not self.regimes or any(int(n) < 1 for n in self.regimes):
            raise ValueError(f"regimes must be positive training-set sizes, got {self.regimes}.")


# ---------------------------------------------------------------------------------------------
# data


class ToyTranslation:
    """The toy language pair; token ids index one joint vocabulary.

    Ids: ``0`` padding, ``1`` begin, ``2`` end, then the source words (``the``, nouns,
    adjectives, verbs), then the target words (nouns, adjectives in two genders, verbs, ``aux``).

    Example:
        >>> import torch
        >>> task = ToyTranslation()
        >>> task.vocab_size, task.max_source_len, task.max_target_len
        (52, 10, 11)
        >>> src, tgt = task.sample(3, torch.Generator().manual_seed(0))
        >>> src.shape[0], tgt.shape[0], bool((tgt == 2).sum(-1).eq(1).all())
        (3, 3, True)
    """

    def __init__(self, n_nouns: int = 10, n_adjectives: int = 5, n_verbs: int = 6,
                 n_fertile: int = 2, max_source_len: int = 10):
        self.n_nouns, self.n_adjectives, self.n_verbs = n_nouns, n_adjectives, n_verbs
        self.n_fertile = n_fertile
        self.max_source_len = max_source_len
        self.max_target_len = max_source_len + 1  # fertility 2 only for verbs, articles dropped
        nxt = 3
        self.the = nxt
        self.src_noun = list(range(nxt + 1, nxt + 1 + n_nouns))
        self.src_adj = list(range(self.src_noun[-1] + 1, self.src_noun[-1] + 1 + n_adjectives))
        self.src_verb = list(range(self.src_adj[-1] + 1, self.src_adj[-1] + 1 + n_verbs))
        base = self.src_verb[-1] + 1
        self.n_source_words = base - 3
        self.tgt_noun = list(range(base, base + n_nouns))
        base += n_nouns
        self.tgt_adj = [(base + 2 * j, base + 2 * j + 1) for j in range(n_adjectives)]
        base += 2 * n_adjectives
        self.tgt_verb = list(range(base, base + n_verbs))
        self.aux = base + n_verbs
        self.vocab_size = self.aux + 1
        self.n_target_words = self.vocab_size - 3 - self.n_source_words

    def _noun_phrase(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        noun = int(rng.integers(self.n_nouns))
        src, tgt = [], [self.tgt_noun[noun]]
        if rng.random() < 0.5:
            src.append(self.the)
        if rng.random() < 0.5:
            adj = int(rng.integers(self.n_adjectives))
            src.append(self.src_adj[adj])
            tgt.append(self.tgt_adj[adj][noun % 2])  # agreement with the noun's gender
        src.append(self.src_noun[noun])
        return src, tgt

    def _verb(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        verb = int(rng.integers(self.n_verbs))
        tgt = [self.aux, self.tgt_verb[verb]] if verb < self.n_fertile else [self.tgt_verb[verb]]
        return [self.src_verb[verb]], tgt

    def sentence(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One (source, target) pair of word ids (no begin/end tokens)."""
        while True:
            parts = [self._noun_phrase(rng)]
            for _ in range(1 if rng.random() < 0.5 else 2):
                parts += [self._verb(rng), self._noun_phrase(rng)]
            src = [w for s, _ in parts for w in s]
            tgt = [w for _, t in parts for w in t]
            if len(src) <= self.max_source_len and len(tgt) < self.max_target_len:
                return src, tgt

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs: sources ``(n, S)`` and targets ``(n, T)`` ending with the end token,
        both padded with ``0`` to their longest member."""
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        pairs = [self.sentence(rng) for _ in range(n)]
        src = torch.zeros(n, max(len(s) for s, _ in pairs), dtype=torch.long)
        tgt = torch.zeros(n, max(len(t) for _, t in pairs) + 1, dtype=torch.long)
        for i, (s, t) in enumerate(pairs):
            src[i, :len(s)] = torch.tensor(s)
            tgt[i, :len(t) + 1] = torch.tensor(t + [EOS])
        return src, tgt


# ---------------------------------------------------------------------------------------------
# model


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder, GRU decoder with Luong general attention, one shared
    embedding over the joint vocabulary.

    Example:
        >>> import torch
        >>> model = Seq2Seq(20, emb_dim=8, hidden=16)
        >>> src = torch.tensor([[5, 6, 7], [8, 9, 0]])
        >>> model(src, torch.tensor([[1, 11, 12], [1, 13, 0]])).shape
        torch.Size([2, 3, 20])
        >>> model.greedy(src, max_len=4).shape
        torch.Size([2, 4])
    """

    def __init__(self, vocab_size: int, emb_dim: int = 32, hidden: int = 64,
                 dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.encoder = nn.GRU(emb_dim, hidden // 2, batch_first=True, bidirectional=True)
        self.init = nn.Linear(hidden, hidden)
        self.decoder = nn.GRU(emb_dim, hidden, batch_first=True)
        self.attn = nn.Linear(hidden, hidden, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab_size)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: torch.Tensor):
        """Encoder states ``(B, S, H)``, source mask ``(B, S)`` and initial decoder state."""
        mask = src != PAD
        lengths = mask.sum(-1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.embedding(src)), lengths.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        enc, _ = self.encoder(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True,
                                                  total_length=src.shape[1])  # (B, S, H)
        mean = (enc * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1)
        return enc, mask, torch.tanh(self.init(mean)).unsqueeze(0)  # (1, B, H)

    def _logits(self, dec: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = dec @ self.attn(enc).transpose(1, 2)  # (B, T, S)
        alpha = torch.softmax(scores.masked_fill(~mask.unsqueeze(1), float("-inf")), -1)
        context = alpha @ enc  # (B, T, H)
        hidden = torch.tanh(self.combine(torch.cat([dec, context], -1)))
        return self.out(self.drop(hidden))  # (B, T, V)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)`` for decoder inputs ``tgt_in`` ``(B, T)``."""
        enc, mask, h0 = self.encode(src)
        dec, _ = self.decoder(self.drop(self.embedding(tgt_in)), h0)
        return self._logits(dec, enc, mask)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, max_len: int) -> torch.Tensor:
        """Greedy decoding: ``(B, max_len)`` token ids (anything after an end token is junk)."""
        enc, mask, h = self.encode(src)
        token = src.new_full((src.shape[0], 1), BOS)
        out = []
        for _ in range(max_len):
            dec, h = self.decoder(self.embedding(token), h)
            token = self._logits(dec, enc, mask).argmax(-1)  # (B, 1)
            out.append(token)
        return torch.cat(out, 1)


# ---------------------------------------------------------------------------------------------
# metrics


def _strip(ids: torch.Tensor) -> list[int]:
    """Token ids up to (not including) the first end token or padding."""
    out = []
    for t in ids.tolist():
        if t in (EOS, PAD):
            break
        out.append(t)
    return out


def corpus_bleu(references: list[list[int]], hypotheses: list[list[int]]) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty, no smoothing), 0 to 100, by
    ``sacrebleu`` on the token ids (no tokenization).

    This is the standard corpus BLEU of Papineni et al. (clipped n-gram counts summed over the
    corpus), so a corpus of exact copies scores 100 whatever its sentence lengths. (nltk's
    ``corpus_bleu`` does not fit here: it counts a sentence shorter than ``n`` as one unmatched
    ``n``-gram, so our exact 3-word translations would score below 100.)

    Example:
        >>> round(corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]]), 2)  # (4/5 3/4 2/3 1/2)^(1/4)
        66.87
    """
    try:
        import sacrebleu
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the seq2seq-ot experiment computes BLEU with sacrebleu; install it "
                          "with `pip install sacrebleu` (in the `experiments` extra).") from exc
    hyps = [" ".join(map(str, h)) for h in hypotheses]
    refs = [" ".join(map(str, r)) for r in references]
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none",
                                       force=True).score)


def evaluate(model: Seq2Seq, src: torch.Tensor, tgt: torch.Tensor, max_len: int) -> dict:
    """Greedy-decoding metrics on a test set: token accuracy, exact match and BLEU."""
    model.eval()
    hyp_ids = model.greedy(src, max_len)
    refs = [_strip(t) for t in tgt]
    hyps = [_strip(h) for h in hyp_ids]
    correct = sum(sum(int(i < len(h) and h[i] == w) for i, w in enumerate(r))
                  for r, h in zip(refs, hyps, strict=True))
    return {
        "token_accuracy": correct / sum(len(r) for r in refs),
        "exact_match": float(np.mean([r == h for r, h in zip(refs, hyps, strict=True)])),
        "bleu": corpus_bleu(refs, hyps),
    }


# ---------------------------------------------------------------------------------------------
# training


def _losses(model: Seq2Seq, src, tgt, copy_weight: float, seq_weight: float,
            config: Seq2SeqOTConfig) -> dict:
    tgt_in = torch.cat([tgt.new_full((tgt.shape[0], 1), BOS), tgt[:, :-1]], 1)
    tgt_in = tgt_in.masked_fill(tgt_in == EOS, PAD)  # the end token is never an input
    logits = model(src, tgt_in)  # (B, T, V)
    real = tgt != PAD
    mle = nn.functional.cross_entropy(logits[real], tgt[real])
    out = {"mle": mle, "total": mle}
    if copy_weight:
        ot = soft_copy_ot_loss(logits, tgt, model.embedding, logits_mask=real, target_mask=real,
                               beta=config.ot_beta, max_iter=config.ot_max_iter)
        out["ot"] = ot
        out["total"] = out["total"] + copy_weight * ot
    if seq_weight:
        words = real & (tgt != EOS)
        seq = sequence_ot_loss(logits, src, model.embedding, logits_mask=words,
                               source_mask=src != PAD, beta=config.ot_beta,
                               max_iter=config.ot_max_iter)
        out["seq"] = seq
        out["total"] = out["total"] + seq_weight * seq
    return out


def train_and_evaluate(config: Seq2SeqOTConfig, n_train: int, method: str,
                       generator: torch.Generator) -> dict:
    """Train one model of ``method`` on ``n_train`` pairs and evaluate it on the test set.

    ``generator`` fixes the data, the initialisation and the batches; it should not depend on the
    method, so that the methods of one seed form a paired comparison.
    """
    copy_weight, seq_weight = METHODS[method]
    task = ToyTranslation()
    src, tgt = task.sample(n_train, generator)
    test_src, test_tgt = task.sample(config.n_test, generator)
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    model = Seq2Seq(task.vocab_size, config.emb_dim, config.hidden, config.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    batch_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,),
                                                                generator=generator)))
    dropout_seed = int(torch.randint(2**62, (1,), generator=generator))
    torch.manual_seed(dropout_seed)
    curve = []
    start = time.perf_counter()
    model.train()
    for step in range(config.steps):
        idx = torch.randint(0, n_train, (min(config.batch_size, n_train),), generator=batch_gen)
        s, t = src[idx], tgt[idx]
        s, t = s[:, :int((s != PAD).sum(-1).max())], t[:, :int((t != PAD).sum(-1).max())]
        losses = _losses(model, s, t, copy_weight, seq_weight, config)
        opt.zero_grad()
        losses["total"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % max(1, config.steps // 20) == 0 or step == config.steps - 1:
            curve.append([step, losses["mle"].item()])
    train_s = time.perf_counter() - start
    metrics = evaluate(model, test_src, test_tgt, task.max_target_len + 1)
    # the OT terms of the final model on a test batch, for every arm (diagnostic)
    with torch.no_grad():
        s, t = test_src[:200], test_tgt[:200]
        diag = _losses(model, s, t, 0.1, 0.1, config)
    return {**metrics, "test_mle": float(diag["mle"]), "test_ot": float(diag["ot"]),
            "test_seq_ot": float(diag["seq"]), "train_time_s": train_s, "curve": curve}


# ---------------------------------------------------------------------------------------------
# the experiment


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "per_seed": [float(v) for v in values]}


def run(config: Seq2SeqOTConfig, ctx: RunContext) -> ExperimentResult:
    units = [(n, m, s) for n in config.regimes for s in range(config.n_seeds)
             for m in config.methods]

    def work(unit):
        n, method, s = unit
        with torch_threads(config.num_threads):
            # the seed depends on (regime, seed) only: every method sees the same data and init
            out = train_and_evaluate(config, n, method, ctx.generator(n, s))
        return {"n_train": n, "method": method, "seed": s, **out}

    outcomes = ctx.map_units(units, work, key=lambda u: f"n{u[0]}-{u[1]}-seed{u[2]}",
                             desc="seq2seq-ot (regime, seed, method)")
    metric_names = ("token_accuracy", "exact_match", "bleu", "test_mle", "test_ot",
                    "test_seq_ot")
    summary: dict = {}
    for n in config.regimes:
        for m in config.methods:
            runs = sorted((o for o in outcomes if o["n_train"] == n and o["method"] == m),
                          key=lambda o: o["seed"])
            summary.setdefault(str(n), {})[m] = {k: _stats([o[k] for o in runs])
                                                 for k in metric_names}
    # paired differences against MLE, seed by seed
    paired: dict = {}
    if "MLE" in config.methods:
        for n in config.regimes:
            base = summary[str(n)]["MLE"]
            for m in config.methods:
                if m == "MLE":
                    continue
                cell = {}
                for k in ("token_accuracy", "bleu"):
                    diff = [x - y for x, y in zip(summary[str(n)][m][k]["per_seed"],
                                                  base[k]["per_seed"], strict=True)]
                    cell[k] = {"mean": float(np.mean(diff)), "std": float(np.std(diff)),
                               "wins": int(sum(d > 0 for d in diff)),
                               "losses": int(sum(d < 0 for d in diff)), "per_seed": diff}
                paired.setdefault(str(n), {})[m] = cell

    def pm(stat, scale=1.0, digits=1):
        return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"

    rows = []
    for n in config.regimes:
        for m in config.methods:
            s = summary[str(n)][m]
            rows.append([n, m, pm(s["token_accuracy"], 100), pm(s["exact_match"], 100),
                         Compared(pm(s["bleu"]), PAPER_BLEU.get(m)), pm(s["test_mle"], 1, 3),
                         pm(s["test_ot"], 1, 3)])
    tables = [Table(
        "Toy translation, greedy decoding on held-out pairs",
        ["train pairs", "method", "token acc. (%)", "exact match (%)", "BLEU", "test NLL/token",
         "test soft-copy OT"],
        rows,
        caption=(f"Mean ± std over {config.n_seeds} seed(s), {config.steps} steps of batch "
                 f"{config.batch_size}, {config.n_test} test pairs. Paper: Chen et al. 2019, "
                 "IWSLT14 de-en BLEU (different data and model: compare the pattern only)."),
    )]
    if paired:
        prow = []
        for n in config.regimes:
            for m, cell in paired[str(n)].items():
                prow.append([n, m, f"{100 * cell['token_accuracy']['mean']:+.2f} ± "
                                   f"{100 * cell['token_accuracy']['std']:.2f}",
                             f"{cell['token_accuracy']['wins']}/{config.n_seeds}",
                             f"{cell['bleu']['mean']:+.2f} ± {cell['bleu']['std']:.2f}",
                             f"{cell['bleu']['wins']}/{config.n_seeds}"])
        tables.append(Table(
            "Paired difference to MLE (same data, initialisation and batches per seed)",
            ["train pairs", "method", "Δ token acc. (points)", "seeds better", "Δ BLEU",
             "seeds better"],
            prow,
            caption="Mean ± std over seeds of (method − MLE); 'seeds better' counts seeds where "
                    "the method beats MLE.",
        ))
    verdict = _verdict(config, paired)
    notes = [
        verdict,
        f"The OT terms use IPOT (beta = {config.ot_beta}, {config.ot_max_iter} outer "
        "iterations, 1 inner), gradients through the unrolled iterations; padded positions get "
        "zero transport weight. Source and target share one joint vocabulary and embedding (our "
        "choice for the sequence-level term).",
        f"Total training time {sum(o['train_time_s'] for o in outcomes):.0f} s on "
        f"{config.num_threads} thread(s).",
    ]
    return ExperimentResult(
        metrics={"summary": summary, "paired": paired, "units": outcomes, "verdict": verdict},
        tables=tables, figures={"bleu": _figure(config, summary, paired)}, notes=notes,
        headline=_headline(config, paired),
    )


def _verdict(config: Seq2SeqOTConfig, paired: dict) -> str:
    if not paired:
        return "No MLE baseline in this run: no paired comparison."
    parts = []
    for n in config.regimes:
        for m, cell in paired[str(n)].items():
            b = cell["bleu"]
            # "helps" only when better on every seed and by more than the seed-to-seed spread
            if config.n_seeds < 2:
                word = "one seed, no conclusion"
            elif b["wins"] == config.n_seeds and b["mean"] > b["std"]:
                word = "helps"
            elif b["losses"] == config.n_seeds and -b["mean"] > b["std"]:
                word = "hurts"
            else:
                word = "makes no consistent difference"
            parts.append(f"{m} vs MLE with {n} training pairs: {word} (Δ BLEU {b['mean']:+.2f} ± "
                         f"{b['std']:.2f}, better on {b['wins']}/{config.n_seeds} seeds)")
    return ("Verdict (BLEU, paired by seed; 'helps' means better on every seed by more than "
            "the spread of the differences): " + "; ".join(parts) + ".")


def _headline(config: Seq2SeqOTConfig, paired: dict) -> dict:
    out = {}
    for n in config.regimes:
        cell = paired.get(str(n), {}).get("MLE+OT")
        if cell is not None:
            out[f"Δ BLEU MLE+OT − MLE ({n} pairs)"] = round(cell["bleu"]["mean"], 2)
    return out


def _figure(config: Seq2SeqOTConfig, summary: dict, paired: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    offsets = np.linspace(-0.25, 0.25, len(config.methods))
    x = np.arange(len(config.regimes))
    ax = axes[0]
    for i, m in enumerate(config.methods):  # mean ± std and the seeds as dots
        stats = [summary[str(n)][m]["bleu"] for n in config.regimes]
        ax.errorbar(x + offsets[i], [s["mean"] for s in stats], [s["std"] for s in stats],
                    fmt="o", capsize=4, label=m, color=f"C{i}")
        for j, s in enumerate(stats):
            ax.plot([x[j] + offsets[i]] * len(s["per_seed"]), s["per_seed"], ".",
                    color=f"C{i}", alpha=0.5)
    ax.set_ylabel("test BLEU (greedy)")
    ax.set_title("BLEU per method")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.axhline(0, color="k", lw=0.8)
    for i, m in enumerate(config.methods):
        if m == "MLE" or not paired:
            continue
        for j, n in enumerate(config.regimes):
            diff = paired[str(n)][m]["bleu"]["per_seed"]
            ax.plot([x[j] + offsets[i]] * len(diff), diff, "o", color=f"C{i}", alpha=0.7,
                    label=m if j == 0 else None)
            ax.plot([x[j] + offsets[i] - 0.08, x[j] + offsets[i] + 0.08], [np.mean(diff)] * 2,
                    "-", color=f"C{i}", lw=2)
    ax.set_ylabel("Δ BLEU vs MLE, same seed")
    ax.set_title("paired difference (dots: seeds, bar: mean)")
    if paired:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels([f"{n} training pairs" for n in config.regimes])
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="seq2seq-ot",
    description="Toy translation, GRU seq2seq with attention: MLE vs MLE + 0.1 IPOT soft-copy "
                "OT (Chen et al. 2019), 3 seeds, low and larger data.",
    config_type=Seq2SeqOTConfig,
    run=run,
)
