"""A batch of problems in one call against a loop over them, and the products behind it.

``couplings.sinkhorn`` takes a batch of ``B`` problems ``(B, n, m)`` and iterates them together
(each stops at its own tolerance). A batch should never be slower than a loop over its
problems. This times, in one process and interleaved, for several ``(B, n)``:

* ``batch``: one call on the ``(B, n, d)`` point clouds;
* ``loop``: one call per problem;

each forward only (the potentials) and forward + backward (the gradient of the summed values
in the points, implicit differentiation). 2-D Gaussians (``N(0, I)`` against ``N(1, I)``),
float32, tol 1e-4, eps = ``--eps-rel`` x 6 (the mean squared distance); the minimum over
``--repeats`` timed calls after two warm-up calls (the machine is shared; the minimum is the
least disturbed).

It also times the batched matrix-vector product the kernel backend and the implicit gradient
run on, :func:`couplings.solvers._softmin.batched_mv`, against ``torch.bmm`` with a one-column
right-hand side, which it replaced on CPU (see its docstring for why).

    python benchmarks/batched_solves.py [--shapes 4x1000,16x300,64x100,1024x32] [--repeats 7]

It prints two tables and writes ``benchmarks/results/batched-solves.json`` (``--name``).
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings
from pathlib import Path

import torch
from _timing import best_of

import couplings

try:
    from couplings.solvers._softmin import batched_mv
except ImportError:  # a checkout from before it: the solves are timed, the products not
    batched_mv = None


def _clouds(bsz: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bsz, n, 2, generator=g), torch.randn(bsz, n, 2, generator=g) + 1.0


def _solves(x, y, eps: float, backward: bool):
    def one(xs, ys):
        xs = xs.clone().requires_grad_(backward)
        res = couplings.sinkhorn(couplings.PointCloud(xs, ys), eps=eps, tol=1e-4)
        if backward:
            res.value.sum().backward()
        return res

    def batch():
        return one(x, y)

    def loop():
        return [one(x[i], y[i]) for i in range(x.shape[0])]

    return batch, loop


def _products(bsz: int, n: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    mat = torch.rand(bsz, n, n, generator=g)
    vec = torch.rand(bsz, n, generator=g)
    number = max(1, int(2e6 // (bsz * n * n)))

    def per_call(fn):
        return best_of(lambda: [fn() for _ in range(number)], repeats) / number

    return {
        "bmm_rows_s": per_call(lambda: torch.bmm(mat, vec.unsqueeze(-1))),
        "batched_mv_rows_s": per_call(lambda: batched_mv(mat, vec)),
        "bmm_cols_s": per_call(lambda: torch.bmm(mat.transpose(-2, -1), vec.unsqueeze(-1))),
        "batched_mv_cols_s": per_call(lambda: batched_mv(mat, vec, transpose=True)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4x1000,16x300,64x100,1024x32",
                        help="comma-separated BxN (B problems of n = m points)")
    parser.add_argument("--eps-rel", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="batched-solves.json", help="file name under --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", couplings.ConvergenceWarning)
    eps = args.eps_rel * 6.0
    rows = []
    for shape in args.shapes.split(","):
        bsz, n = (int(v) for v in shape.lower().split("x"))
        x, y = _clouds(bsz, n)
        row = {"B": bsz, "n": n, "eps": eps}
        for backward in (False, True):
            batch, loop = _solves(x, y, eps, backward)
            key = "fwd_bwd" if backward else "fwd"
            # interleaved: batch, loop, batch, loop, ...; the best of each
            times = {"batch": float("inf"), "loop": float("inf")}
            for _ in range(2):
                times["batch"] = min(times["batch"], best_of(batch, max(1, args.repeats // 2)))
                times["loop"] = min(times["loop"], best_of(loop, max(1, args.repeats // 2)))
            row[f"{key}_batch_s"], row[f"{key}_loop_s"] = times["batch"], times["loop"]
        row["n_iter_max"] = int(torch.as_tensor(batch().n_iter).max())
        if batched_mv is not None:
            row.update(_products(bsz, n, args.repeats))
        rows.append(row)
        print(f"B={bsz} n={n}: forward {row['fwd_batch_s'] * 1e3:.1f} ms "
              f"(loop {row['fwd_loop_s'] * 1e3:.1f} ms), with backward "
              f"{row['fwd_bwd_batch_s'] * 1e3:.1f} ms (loop {row['fwd_bwd_loop_s'] * 1e3:.1f} ms)",
              flush=True)

    print("\n| B x n | forward: batch | loop | loop / batch | + backward: batch | loop "
          "| loop / batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['B']} x {r['n']} | {r['fwd_batch_s'] * 1e3:.1f} ms | "
              f"{r['fwd_loop_s'] * 1e3:.1f} ms | {r['fwd_loop_s'] / r['fwd_batch_s']:.1f}x | "
              f"{r['fwd_bwd_batch_s'] * 1e3:.1f} ms | {r['fwd_bwd_loop_s'] * 1e3:.1f} ms | "
              f"{r['fwd_bwd_loop_s'] / r['fwd_bwd_batch_s']:.1f}x |")
    print("\n| B x n | rows: bmm | batched_mv | cols: bmm | batched_mv |")
    print("|---|---|---|---|---|")
    for r in (r for r in rows if "bmm_rows_s" in r):
        print(f"| {r['B']} x {r['n']} | {r['bmm_rows_s'] * 1e6:.0f} us | "
              f"{r['batched_mv_rows_s'] * 1e6:.0f} us | {r['bmm_cols_s'] * 1e6:.0f} us | "
              f"{r['batched_mv_cols_s'] * 1e6:.0f} us |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": vars(args), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": args.threads, "rows": rows}
    (out / args.name).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
