"""Where Sinkhorn crawls: plain iterations against iterations finished by Newton steps.

At a small eps Sinkhorn's marginal error can fall like ``1 / k``. This solves the benchmark's
four point clouds (``benchmarks/sinkhorn.py``'s gauss2d, gauss3d, shapes2d, shapes3d) in
float64 at n = 200 and 500 and eps = eps_rel x mean cost for eps_rel 0.01, 0.003 and 0.001, to
an L1 marginal error of ``--tol`` (1e-8), two ways, each timed once (one solve each: the
point is which converge and how long a solve takes, not microseconds):

* ``plain``: up to ``--max-iter-plain`` (20 000) iterations;
* ``newton``: up to ``--max-iter-newton`` (1000) iterations, then ``newton=True``'s steps.

It prints one row per problem and the totals, and writes
``benchmarks/results/newton-finish.json``.

    python benchmarks/newton_finish.py [--sizes 200,500] [--eps-rel 0.01,0.003,0.001]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from sinkhorn import PROBLEMS, make_points

import couplings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,500")
    parser.add_argument("--eps-rel", default="0.01,0.003,0.001")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--max-iter-plain", type=int, default=20_000)
    parser.add_argument("--max-iter-newton", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", couplings.ConvergenceWarning)
    ways = {"plain": dict(max_iter=args.max_iter_plain),
            "newton": dict(max_iter=args.max_iter_newton, newton=True)}
    rows = []
    print("| problem | n | eps_rel | plain: iters, converged, error, s | "
          "newton: iters + steps, converged, error, s |")
    print("|---|---|---|---|---|")
    for problem in args.problems.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            x, y = (torch.as_tensor(p, dtype=torch.float64) for p in make_points(problem, n, 0))
            cloud = couplings.PointCloud(x, y)
            mean_cost = float(cloud.cost_matrix().mean())
            for eps_rel in (float(s) for s in args.eps_rel.split(",")):
                row = {"problem": problem, "n": n, "eps_rel": eps_rel, "tol": args.tol}
                for name, options in ways.items():
                    start = time.perf_counter()
                    res = couplings.sinkhorn(cloud, eps=eps_rel * mean_cost, tol=args.tol,
                                             **options)
                    row[name] = {
                        "seconds": time.perf_counter() - start, "n_iter": res.n_iter,
                        "newton_steps": (None if res.newton_steps is None
                                         else int(res.newton_steps)),
                        "converged": bool(res.converged), "error": float(res.error),
                        "gap": float(res.gap)}
                rows.append(row)
                p, q = row["plain"], row["newton"]
                print(f"| {problem} | {n} | {eps_rel:g} | {p['n_iter']}, {p['converged']}, "
                      f"{p['error']:.1e}, {p['seconds']:.2f} | {q['n_iter']} + "
                      f"{q['newton_steps']}, {q['converged']}, {q['error']:.1e}, "
                      f"{q['seconds']:.2f} |")
    totals = {name: {"converged": sum(r[name]["converged"] for r in rows),
                     "problems": len(rows),
                     "seconds": sum(r[name]["seconds"] for r in rows)} for name in ways}
    for name, t in totals.items():
        print(f"{name}: {t['converged']} of {t['problems']} converged, {t['seconds']:.1f} s "
              "in all")
    out = Path(args.out) / "newton-finish.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "rows": rows, "totals": totals,
                               "versions": {"torch": torch.__version__,
                                            "couplings": couplings.__version__}}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
