"""Sinkhorn at scale: couplings against POT, GeomLoss and OTT-JAX, in one run, same problems.

Cases (``--cases``):

* ``dense``: solve entropic OT to a marginal tolerance on 2-D/3-D Gaussians and shapes, for
  ``n`` in ``--sizes`` and ``eps = eps_rel * mean cost`` for ``eps_rel`` in ``--eps-rel``.
  Every row reports time AND accuracy, measured identically on what each solver returns: the
  L1 marginal error ``|P 1 - a|_1 + |P^T 1 - b|_1`` and the relative gap of ``<P, C>`` to the
  exact OT cost (POT's network simplex, ``ot.emd2``, for ``n <= --exact-max``).
* ``iteration``: seconds per entry (``n * m``) of one log-domain iteration (two log-sum-exp
  passes), as ``(t(k_hi) - t(k_lo)) / (k_hi - k_lo)`` so that set-up and checks cancel.
* ``batched``: a Gumbel-Sinkhorn-like layer: ``B = 1024`` square ``32 x 32`` matrices, exactly
  20 iterations, loss and backward; our batched call against a per-sample loop of our own
  solver, a plain torch implementation (Mena et al. 2018), POT's ``ot.batch`` and OTT (vmap).
* ``online``: ``n = m = 100k`` 3-D point clouds without an ``n x m`` matrix; loss and gradient
  in the points after a fixed number of iterations; peak resident memory. A backend that does
  not exist is reported as "not supported" (ours: when ``couplings.sinkhorn`` has no
  ``backend=`` argument; GeomLoss: without pykeops).

Equal accuracy, each library's stopping rule (all at the same ``--tol``, default 1e-4):

* couplings: ``tol`` bounds the L1 error of both marginals, checked every 10 iterations
  (``couplings``: the default adaptive over-relaxation, ``momentum="auto"``; ``couplings-plain``:
  plain Sinkhorn, ``momentum=1``, where the column marginal is exact after each column update
  and the error is the row one).
* OTT-JAX: ``threshold = tol`` with ``norm_error = 1`` is the same L1 criterion on one marginal,
  checked every ``inner_iterations = 10`` iterations. ``ott-jit``: its default (no momentum);
  ``ott-jit-momentum``: its adaptive momentum, ``Momentum(start=20, inner_iterations=10)``
  (the relaxation of Lehmann et al. from the error ratio of iterations 10 and 20).
* POT: ``stopThr`` bounds the L2 norm of the column-marginal violation, checked every 10
  iterations. ``pot-*`` rows use ``stopThr = tol / sqrt(n)``, which guarantees an L1 error
  ``<= tol`` (stricter than ours in practice); ``pot-*-l2tol`` rows use ``stopThr = tol``
  (looser: L1 can reach ``sqrt(n) tol``). The measured errors show where each lands.
* GeomLoss has no tolerance: it runs an epsilon-scaling schedule from the squared diameter down
  to eps (``scaling`` 0.5, its default, and 0.9) and stops; its error is reported as measured.

What is timed: from the points to the potentials (or plan) in the dense case, so each library
builds its own cost matrix (``ot.dist``, OTT's ``PointCloud``, GeomLoss' tensorized cost, our
``PointCloud``); the cost is O(n m d), small beside the iterations. The batched case times the
loss and its backward pass. Accuracy is measured after the timed calls, outside them.

Caveats written into the tables: OTT updates ``g`` before ``f``, so after a fixed number of
iterations (batched case) its plan is exact on the other marginal and its gradient differs from
ours by the difference of one half-iteration; ott-jax 0.6.0 calls
``jax.interpreters.batching.is_vmappable``, removed in jax 0.10, in its online map: the worker
restores it as the constant ``False`` it returned for plain arrays and records the shim in the
row. POT's kernel mode (``pot-*-kernel``) is not log-domain: a matrix-vector product per
iteration, far cheaper than a log-sum-exp, and it under/overflows at small eps (then its row
shows a NaN error).

Method: each solver runs in its own subprocess per case (peak RSS per solver, no thread pool
shared between libraries, a hung solver is killed at ``--timeout`` and reported as "timeout").
Each is warmed up once (the first call, JIT compilation included, is reported apart), then timed
over ``--repeats`` calls; the median is reported. Threads: every worker is pinned to
``--threads`` CPUs (``sched_setaffinity``, which binds every pool including XLA's) and
``OMP/MKL/OPENBLAS_NUM_THREADS`` and ``torch.set_num_threads`` are set to the same number.
Problems come from ``--seed`` with numpy and reach every library as the same ``.npy`` files.
Dtype: ``--dtype`` (float32 by default) for every library; the exact cost and all accuracy
measurements are float64.

Outputs: ``<out>/sinkhorn-<host>-<date>.json`` (every raw timing, medians, errors, peak RSS,
versions, machine info, thread counts), ``<out>/sinkhorn-<host>-<date>-dense.png`` (time
against n per eps, log scales, one line per solver), ``...-ratios.png`` (time ratios against
the fastest other library), and a markdown table on stdout.

Run: ``python benchmarks/sinkhorn.py --quick --jax-python /tmp/jaxenv/bin/python`` (about two
minutes) or e.g. ``python benchmarks/sinkhorn.py --sizes 1000,4000 --eps-rel 0.1,0.01
--cases dense,iteration,batched --repeats 3``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_peers.py"

DENSE_SOLVERS = (
    "couplings", "couplings-plain", "couplings-scaling0.9", "couplings-compiled",
    "couplings-tensorized", "pot-np-log", "pot-np-kernel",
    "pot-torch-log", "pot-torch-log-l2tol", "pot-torch-kernel", "geomloss-0.5", "geomloss-0.9",
    "ott-jit", "ott-jit-momentum",
)
ITERATION_SOLVERS = ("couplings", "couplings-compiled", "couplings-tensorized", "ott-jit",
                     "pot-torch-log", "pot-np-log", "geomloss")
BATCHED_SOLVERS = ("couplings-batched", "couplings-loop", "torch-reference", "pot-batch",
                   "ott-vmap")
ONLINE_SOLVERS = ("couplings", "ott-online", "geomloss-online", "pot-lazy")
PROBLEMS = ("gauss2d", "gauss3d", "shapes2d", "shapes3d")


def library(solver: str) -> str:
    """The library a solver row belongs to (ratios are taken against other libraries)."""
    name = solver.split("@")[0].split("-")[0]  # couplings@geomloss-0.5 is ours
    return {"torch": "torch-reference"}.get(name, name)


# ------------------------------------------------------------------------------------------
# problems


def make_points(problem: str, n: int, seed: int):
    """Two point clouds of ``n`` points each, float64, from ``seed``.

    gauss2d/3d: ``N(0, I)`` against an anisotropic Gaussian moved by 1 along every axis.
    shapes2d: a ring (radius 1, width 0.2) against the filled square ``[-1, 1]^2`` moved by
    ``(0.5, 0)``. shapes3d: a noisy unit sphere (surface) against the cube ``[-1, 1]^3`` moved by
    ``(0.5, 0, 0)``.
    """
    g = np.random.default_rng([seed, n, PROBLEMS.index(problem)])
    d = 3 if problem.endswith("3d") else 2
    if problem.startswith("gauss"):
        x = g.normal(size=(n, d))
        scales = np.array([0.5, 2.0, 1.0][:d])
        y = g.normal(size=(n, d)) * scales + 1.0
    elif problem == "shapes2d":
        t = g.uniform(0, 2 * np.pi, n)
        r = 1.0 + 0.1 * g.uniform(-1, 1, n)
        x = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        y = g.uniform(-1, 1, size=(n, 2)) + np.array([0.5, 0.0])
    elif problem == "shapes3d":
        v = g.normal(size=(n, 3))
        x = v / np.linalg.norm(v, axis=1, keepdims=True) + 0.02 * g.normal(size=(n, 3))
        y = g.uniform(-1, 1, size=(n, 3)) + np.array([0.5, 0.0, 0.0])
    else:
        raise ValueError(f"unknown problem {problem!r}; expected one of {PROBLEMS}")
    return x, y


def mean_sq_cost(x, y) -> float:
    """Mean of ``|x_i - y_j|^2`` over all pairs, in closed form (uniform weights)."""
    return float((x * x).sum(1).mean() + (y * y).sum(1).mean() - 2 * x.mean(0) @ y.mean(0))


def write_problem(root: Path, name: str, arrays: dict) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(d / f"{k}.npy", v)
    return d


# ------------------------------------------------------------------------------------------
# running workers


class Runner:
    def __init__(self, args, tmp: Path):
        self.args, self.tmp, self.count = args, tmp, 0
        self.env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            self.env[var] = str(args.threads)
        self.env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if args.device == "cpu":
            self.env["JAX_PLATFORMS"] = "cpu"
        self.jax_ok, self.jax_reason = self._probe_jax()

    def _probe_jax(self):
        try:
            out = subprocess.run([self.args.jax_python, "-c", "import jax, ott"],
                                 capture_output=True, text=True, timeout=120, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{self.args.jax_python}: {exc}"
        if out.returncode:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            return False, (f"jax/ott-jax not importable by {self.args.jax_python} ({last}); "
                           "pass --jax-python")
        return True, ""

    def python_for(self, solver: str) -> str:
        return self.args.jax_python if solver.startswith("ott") else sys.executable

    def run(self, task: dict, timeout: float | None = None) -> dict:
        """Run one worker; a timeout or a crash becomes a row with a status, never an abort."""
        solver = task["solver"]
        timeout = timeout or self.args.timeout
        if solver.startswith("ott") and not self.jax_ok:
            return dict(solver=solver, kind=task["kind"], status="not available",
                        reason=self.jax_reason)
        self.count += 1
        task = dict(task, threads=self.args.threads, dtype=self.args.dtype,
                    device=self.args.device, repeats=task.get("repeats", self.args.repeats))
        tpath = self.tmp / f"task{self.count}.json"
        rpath = self.tmp / f"result{self.count}.json"
        tpath.write_text(json.dumps(task))
        cmd = [self.python_for(solver), str(WORKER), str(tpath), str(rpath)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return dict(solver=solver, kind=task["kind"], status="timeout",
                        reason=f"timeout > {timeout:g} s (start-up, warm-up and "
                               f"{task['repeats']} repeats)")
        wall = time.perf_counter() - t0
        if not rpath.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return dict(solver=solver, kind=task["kind"], status="failed",
                        reason=f"worker exited with {proc.returncode}: {tail}")
        res = json.loads(rpath.read_text())
        res["worker_wall_s"] = wall
        return res


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


class Partial:
    """Writes the results gathered so far after every row, so that an interrupted run keeps
    them (``<stem>.partial.json``, removed when the run completes)."""

    path: Path | None = None
    results: dict | None = None

    @classmethod
    def save(cls, case: str, rows: list[dict]):
        if cls.path is not None and cls.results is not None:
            cls.results["cases"][case] = rows
            cls.path.write_text(json.dumps(cls.results, indent=1, default=str))


def describe(res: dict) -> str:
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('reason', '')}"[:120]
    extra = ""
    if "marginal_error_l1" in res:
        extra = f", L1 err {res['marginal_error_l1']:.1e}"
    if "per_entry_ns" in res:
        return f"{res['per_iter_s']:.4g} s/iteration, {res['per_entry_ns']:.3f} ns/entry"
    return f"{res.get('median_s', float('nan')):.4g} s{extra}"


# ------------------------------------------------------------------------------------------
# cases


def run_dense(args, runner: Runner, root: Path) -> list[dict]:
    rows = []
    for problem in args.problems:
        for n in args.sizes:
            x, y = make_points(problem, n, args.seed)
            w = np.full(n, 1.0 / n)
            pdir = write_problem(root, f"{problem}-{n}", dict(x=x, y=y, a=w, b=w))
            mean_cost = mean_sq_cost(x, y)
            exact = None
            if n <= args.exact_max:
                res = runner.run(dict(kind="exact", solver="exact", problem=str(pdir)))
                exact = res.get("exact")
                log(f"[dense] {problem} n={n}: exact cost {exact} "
                    f"({res.get('seconds', res.get('reason'))} s)")
            for eps_rel in args.eps_rel:
                ctx = dict(problem=problem, n=n, eps_rel=eps_rel, eps=eps_rel * mean_cost,
                           mean_cost=mean_cost, exact=exact, pdir=pdir)
                solve = functools.partial(dense_row, args, runner, rows, ctx)
                case_rows = [solve(solver, args.tol) for solver in args.dense_solvers]
                if "couplings" in args.dense_solvers:
                    match_errors(case_rows, solve)
    add_ratios(rows, ("problem", "n", "eps_rel"))
    return rows


def dense_row(args, runner: Runner, rows: list[dict], ctx: dict, solver: str, tol: float,
              name: str | None = None) -> dict:
    """Solve one dense case (``ctx``: the problem, ``n``, ``eps``, the exact cost) with
    ``solver`` to ``tol``; append the row (named ``name`` if given) to ``rows`` and return it."""
    task = dict(kind="dense", solver=solver, problem=str(ctx["pdir"]), eps=ctx["eps"],
                tol=tol, max_iter=args.max_iter, single_above=args.single_above)
    res = runner.run(task)
    res.update(case="dense", tol=tol, **{k: v for k, v in ctx.items() if k != "pdir"})
    if name is not None:
        res["solver"] = name
    exact = ctx["exact"]
    if exact is not None and res.get("status") == "ok":
        res["gap_to_exact"] = (res["linear_value"] - exact) / exact
    classify(res)
    rows.append(res)
    Partial.save("dense", rows)
    log(f"[dense] {ctx['problem']} n={ctx['n']} eps_rel={ctx['eps_rel']} {res['solver']}: "
        f"{describe(res)}")
    return res


def match_errors(case_rows: list[dict], solve) -> None:
    """Equal accuracy for solvers without a tolerance (GeomLoss' fixed schedules stop where
    they stop): ours is solved again with ``tol`` set to each one's measured L1 marginal error,
    as row ``couplings@SOLVER``, and that solver's row gets ``ratio_at_its_error`` = its time
    over ours there (above 1: we reach its accuracy sooner)."""
    for r in case_rows:
        err = r.get("marginal_error_l1")
        if (not r["solver"].startswith("geomloss") or r.get("status") != "ok" or err is None
                or not err > r["tol"]):
            continue
        ours = solve("couplings", float(err), name=f"couplings@{r['solver']}")
        if ours.get("status") == "ok":
            r["ratio_at_its_error"] = r["median_s"] / ours["median_s"]
            r["couplings_at_its_error_s"] = ours["median_s"]


def classify(res: dict) -> None:
    """A solve whose measured plan lost its mass (an L1 marginal error above 0.5 of a total of
    2, or a non-finite one: e.g. a kernel-mode solver whose kernel underflowed) is a numerical
    failure, not a fast result: it is kept in the JSON and left out of the ratios."""
    err = res.get("marginal_error_l1")
    if res.get("status") == "ok" and err is not None and not (math.isfinite(err) and err <= 0.5):
        res["status"] = "numerical failure"
        res["reason"] = f"measured L1 marginal error {err:.3g} (the plan lost its mass)"


def add_ratios(rows: list[dict], keys: tuple) -> None:
    """Per case: each row's median time over the fastest row of ANOTHER library, (a) among all
    that ran and (b) among those whose measured L1 marginal error is no worse than this row's
    (``<= max(own error, tol)``): the ratio at equal or better accuracy."""
    cases: dict = {}
    for r in rows:
        for k in ("fastest_other", "ratio_vs_fastest_other", "fastest_other_at_accuracy",
                  "ratio_vs_fastest_other_at_accuracy"):
            r.pop(k, None)
        cases.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    for group in cases.values():
        ok = [r for r in group if r.get("status") == "ok" and math.isfinite(r.get("median_s", 0))]
        for r in ok:
            others = [o for o in ok if library(o["solver"]) != library(r["solver"])]
            if not others:
                continue
            best = min(others, key=lambda o: o["median_s"])
            r["fastest_other"] = best["solver"]
            r["ratio_vs_fastest_other"] = r["median_s"] / best["median_s"]
            err = r.get("marginal_error_l1")
            if err is None or not math.isfinite(err):
                continue
            bar = max(err, r.get("tol", 0.0))
            good = [o for o in others if math.isfinite(o.get("marginal_error_l1", math.nan))
                    and o["marginal_error_l1"] <= bar]
            if good:
                best = min(good, key=lambda o: o["median_s"])
                r["fastest_other_at_accuracy"] = best["solver"]
                r["ratio_vs_fastest_other_at_accuracy"] = r["median_s"] / best["median_s"]


def run_iteration(args, runner: Runner, root: Path) -> list[dict]:
    rows = []
    problem = args.problems[0]
    k_lo, k_hi = args.iter_k
    for n in args.sizes:
        x, y = make_points(problem, n, args.seed)
        w = np.full(n, 1.0 / n)
        pdir = write_problem(root, f"{problem}-{n}", dict(x=x, y=y, a=w, b=w))
        eps = args.eps_rel[0] * mean_sq_cost(x, y)
        for solver in args.iteration_solvers:
            res = runner.run(dict(kind="iteration", solver=solver, problem=str(pdir), eps=eps,
                                  k_lo=k_lo, k_hi=k_hi))
            res.update(case="iteration", problem=problem, n=n, eps_rel=args.eps_rel[0], eps=eps)
            rows.append(res)
            Partial.save("iteration", rows)
            log(f"[iteration] {problem} n={n} {solver}: {describe(res)}")
    by_n: dict = {}
    for r in rows:
        by_n.setdefault(r["n"], {})[r["solver"]] = r
    for group in by_n.values():
        ref = group.get("ott-jit", {})
        for r in group.values():
            if r.get("status") == "ok" and ref.get("status") == "ok":
                r["ratio_vs_ott"] = r["per_entry_ns"] / ref["per_entry_ns"]
    return rows


def run_batched(args, runner: Runner, root: Path) -> list[dict]:
    g = np.random.default_rng([args.seed, 7])
    bsz, n = args.batched_b, args.batched_n
    log_alpha = g.normal(size=(bsz, n, n))
    noise = -np.log(-np.log(g.uniform(1e-12, 1.0, size=(bsz, n, n))))  # Gumbel(0, 1)
    target = g.normal(size=(bsz, n, n))
    pdir = write_problem(root, f"batched-{bsz}x{n}",
                         dict(log_alpha=log_alpha, noise=noise, target=target))
    rows = []
    for solver in args.batched_solvers:
        gpath = root / f"grad-{solver}.npy"
        res = runner.run(dict(kind="batched", solver=solver, problem=str(pdir), tau=args.tau,
                              iters=args.batched_iters, grad_out=str(gpath)))
        res.update(case="batched", B=bsz, n=n, iters=args.batched_iters, tau=args.tau)
        if gpath.exists():
            res["_grad"] = str(gpath)
        rows.append(res)
        Partial.save("batched", rows)
        log(f"[batched] {solver}: {describe(res)}")
    ref = next((r for r in rows if r["solver"] == "couplings-batched" and "_grad" in r), None)
    gref = np.load(ref["_grad"]) if ref else None
    for r in rows:
        path = r.pop("_grad", None)
        if gref is not None and path:
            gr = np.load(path)
            r["grad_rel_diff_vs_couplings"] = float(np.linalg.norm(gr - gref)
                                                    / np.linalg.norm(gref))
    add_ratios(rows, ("case",))
    loop = next((r for r in rows if r["solver"] == "couplings-loop"), None)
    for r in rows:
        if r.get("status") == "ok" and loop and loop.get("status") == "ok":
            r["speedup_vs_couplings_loop"] = loop["median_s"] / r["median_s"]
    return rows


def run_online(args, runner: Runner, root: Path) -> list[dict]:
    n = args.online_n
    g = np.random.default_rng([args.seed, n, 11])
    x = g.normal(size=(n, 3))
    y = g.normal(size=(n, 3)) * np.array([0.5, 2.0, 1.0]) + 1.0
    w = np.full(n, 1.0 / n)
    pdir = write_problem(root, f"online-{n}", dict(x=x, y=y, a=w, b=w))
    eps = args.eps_rel[0] * mean_sq_cost(x, y)
    rows = []
    for solver in args.online_solvers:
        res = runner.run(dict(kind="online", solver=solver, problem=str(pdir), eps=eps,
                              iters=args.online_iters, batch_size=args.online_block,
                              backend=args.online_backend,
                              repeats=args.online_repeats), timeout=args.online_timeout)
        res.update(case="online", n=n, d=3, eps_rel=args.eps_rel[0], eps=eps,
                   iters=args.online_iters)
        rows.append(res)
        Partial.save("online", rows)
        log(f"[online] n={n} {solver}: {describe(res)}")
    return rows


# ------------------------------------------------------------------------------------------
# reporting


def _fmt(v, spec=".3g", none="-"):
    if v is None:
        return none
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan"
        return format(v, spec)
    return str(v)


def _mb(kb):
    return None if kb is None else kb / 1024


def _rss(r):
    """Peak RSS in MB and, in brackets, its growth over the RSS after imports and loading."""
    if not r.get("rss_peak_kb"):
        return "-"
    return f"{_mb(r['rss_peak_kb']):.0f} (+{_mb(r['rss_peak_kb'] - r['rss_base_kb']):.0f})"


def _status(r):
    return "" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason', '')}"[:90]


HEADLINE_PEERS = ("ott-jit", "geomloss-0.5", "geomloss-0.9", "pot-torch-log", "pot-np-log",
                  "pot-torch-log-l2tol", "pot-np-kernel")


def headline(dense: list[dict], ours: str = "couplings") -> list[str]:
    """Speed-up of our row over each named peer, per case, with both errors beside it."""
    cases: dict = {}
    for r in dense:
        cases.setdefault((r["problem"], r["n"], r["eps_rel"]), {})[r["solver"]] = r
    peers = [p for p in HEADLINE_PEERS if any(p in c for c in cases.values())]
    out = [f"### Speed-up of `{ours}` (their median time / ours; > 1: ours faster), "
           "with the L1 marginal error of each", "",
           "| problem | n | eps_rel | ours: s (err) | " + " | ".join(peers) + " |",
           "|" + "---|" * (4 + len(peers))]
    for (prob, n, e), group in cases.items():
        me = group.get(ours, {})
        if me.get("status") != "ok":
            cells = [f"ours {me.get('status', 'absent')}"]
        else:
            cells = [f"{me['median_s']:.3g} ({me['marginal_error_l1']:.0e})"]
        for p in peers:
            r = group.get(p, {})
            if r.get("status") != "ok":
                cells.append(str(r.get("status", "-")))
            elif me.get("status") == "ok":
                at_its = (f"; {r['ratio_at_its_error']:.2f}x at its error"
                          if "ratio_at_its_error" in r else "")
                cells.append(f"{r['median_s'] / me['median_s']:.2f}x "
                             f"({r.get('marginal_error_l1', math.nan):.0e}{at_its})")
            else:
                cells.append(f"{r['median_s']:.3g} s")
        out.append(f"| {prob} | {n} | {e:g} | " + " | ".join(cells) + " |")
    return out + [""]


def markdown(results: dict) -> str:
    out = []
    dense = results["cases"].get("dense", [])
    if dense:
        out += headline(dense)
        out += ["### Dense: solve to tol (L1 marginal) = "
                f"{results['config']['tol']:g}, {results['config']['dtype']}", "",
                "| problem | n | eps_rel | solver | median s | first s | iters | L1 marg. err |"
                " <P,C> gap to exact | peak RSS MB (+ over base) | x fastest other | "
                "x fastest other at <= err | note |",
                "|" + "---|" * 13]
        for r in dense:
            rss = _rss(r)
            other = (f"{r['ratio_vs_fastest_other']:.2f} ({r['fastest_other']})"
                     if "ratio_vs_fastest_other" in r else "-")
            at = (f"{r['ratio_vs_fastest_other_at_accuracy']:.2f} "
                  f"({r['fastest_other_at_accuracy']})"
                  if "ratio_vs_fastest_other_at_accuracy" in r else "-")
            out.append(
                f"| {r['problem']} | {r['n']} | {r['eps_rel']:g} | {r['solver']} | "
                f"{_fmt(r.get('median_s'), '.4g')} | {_fmt(r.get('first_call_s'), '.3g')} | "
                f"{_fmt(r.get('n_iter'), 'd')} | {_fmt(r.get('marginal_error_l1'), '.1e')} | "
                f"{_fmt(r.get('gap_to_exact'), '+.2e')} | {rss} | {other} | {at} | "
                f"{_status(r)} |")
        out.append("")
    it = results["cases"].get("iteration", [])
    if it:
        out += ["### One log-domain iteration (two log-sum-exp passes), time per entry", "",
                "| problem | n | solver | s / iteration | ns / entry | x OTT-JAX | note |",
                "|" + "---|" * 7]
        for r in it:
            out.append(f"| {r['problem']} | {r['n']} | {r['solver']} | "
                       f"{_fmt(r.get('per_iter_s'), '.4g')} | {_fmt(r.get('per_entry_ns'), '.3f')}"
                       f" | {_fmt(r.get('ratio_vs_ott'), '.2f')} | {_status(r)} |")
        out.append("")
    bt = results["cases"].get("batched", [])
    if bt:
        r0 = bt[0]
        out += [f"### Batched Sinkhorn operator: B = {r0['B']}, {r0['n']} x {r0['n']}, "
                f"{r0['iters']} iterations, forward + backward", "",
                "| solver | median s | first s | peak RSS MB (+ over base) | L1 marg. err (mean) "
                "| grad rel. diff vs couplings | x fastest other | speed-up vs couplings loop "
                "| note |",
                "|" + "---|" * 9]
        for r in bt:
            other = (f"{r['ratio_vs_fastest_other']:.2f} ({r['fastest_other']})"
                     if "ratio_vs_fastest_other" in r else "-")
            out.append(f"| {r['solver']} | {_fmt(r.get('median_s'), '.4g')} | "
                       f"{_fmt(r.get('first_call_s'), '.3g')} | "
                       f"{_rss(r)} | {_fmt(r.get('marginal_error_l1'), '.1e')} | "
                       f"{_fmt(r.get('grad_rel_diff_vs_couplings'), '.1e')} | {other} | "
                       f"{_fmt(r.get('speedup_vs_couplings_loop'), '.1f')} | {_status(r)} |")
        out.append("")
    on = results["cases"].get("online", [])
    if on:
        r0 = on[0]
        out += [f"### Online: n = m = {r0['n']}, 3-D, {r0['iters']} iterations, loss + "
                "gradient", "",
                "| solver | median s | first s | peak RSS MB (+ over base) | gradient | note |",
                "|" + "---|" * 6]
        for r in on:
            rss = _rss(r)
            note = _status(r) or r.get("note", "")
            out.append(f"| {r['solver']} | {_fmt(r.get('median_s'), '.4g')} | "
                       f"{_fmt(r.get('first_call_s'), '.3g')} | {rss} | "
                       f"{_fmt(r.get('gradient'))} | {note} |")
        out.append("")
    return "\n".join(out)


def plot(results: dict, stem: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    dense = [r for r in results["cases"].get("dense", []) if r.get("status") == "ok"]
    if dense:
        problems = sorted({r["problem"] for r in dense}, key=PROBLEMS.index)
        epss = sorted({r["eps_rel"] for r in dense}, reverse=True)
        handles: dict = {}
        fig, axes = plt.subplots(len(problems), len(epss), squeeze=False, sharex=True,
                                 figsize=(4.2 * len(epss), 3.4 * len(problems)))
        for i, p in enumerate(problems):
            for j, e in enumerate(epss):
                ax = axes[i][j]
                for idx, s in enumerate(results["config"]["dense_solvers"]):
                    pts = sorted((r["n"], r["median_s"]) for r in dense
                                 if r["problem"] == p and r["eps_rel"] == e and r["solver"] == s)
                    if pts:  # one colour per solver across panels
                        style = "-" if s.startswith("couplings") else "--"
                        ax.plot([q[0] for q in pts], [q[1] for q in pts], style, marker="o",
                                ms=3, label=s, color=f"C{idx % 10}",
                                lw=2.2 if s.startswith("couplings") else 1.2)
                        handles[s] = ax.lines[-1]
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(f"{p}, eps = {e:g} x mean cost", fontsize=9)
                ax.set_xlabel("n = m")
                ax.set_ylabel("median time to tol (s)")
                ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7,
                           loc="upper left", bbox_to_anchor=(1.02, 1))
        fig.tight_layout()
        path = f"{stem}-dense.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    bars = []  # (label, ratio) of our rows against the fastest other library
    for r in results["cases"].get("dense", []):
        if r.get("solver") == "couplings" and "ratio_vs_fastest_other" in r:
            bars.append((f"{r['problem']} n={r['n']} e={r['eps_rel']:g}",
                         r["ratio_vs_fastest_other"],
                         r.get("ratio_vs_fastest_other_at_accuracy")))
    for r in results["cases"].get("iteration", []):
        if r.get("solver") == "couplings" and "ratio_vs_ott" in r:
            bars.append((f"iteration n={r['n']} (vs OTT)", r["ratio_vs_ott"], None))
    for r in results["cases"].get("batched", []):
        if r.get("solver") == "couplings-batched" and "ratio_vs_fastest_other" in r:
            bars.append(("batched fwd+bwd", r["ratio_vs_fastest_other"], None))
    if bars:
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(bars) + 2), 4))
        xs = np.arange(len(bars))
        ax.bar(xs - 0.2, [b[1] for b in bars], 0.4, label="vs fastest other (any error)")
        ax.bar(xs + 0.2, [b[2] if b[2] is not None else np.nan for b in bars], 0.4,
               label="vs fastest other at <= our error")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([b[0] for b in bars], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("our time / their time (< 1: ours faster)")
        ax.legend(fontsize=8)
        ax.set_title("couplings: time ratio to the fastest other library", fontsize=10)
        fig.tight_layout()
        path = f"{stem}-ratios.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def machine_info(args) -> dict:
    info = dict(host=socket.gethostname(), platform=platform.platform(),
                processor=platform.processor(), cpu_count=os.cpu_count(),
                loadavg_start=os.getloadavg() if hasattr(os, "getloadavg") else None)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0]
        info["mem_total"] = mem.split(":", 1)[1].strip()
    except OSError:
        pass
    if args.device == "cuda":
        try:
            import torch

            info["cuda_device"] = torch.cuda.get_device_name(0)
        except Exception as exc:  # noqa: BLE001 - report, never fail on machine info
            info["cuda_device"] = f"unavailable: {exc}"
    return info


# ------------------------------------------------------------------------------------------


def _ints(s):
    return [int(float(v)) for v in s.split(",") if v]


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _names(s):
    return [v for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_ints, default=None,
                   help="dense and iteration sizes n = m (default 1000,4000,16000)")
    p.add_argument("--eps-rel", type=_floats, default=None,
                   help="eps as multiples of the mean cost (default 0.1,0.01,0.001)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="small run (~2-3 min): n = 1000, eps_rel 0.1, gauss2d, one repeat, "
                        "batched B = 256, online n = 4000")
    p.add_argument("--cases", type=_names, default=["dense", "iteration", "batched", "online"])
    p.add_argument("--problems", type=_names, default=None,
                   help=f"subset of {','.join(PROBLEMS)} (default all; iteration uses the first)")
    p.add_argument("--solvers", type=_names, default=None,
                   help="keep only these solver names (any case)")
    p.add_argument("--jax-python", default=None,
                   help="interpreter with jax and ott-jax for the OTT rows (default: this one)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--threads", type=int, default=2, help="CPUs/threads for every library")
    p.add_argument("--timeout", type=float, default=None,
                   help="per-solver time limit in s, warm-up and repeats included (default 600)")
    p.add_argument("--single-above", type=float, default=60.0,
                   help="dense: when the warm-up call takes longer (s), report it alone, "
                        "without repeats")
    p.add_argument("--tol", type=float, default=1e-4, help="L1 marginal tolerance")
    p.add_argument("--max-iter", type=int, default=20000)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-max", type=int, default=4000,
                   help="largest n for the exact cost (network simplex)")
    p.add_argument("--iter-k", type=_ints, default=[10, 60],
                   help="the two fixed iteration counts of the iteration case")
    p.add_argument("--batched-b", type=int, default=None, help="default 1024 (quick: 256)")
    p.add_argument("--batched-n", type=int, default=32)
    p.add_argument("--batched-iters", type=int, default=20)
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the batched case")
    p.add_argument("--online-n", type=int, default=None, help="default 100000 (quick: 4000)")
    p.add_argument("--online-iters", type=int, default=None, help="default 5 (quick: 3)")
    p.add_argument("--online-block", type=int, default=2048, help="rows per online block")
    p.add_argument("--online-backend", default="online",
                   help="value of couplings.sinkhorn's backend= for the online case, once it "
                        "exists")
    p.add_argument("--online-repeats", type=int, default=1,
                   help="timed calls of the online case (the first, JIT included, counts)")
    p.add_argument("--online-timeout", type=float, default=None,
                   help="per-solver limit of the online case in s (default 1800; quick 60)")
    p.add_argument("--tag", default=None, help="name of the output files (default host-date)")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only re-render the markdown table and plots of an earlier run's JSON")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(sizes=[1000] if quick else [1000, 4000, 16000],
                    eps_rel=[0.1] if quick else [0.1, 0.01, 0.001],
                    repeats=1 if quick else 3,
                    batched_b=256 if quick else 1024,
                    problems=["gauss2d"] if quick else list(PROBLEMS),
                    timeout=60.0 if quick else 600.0,
                    online_n=4000 if quick else 100_000,
                    online_iters=3 if quick else 5,
                    online_timeout=60.0 if quick else 1800.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.jax_python = args.jax_python or sys.executable
    bad = [c for c in args.cases if c not in ("dense", "iteration", "batched", "online")]
    bad += [q for q in args.problems if q not in PROBLEMS]
    if bad:
        p.error(f"unknown case/problem {bad}")
    if len(args.iter_k) != 2 or not 0 < args.iter_k[0] < args.iter_k[1]:
        p.error(f"--iter-k needs two increasing counts, got {args.iter_k}")

    def keep(names):
        return [s for s in names if args.solvers is None or s in args.solvers]

    args.dense_solvers = keep(DENSE_SOLVERS)
    args.iteration_solvers = keep(ITERATION_SOLVERS)
    args.batched_solvers = keep(BATCHED_SOLVERS)
    args.online_solvers = keep(ONLINE_SOLVERS)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:  # re-render the table and plots of an earlier run (ratios recomputed)
        results = json.loads(Path(args.report).read_text())
        dense = results["cases"].get("dense", [])
        for r in dense:
            classify(r)
        add_ratios(dense, ("problem", "n", "eps_rel"))
        Path(args.report).write_text(json.dumps(results, indent=1, default=str))
        results["plots"] = plot(results, Path(args.report).with_suffix(""))
        print(markdown(results))
        print(f"written {', '.join(results['plots'])}")
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    tag = args.tag or f"{socket.gethostname()}-{stamp:%Y%m%d-%H%M}"
    config = {k: v for k, v in vars(args).items()}
    results = dict(config=config, started=stamp.isoformat(), machine=machine_info(args),
                   threads=dict(threads=args.threads, method="sched_setaffinity + "
                                "OMP/MKL/OPENBLAS_NUM_THREADS + torch.set_num_threads"),
                   cases={})
    stem = out_dir / f"sinkhorn-{tag}"
    Partial.path, Partial.results = Path(f"{stem}.partial.json"), results
    tmp = Path(tempfile.mkdtemp(prefix="sinkhorn-bench-"))
    runner = Runner(args, tmp)
    if not runner.jax_ok:
        log(f"OTT-JAX rows unavailable: {runner.jax_reason}")
    t0 = time.perf_counter()
    try:
        root = tmp / "problems"
        for case, fn in (("dense", run_dense), ("iteration", run_iteration),
                         ("batched", run_batched), ("online", run_online)):
            if case in args.cases:
                results["cases"][case] = fn(args, runner, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["total_wall_s"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    versions = {}
    for case in results["cases"].values():
        for r in case:
            for k, v in r.get("versions", {}).items():
                versions.setdefault(k, v)
    results["versions"] = versions
    results["plots"] = plot(results, stem)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    Partial.path.unlink(missing_ok=True)
    print(markdown(results))
    print(f"machine: {results['machine'].get('cpu_model')} x{results['machine']['cpu_count']}, "
          f"threads {args.threads}, load {results['machine']['loadavg_start']} -> "
          f"{results['machine']['loadavg_end']}; versions {versions}")
    print(f"written {stem}.json and {', '.join(results['plots'])} "
          f"({results['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
