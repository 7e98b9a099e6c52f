"""Entropic OT at n = m = 1000: couplings.sinkhorn against POT (and GeomLoss) in one run.

The problem (the Foundation acceptance benchmark): two 2-D Gaussian clouds of 1000 points,
squared Euclidean cost, uniform weights, eps = 0.05, stopping at a marginal error of 1e-4.

Method: every solver is warmed up once, then timed over ``--repeats`` runs; the median is
reported, with the ratio to POT's ``sinkhorn_log``. Accuracy is measured the same way for all
solvers on the plan they return: the L1 marginal error ``|P1 - a|_1 + |P^T 1 - b|_1`` and the
relative gap of ``<P, C>`` to the exact value (POT's network simplex). POT's ``stopThr`` is the
L2 norm of one marginal's violation, which is looser than our L1 total at the same number, so the
comparison favours POT.

Run: ``python benchmarks/bench_sinkhorn_pot.py [--repeats 3] [--skip-geomloss]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import ot
import torch

import couplings


def make_problem(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 2))
    y = g.normal(size=(n, 2)) + np.array([1.0, 1.0])
    a = np.full(n, 1.0 / n)
    b = np.full(n, 1.0 / n)
    return x, y, a, b, ot.dist(x, y)  # squared Euclidean


def timed(fn, repeats: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def plan_accuracy(plan: np.ndarray, a, b, cost, exact: float):
    err = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    linear = float((plan * cost).sum())
    return float(err), (linear - exact) / exact


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-geomloss", action="store_true")
    parser.add_argument("--out", default="results/bench_sinkhorn_pot.json")
    args = parser.parse_args(argv)

    x, y, a, b, cost = make_problem(args.n)
    exact = float(ot.emd2(a, b, cost, numItermax=1_000_000))
    rows = []

    def add(name, median, times, plan, n_iter):
        err, gap = plan_accuracy(plan, a, b, cost, exact)
        rows.append(dict(solver=name, median_s=median, times_s=times, marginal_error_l1=err,
                         linear_value_rel_gap=gap, n_iter=n_iter))
        print(f"{name:38s} {median:8.3f} s   L1 marginal err {err:.1e}   "
              f"<P,C> gap {gap:+.2e}   iters {n_iter}", flush=True)

    for dtype in (torch.float32, torch.float64):
        c = torch.from_numpy(cost).to(dtype)

        def solve(c=c):
            return couplings.sinkhorn(c, eps=args.eps, tol=args.tol, max_iter=100_000)

        med, times, res = timed(solve, args.repeats)
        add(f"couplings.sinkhorn ({str(dtype)[6:]})", med, times,
            res.plan.double().numpy(), res.n_iter)

    # POT's stopThr bounds the L2 norm of one marginal's violation; stopThr = tol / sqrt(n)
    # brings its L1 marginal error to about ours (equal accuracy)
    pot_time = None
    for label, thr in (("stopThr=tol", args.tol), ("stopThr=tol/sqrt(n)", args.tol / args.n**0.5)):

        def pot_log(thr=thr):
            return ot.sinkhorn(a, b, cost, args.eps, method="sinkhorn_log", stopThr=thr,
                               numItermax=100_000, log=True)

        med, times, (plan, log) = timed(pot_log, args.repeats)
        add(f"POT sinkhorn_log ({label})", med, times, plan, log.get("niter"))
        pot_time = pot_time or med

    if not args.skip_geomloss:
        import geomloss  # GeomLoss' p=2 cost is |x-y|^2 / 2, so blur^2 = eps / 2

        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        for scaling in (0.5, 0.9, 0.99):
            loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=(args.eps / 2) ** 0.5,
                                        scaling=scaling, debias=False, potentials=True,
                                        backend="tensorized")

            def geom(loss=loss):
                return loss(xt, yt)

            med, times, (f, g) = timed(geom, args.repeats)
            # rebuild the plan from GeomLoss' potentials (half cost, eps/2)
            half, e = cost / 2, args.eps / 2
            f, g = f.double().numpy().ravel(), g.double().numpy().ravel()
            plan = np.outer(a, b) * np.exp((f[:, None] + g[None, :] - half) / e)
            add(f"GeomLoss tensorized (scaling={scaling})", med, times, plan, None)

    print(f"\nexact <P,C> (network simplex) = {exact:.6f}")
    print("speed-up over POT sinkhorn_log at stopThr=tol (median time ratio):")
    for row in rows:
        row["speedup_vs_pot_log"] = pot_time / row["median_s"]
        print(f"  {row['solver']:38s} {row['speedup_vs_pot_log']:7.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(n=args.n, eps=args.eps, tol=args.tol, repeats=args.repeats, exact=exact,
                torch=torch.__version__, pot=ot.__version__, threads=torch.get_num_threads())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
