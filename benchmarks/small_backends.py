"""Small and mid-sized dense solves: which backend ``backend="auto"`` should run.

For n = m from 50 to 500 (below the 2**18 cost entries from which ``"auto"`` compiles its
kernels) this times, in one process and interleaved, the eager log domain (``"tensorized"``)
against the ``"kernel"`` backend as ``"auto"`` runs it there: no compilation, its updates by
the native CPU kernels where they are built (:mod:`couplings.solvers._native`) and its
log-domain fallback in eager torch. 2-D Gaussians (``N(0, I)`` against
``N(1, diag(0.25, 4))``), float32, uniform weights, tol 1e-4, eps = eps_rel x mean cost; the
minimum over ``--repeats`` timed solves after two warm-up solves (the machine is shared; the
minimum is the least disturbed).

    python benchmarks/small_backends.py [--sizes 50,100,200,300,500] [--eps-rel 0.1,0.01]

It prints a table and writes ``benchmarks/results/small-backends.json``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from _timing import best_of

import couplings
from couplings.solvers import _softmin


def _clouds(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = torch.randn(n, 2, generator=g) * torch.tensor([0.5, 2.0]) + 1.0
    return x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200,300,500")
    parser.add_argument("--eps-rel", default="0.1,0.01")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", couplings.ConvergenceWarning)
    rows = []
    print("| n | eps_rel | tensorized | kernel, as auto runs it | ratio | iterations |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        x, y = _clouds(n)
        cloud = couplings.PointCloud(x, y)
        mean_cost = float(cloud.cost_matrix().mean())
        for eps_rel in (float(s) for s in args.eps_rel.split(",")):
            eps = eps_rel * mean_cost
            out = {}
            for backend in ("tensorized", "kernel"):
                def solve(cloud=cloud, eps=eps, asked="auto" if backend == "kernel" else backend):
                    return couplings.sinkhorn(cloud, eps=eps, tol=1e-4, backend=asked)

                res = solve()
                assert res.backend == backend and bool(res.converged), (backend, res.summary())
                out[backend] = dict(seconds=best_of(solve, args.repeats), n_iter=int(res.n_iter),
                                    error=float(res.error))
            ratio = out["kernel"]["seconds"] / out["tensorized"]["seconds"]
            rows.append(dict(n=n, eps_rel=eps_rel, ratio=ratio, **out))
            print(f"| {n} | {eps_rel} | {out['tensorized']['seconds'] * 1e3:.2f} ms | "
                  f"{out['kernel']['seconds'] * 1e3:.2f} ms | {ratio:.2f}x | "
                  f"{out['tensorized']['n_iter']} / {out['kernel']['n_iter']} |", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "small-backends.json"
    path.write_text(json.dumps(dict(rows=rows, threads=args.threads, torch=torch.__version__,
                                    compiled_kernels=_softmin.compile_available()), indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
