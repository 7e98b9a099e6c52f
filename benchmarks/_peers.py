"""Worker of ``benchmarks/sinkhorn.py``: runs ONE solver on ONE case in its own process.

Usage (by the driver, not by hand): ``python benchmarks/_peers.py TASK.json RESULT.json``.

Each library runs in a fresh interpreter so that its peak resident memory is its own, its
threads do not compete with another library's pool, and a solver that hangs can be killed by
the driver's timeout. The JAX peers run under another interpreter (``--jax-python``); this file
therefore imports nothing beyond numpy at module level, and never imports ``couplings`` unless a
``couplings`` solver is asked for.

Conventions shared with the driver:

* the problem lives in ``task["problem"]`` as ``.npy`` files (points ``x``, ``y`` and weights
  ``a``, ``b`` for point clouds; ``log_alpha``, ``noise``, ``target`` for the batched case);
* every dense solver hands back dual potentials in the convention of ``couplings.sinkhorn``,
  ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` with ``C_ij = |x_i - y_j|^2``; the plan is
  rebuilt from them in float64, by row blocks, to measure the L1 marginal error and ``<P, C>``
  identically for every library (a plan that a library returns is this same plan in its own
  dtype);
* the peak resident set size (``ru_maxrss``) is read after the timed runs and before that
  evaluation, next to the resident size after imports and data loading (``rss_base_kb``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import traceback
import warnings


def pin_threads(threads: int) -> list[int]:
    """Restrict this process (and every thread it will start) to ``threads`` CPUs.

    Environment variables bound OpenMP/MKL/OpenBLAS pools (set by the driver before the process
    starts, repeated here for a hand-run worker); the CPU affinity bounds what no variable
    controls (XLA's Eigen pool, POT's numpy/scipy calls).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
        cpus = cpus[:threads]
    return cpus


def maxrss_kb() -> int:
    """Peak resident set size of this process so far, in KiB (Linux ``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ------------------------------------------------------------------------------------------
# measuring a plan given by potentials


def evaluate_potentials(x, y, a, b, f, g, eps, block: int = 1024) -> dict:
    """L1 marginal error and ``<P, C>`` of ``P = a b^T exp((f + g - C) / eps)``, in float64.

    ``C`` is the squared Euclidean cost, recomputed here in float64 by row blocks so that no
    ``n x m`` float64 matrix is held.
    """
    import numpy as np

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    f, g = np.asarray(f, np.float64).ravel(), np.asarray(g, np.float64).ravel()
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(g))):
        return dict(marginal_error_l1=math.nan, linear_value=math.nan, finite=False)
    y2 = (y * y).sum(1)
    col = np.zeros(len(y))
    row_err, linear = 0.0, 0.0
    for s in range(0, len(x), block):
        xs = x[s : s + block]
        c = (xs * xs).sum(1)[:, None] + y2[None, :] - 2.0 * xs @ y.T
        np.maximum(c, 0.0, out=c)
        p = np.exp((f[s : s + block, None] + g[None, :] - c) / eps)
        p *= a[s : s + block, None] * b[None, :]
        row_err += float(np.abs(p.sum(1) - a[s : s + block]).sum())
        col += p.sum(0)
        linear += float((p * c).sum())
    err = row_err + float(np.abs(col - b).sum())
    return dict(marginal_error_l1=err, linear_value=linear, finite=True)


def plan_marginal_error(plan, a, b) -> float:
    """Mean over the batch of ``|P 1 - a|_1 + |P^T 1 - b|_1`` for plans ``(B, n, m)``."""
    import numpy as np

    plan = np.asarray(plan, np.float64)
    err = np.abs(plan.sum(2) - a).sum(1) + np.abs(plan.sum(1) - b).sum(1)
    return float(err.mean())


# ------------------------------------------------------------------------------------------
# timing


def timed(fn, repeats: int, sync=lambda out: out, single_above: float = math.inf):
    """Warm-up call (timed on its own: JIT compilation shows there), then ``repeats`` calls.

    When the warm-up call alone took more than ``single_above`` seconds, no repeat follows and
    the caller reports that call (a minutes-long solve is not dominated by start-up costs)."""
    t0 = time.perf_counter()
    out = sync(fn())
    first = time.perf_counter() - t0
    times = []
    if first > single_above:
        return out, first, times
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = sync(fn())
        times.append(time.perf_counter() - t0)
    return out, first, times


def load(task):
    import numpy as np

    d = task["problem"]
    return {k[:-4]: np.load(os.path.join(d, k)) for k in os.listdir(d) if k.endswith(".npy")}


# ------------------------------------------------------------------------------------------
# torch-side helpers


def _torch(task):
    import torch

    torch.set_num_threads(task["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass
    dev = torch.device(task.get("device", "cpu"))
    dtype = getattr(torch, task["dtype"])

    def sync(out):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return torch, dev, dtype, sync


def _np(t):
    return t.detach().double().cpu().numpy()


def _couplings_has_backend():
    import inspect

    import couplings

    return "backend" in inspect.signature(couplings.sinkhorn).parameters


# ------------------------------------------------------------------------------------------
# dense: solve to a marginal tolerance


def dense_couplings(task, data, scaling="default", backend="auto", momentum=None):
    torch, dev, dtype, sync = _torch(task)
    import couplings

    x = torch.as_tensor(data["x"], dtype=dtype, device=dev)
    y = torch.as_tensor(data["y"], dtype=dtype, device=dev)
    a = torch.as_tensor(data["a"], dtype=dtype, device=dev)
    b = torch.as_tensor(data["b"], dtype=dtype, device=dev)
    eps, tol, max_iter = task["eps"], task["tol"], task["max_iter"]

    def solve():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", couplings.ConvergenceWarning)
            kw = dict(backend=backend) if _couplings_has_backend() else {}
            if momentum is not None:  # None: the library's default
                kw["momentum"] = momentum
            if scaling != "default":  # "default": the library's (None: no annealing)
                kw["scaling"] = scaling
            return couplings.sinkhorn(couplings.PointCloud(x, y), a, b, eps=eps, tol=tol,
                                      max_iter=max_iter, **kw)

    def extract(res):
        return dict(f=_np(res.f), g=_np(res.g), n_iter=int(res.n_iter),
                    converged=bool(res.converged), reported_error=float(res.error),
                    backend=getattr(res, "backend", None))

    return solve, extract, sync


def dense_pot(task, data, backend="numpy", method="sinkhorn_log", l2tol=False):
    import numpy as np
    import ot

    n = len(data["a"])
    eps, tol, max_iter = task["eps"], task["tol"], task["max_iter"]
    # POT's stopThr bounds the L2 norm of the column-marginal violation, checked every 10
    # iterations; |v|_1 <= sqrt(n) |v|_2, so stopThr = tol / sqrt(n) guarantees an L1 error
    # <= tol on that marginal (the row marginal is exact after POT's last row update).
    # l2tol: stopThr = tol, the same number on POT's L2 norm (looser than our L1 bound).
    thr = tol if l2tol else tol / math.sqrt(n)
    if backend == "numpy":
        dt = np.dtype(task["dtype"])
        x, y = data["x"].astype(dt), data["y"].astype(dt)
        a, b = data["a"].astype(dt), data["b"].astype(dt)
        sync = lambda out: out  # noqa: E731
        to_np = np.asarray
    else:
        torch, dev, dtype, sync = _torch(task)
        x, y, a, b = (torch.as_tensor(data[k], dtype=dtype, device=dev) for k in "xyab")
        to_np = _np

    def solve():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ot.dist(x, y)  # squared Euclidean
            return ot.sinkhorn(a, b, m, eps, method=method, stopThr=thr, numItermax=max_iter,
                               log=True)

    def extract(out):
        _, log = out
        la, lb = np.log(to_np(a)), np.log(to_np(b))
        if method == "sinkhorn_log":  # P = exp(-C/eps + u_i + v_j)
            f = eps * (to_np(log["log_u"]) - la)
            g = eps * (to_np(log["log_v"]) - lb)
        else:  # P = u_i K_ij v_j, K = exp(-C/eps)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = eps * (np.log(to_np(log["u"])) - la)
                g = eps * (np.log(to_np(log["v"])) - lb)
        errs = log.get("err", [])
        last = float(to_np(errs[-1])) if len(errs) else math.nan
        return dict(f=f, g=g, n_iter=int(log["niter"]) + 1, converged=bool(last < thr),
                    reported_error=last, reported_error_kind="L2 column marginal")

    return solve, extract, sync


def _geomloss_loss(eps, scaling, backend="tensorized"):
    import geomloss

    # GeomLoss' p = 2 cost is |x - y|^2 / 2 and its temperature is blur^p: on the halved cost,
    # eps / 2 is our eps on the full cost, so blur = sqrt(eps / 2); its potentials are half ours.
    return geomloss.SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps / 2), scaling=scaling,
                                debias=False, potentials=True, backend=backend)


def geomloss_iterations(x, y, eps, scaling) -> int:
    """Number of full (two-softmin) iterations GeomLoss runs: its epsilon schedule from the
    squared diameter down to ``eps``, plus the initialisation and the final extrapolation."""
    from geomloss._legacy.sinkhorn_divergence import scaling_parameters

    *_, eps_list, _ = scaling_parameters(x, y, 2, math.sqrt(eps / 2), None, None, scaling)
    return len(eps_list) + 2


def dense_geomloss(task, data, scaling=0.5):
    torch, dev, dtype, sync = _torch(task)
    x, y, a, b = (torch.as_tensor(data[k], dtype=dtype, device=dev) for k in "xyab")
    loss = _geomloss_loss(task["eps"], scaling)

    def solve():
        return loss(a, x, b, y)

    def extract(out):
        f, g = out
        return dict(f=2 * _np(f).ravel(), g=2 * _np(g).ravel(),
                    n_iter=geomloss_iterations(x, y, task["eps"], scaling), converged=None)

    return solve, extract, sync


def _jax(task):
    import jax

    if task["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def sync(out):
        return jax.block_until_ready(out)

    from jax.interpreters import batching

    if not hasattr(batching, "is_vmappable"):
        # ott-jax 0.6.0's batched (online) map still calls this helper, removed in jax 0.10; it
        # only singled out JAX's own custom vmappable types, so for plain arrays it is False.
        batching.is_vmappable = lambda x: False
        task.setdefault("_notes", []).append(
            "shim: jax.interpreters.batching.is_vmappable (removed in jax 0.10) restored as "
            "'False' for ott-jax 0.6.0's online map")
    return jax, jnp, sync


def dense_ott(task, data, momentum=False):
    import numpy as np

    jax, jnp, sync = _jax(task)
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    eps, tol = task["eps"], task["tol"]
    max_iter = 10 * max(1, task["max_iter"] // 10)  # a multiple of inner_iterations
    dt = jnp.float64 if task["dtype"] == "float64" else jnp.float32
    x, y, a, b = (jnp.asarray(data[k], dtype=dt) for k in "xyab")
    # OTT's threshold bounds the L1 (norm_error=1) violation of the column marginal, checked
    # every inner_iterations = 10 iterations: the same criterion as couplings' tol.
    # momentum: OTT's adaptive over-relaxation (Lehmann et al.), omega from the error ratio of
    # iterations 10 and 20, used from iteration 20 on
    kw = {}
    if momentum:
        from ott.solvers.linear import acceleration

        kw["momentum"] = acceleration.Momentum(start=20, inner_iterations=10)
    solver = sinkhorn.Sinkhorn(threshold=tol, norm_error=1, inner_iterations=10,
                               max_iterations=max_iter, lse_mode=True, **kw)

    @jax.jit
    def solve_jit(x, y, a, b):
        geom = pointcloud.PointCloud(x, y, epsilon=eps)  # cost |x - y|^2
        out = solver(linear_problem.LinearProblem(geom, a, b))
        return out.f, out.g, out.n_iters, out.converged

    def solve():
        return solve_jit(x, y, a, b)

    def extract(out):
        f, g, n_iters, conv = out
        # OTT's plan is exp((f + g - C) / eps): shift to the a b^T exp(...) convention
        return dict(f=np.asarray(f, np.float64) - eps * np.log(data["a"]),
                    g=np.asarray(g, np.float64) - eps * np.log(data["b"]),
                    n_iter=int(n_iters), converged=bool(conv))

    return solve, extract, sync


DENSE = {
    "couplings": dense_couplings,
    "couplings-scaling0.9": lambda t, d: dense_couplings(t, d, scaling=0.9),
    "couplings-tensorized": lambda t, d: dense_couplings(t, d, backend="tensorized"),
    "couplings-compiled": lambda t, d: dense_couplings(t, d, backend="compiled"),
    "couplings-plain": lambda t, d: dense_couplings(t, d, momentum=1.0, scaling=None),
    "pot-np-log": lambda t, d: dense_pot(t, d, "numpy", "sinkhorn_log"),
    "pot-np-kernel": lambda t, d: dense_pot(t, d, "numpy", "sinkhorn"),
    "pot-torch-log": lambda t, d: dense_pot(t, d, "torch", "sinkhorn_log"),
    "pot-torch-log-l2tol": lambda t, d: dense_pot(t, d, "torch", "sinkhorn_log", True),
    "pot-np-log-l2tol": lambda t, d: dense_pot(t, d, "numpy", "sinkhorn_log", True),
    "pot-torch-kernel": lambda t, d: dense_pot(t, d, "torch", "sinkhorn"),
    "geomloss-0.5": lambda t, d: dense_geomloss(t, d, 0.5),
    "geomloss-0.9": lambda t, d: dense_geomloss(t, d, 0.9),
    "ott-jit": dense_ott,
    "ott-jit-momentum": lambda t, d: dense_ott(t, d, momentum=True),
}


# ------------------------------------------------------------------------------------------
# iteration: cost of one log-domain iteration, by differencing two fixed iteration counts


def iteration_runner(task, data, k):
    """A solve of exactly ``k`` log-domain iterations (no early stop); returns ``(solve, sync)``."""
    name, eps = task["solver"], task["eps"]
    if name in ("couplings", "couplings-tensorized", "couplings-compiled"):
        torch, dev, dtype, sync = _torch(task)
        import couplings

        x, y = (torch.as_tensor(data[k_], dtype=dtype, device=dev) for k_ in "xy")
        kw = {}
        if _couplings_has_backend():
            kw["backend"] = "auto" if name == "couplings" else name.split("-")[1]

        def solve():
            return couplings.sinkhorn(couplings.PointCloud(x, y), eps=eps, tol=1e-30,
                                      min_iter=k, max_iter=k, **kw).f

        return solve, sync
    if name in ("pot-np-log", "pot-torch-log"):
        import numpy as np
        import ot

        if name == "pot-np-log":
            dt = np.dtype(task["dtype"])
            x, y, a, b = (data[k_].astype(dt) for k_ in "xyab")
            sync = lambda out: out  # noqa: E731
        else:
            torch, dev, dtype, sync = _torch(task)
            x, y, a, b = (torch.as_tensor(data[k_], dtype=dtype, device=dev) for k_ in "xyab")

        def solve():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ot.sinkhorn(a, b, ot.dist(x, y), eps, method="sinkhorn_log",
                                   stopThr=0.0, numItermax=k)

        return solve, sync
    if name == "ott-jit":
        jax, jnp, sync = _jax(task)
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        dt = jnp.float64 if task["dtype"] == "float64" else jnp.float32
        x, y = (jnp.asarray(data[k_], dtype=dt) for k_ in "xy")
        solver = sinkhorn.Sinkhorn(threshold=0.0, inner_iterations=k, min_iterations=k,
                                   max_iterations=k, lse_mode=True)

        @jax.jit
        def run(x, y):
            return solver(linear_problem.LinearProblem(pointcloud.PointCloud(x, y, epsilon=eps))).f

        return (lambda: run(x, y)), sync
    raise KeyError(name)


def run_iteration(task, data):
    """Seconds per iteration = (t(k_hi) - t(k_lo)) / (k_hi - k_lo), medians over repeats, so the
    cost matrix, set-up and convergence checks cancel. GeomLoss has no fixed-iteration API: its
    two scalings (0.5 and 0.9) give two known iteration counts (its epsilon schedule) instead."""
    n, m = len(data["x"]), len(data["y"])
    reps = task["repeats"]
    if task["solver"] == "geomloss":
        torch, dev, dtype, sync = _torch(task)
        x, y, a, b = (torch.as_tensor(data[k], dtype=dtype, device=dev) for k in "xyab")
        pts = []
        for s in (0.5, 0.9):
            loss = _geomloss_loss(task["eps"], s)
            _, first, times = timed(lambda loss=loss: loss(a, x, b, y), reps, sync)
            pts.append((geomloss_iterations(x, y, task["eps"], s), first, times))
    else:
        k_lo, k_hi = task["k_lo"], task["k_hi"]
        pts = []
        for k in (k_lo, k_hi):
            solve, sync = iteration_runner(task, data, k)
            _, first, times = timed(solve, reps, sync)
            pts.append((k, first, times))
    (k1, f1, t1), (k2, f2, t2) = pts
    med1, med2 = _median(t1), _median(t2)
    per_iter = (med2 - med1) / (k2 - k1)
    return dict(k=[k1, k2], first_call_s=[f1, f2], times_s=[t1, t2], median_s=[med1, med2],
                per_iter_s=per_iter, per_entry_ns=1e9 * per_iter / (n * m))


def _median(v):
    s = sorted(v)
    h = len(s) // 2
    return s[h] if len(s) % 2 else 0.5 * (s[h - 1] + s[h])


# ------------------------------------------------------------------------------------------
# batched Gumbel-Sinkhorn-like: B square matrices, fixed iterations, forward + backward


def run_batched(task, data):
    """Loss ``sum(n P * T)`` of the Sinkhorn operator ``P = S((log_alpha + noise) / tau)`` (entropic
    OT with uniform marginals and cost ``-(log_alpha + noise)``, ``eps = tau``) after exactly
    ``iters`` iterations, and its gradient in ``log_alpha``."""
    import numpy as np

    name, tau, iters, reps = task["solver"], task["tau"], task["iters"], task["repeats"]
    la_np, noise_np, tgt_np = data["log_alpha"], data["noise"], data["target"]
    bsz, n, _ = la_np.shape
    if name == "ott-vmap":
        jax, jnp, sync = _jax(task)
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        dt = jnp.float64 if task["dtype"] == "float64" else jnp.float32
        la, noise, tgt = (jnp.asarray(v, dtype=dt) for v in (la_np, noise_np, tgt_np))
        # implicit_diff=None: differentiate through the (fixed) iterations, as the other rows
        solver = sinkhorn.Sinkhorn(threshold=0.0, inner_iterations=iters, min_iterations=iters,
                                   max_iterations=iters, lse_mode=True, implicit_diff=None)

        def one(c):
            geom = geometry.Geometry(cost_matrix=c, epsilon=tau)
            return solver(linear_problem.LinearProblem(geom)).matrix

        def loss_fn(la):
            p = jax.vmap(one)(-(la + noise))
            return jnp.sum(n * p * tgt), p

        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

        def solve():
            return step(la)

        def extract(out):
            (val, p), grad = out
            return float(val), np.asarray(p, np.float64), np.asarray(grad, np.float64)
    else:
        torch, dev, dtype, sync = _torch(task)
        la0 = torch.as_tensor(la_np, dtype=dtype, device=dev)
        noise = torch.as_tensor(noise_np, dtype=dtype, device=dev)
        tgt = torch.as_tensor(tgt_np, dtype=dtype, device=dev)
        if name.startswith("couplings"):
            import couplings

            grad_mode = "implicit" if name.endswith("implicit") else "unroll"

            def plan_of(c):
                return couplings.sinkhorn(c, eps=tau, min_iter=iters, max_iter=iters,
                                          grad=grad_mode).plan

            if name.startswith("couplings-loop"):
                def plans(c):
                    return torch.stack([plan_of(c[i]) for i in range(c.shape[0])])
            else:
                plans = plan_of
        elif name == "pot-batch":
            import ot.batch

            def plans(c):
                return ot.batch.solve_batch(c, reg=tau, max_iter=iters, tol=0.0,
                                            method="log_sinkhorn", grad="autodiff").plan
        elif name == "torch-reference":
            def plans(c):  # Mena et al. (2018): alternate row and column log-normalisation
                z = -c / tau
                for _ in range(iters):
                    z = z - torch.logsumexp(z, 2, keepdim=True)
                    z = z - torch.logsumexp(z, 1, keepdim=True)
                return z.exp() / n
        else:
            raise KeyError(name)

        def solve():
            la = la0.clone().requires_grad_(True)
            p = plans(-(la + noise))  # (B, n, n), marginals 1/n
            val = (n * p * tgt).sum()
            val.backward()
            return val.detach(), p.detach(), la.grad

        def extract(out):
            val, p, grad = out
            return float(val), _np(p), _np(grad)

    base = maxrss_kb()
    out, first, times = timed(solve, reps, sync)
    peak = maxrss_kb()
    val, p, grad = extract(out)
    u = np.full((bsz, n), 1.0 / n)
    np.save(task["grad_out"], grad)
    return dict(first_call_s=first, times_s=times, median_s=_median(times), rss_base_kb=base,
                rss_peak_kb=peak, loss=val, marginal_error_l1=plan_marginal_error(p, u, u))


# ------------------------------------------------------------------------------------------
# online: n = m large, point clouds never materialised; loss + gradient in the points


def run_online(task, data):
    import numpy as np

    name, eps, iters, reps = task["solver"], task["eps"], task["iters"], task["repeats"]
    if name == "couplings":
        torch, dev, dtype, sync = _torch(task)
        import couplings

        if not _couplings_has_backend():
            return dict(status="not supported",
                        reason="couplings.sinkhorn has no backend= argument (no online "
                               "Sinkhorn in this version)")
        x0 = torch.as_tensor(data["x"], dtype=dtype, device=dev)
        y = torch.as_tensor(data["y"], dtype=dtype, device=dev)

        def solve():
            x = x0.clone().requires_grad_(True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", couplings.ConvergenceWarning)
                res = couplings.sinkhorn(couplings.PointCloud(x, y), eps=eps, min_iter=iters,
                                         max_iter=iters, backend=task["backend"])
            res.value.backward()
            return float(res.value), x.grad

        def extract(out):
            return out[0], _np(out[1])
    elif name == "ott-online":
        jax, jnp, sync = _jax(task)
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        dt = jnp.float64 if task["dtype"] == "float64" else jnp.float32
        x0, y = (jnp.asarray(data[k], dtype=dt) for k in "xy")
        solver = sinkhorn.Sinkhorn(threshold=0.0, inner_iterations=iters, min_iterations=iters,
                                   max_iterations=iters, lse_mode=True)

        def loss_fn(x):
            geom = pointcloud.PointCloud(x, y, epsilon=eps, batch_size=task["batch_size"])
            # reg_ot_cost with use_danskin (OTT's default with implicit_diff): the gradient in
            # x holds the potentials fixed (envelope theorem)
            return solver(linear_problem.LinearProblem(geom)).reg_ot_cost

        step = jax.jit(jax.value_and_grad(loss_fn))

        def solve():
            return step(x0)

        def extract(out):
            return float(out[0]), np.asarray(out[1], np.float64)
    elif name == "geomloss-online":
        try:
            import pykeops  # noqa: F401
        except ImportError:
            return dict(status="not supported",
                        reason="GeomLoss' online backend needs pykeops, not installed")
        torch, dev, dtype, sync = _torch(task)
        x0, y = (torch.as_tensor(data[k], dtype=dtype, device=dev) for k in "xy")
        loss = _geomloss_loss(eps, task.get("scaling", 0.5), backend="online")
        loss.potentials = False

        def solve():
            x = x0.clone().requires_grad_(True)
            val = loss(x, y)
            val.backward()
            return float(val), x.grad

        def extract(out):
            return out[0], _np(out[1])
    elif name == "pot-lazy":
        import ot

        dt = np.dtype(task["dtype"])
        x0, y = data["x"].astype(dt), data["y"].astype(dt)
        sync = lambda out: out  # noqa: E731

        def solve():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ot.bregman.empirical_sinkhorn2(x0, y, eps, numIterMax=iters, stopThr=0.0,
                                                      isLazy=True,
                                                      batchSize=task["batch_size"]), None

        def extract(out):
            return float(np.asarray(out[0]).sum()), None
    else:
        raise KeyError(name)

    # no separate warm-up: at n = 100k one call takes minutes and a JIT compilation seconds, so
    # the first call is timed (compilation included) and ``repeats - 1`` more follow
    base = maxrss_kb()
    out, first, times = timed(solve, reps - 1, sync)
    peak = maxrss_kb()
    val, grad = extract(out)
    res = dict(first_call_s=first, times_s=[first] + times, median_s=_median([first] + times),
               rss_base_kb=base,
               rss_peak_kb=peak, loss=val, gradient=grad is not None)
    if grad is None:
        res["note"] = "loss only: POT's lazy numpy solver has no gradient"
    return res


# ------------------------------------------------------------------------------------------


def run_dense(task, data):
    setup = DENSE[task["solver"]]
    solve, extract, sync = setup(task, data)
    base = maxrss_kb()
    single = task.get("single_above", math.inf)
    out, first, times = timed(solve, task["repeats"], sync, single)
    peak = maxrss_kb()
    info = extract(out)
    f, g = info.pop("f"), info.pop("g")
    acc = evaluate_potentials(data["x"], data["y"], data["a"], data["b"], f, g, task["eps"])
    if not times:
        times = [first]
        info["note"] = f"one call only: the first took > {single:g} s"
    return dict(first_call_s=first, times_s=times, median_s=_median(times), rss_base_kb=base,
                rss_peak_kb=peak, **info, **acc)


def run_exact(task, data):
    """Exact OT cost by POT's network simplex, float64."""
    import numpy as np
    import ot

    x, y = data["x"].astype(np.float64), data["y"].astype(np.float64)
    t0 = time.perf_counter()
    value = float(ot.emd2(data["a"], data["b"], ot.dist(x, y), numItermax=10_000_000))
    return dict(exact=value, seconds=time.perf_counter() - t0)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "torch", "pot", "geomloss", "jax", "jaxlib", "ott-jax", "couplings"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    task_path, out_path = argv
    with open(task_path) as fh:
        task = json.load(fh)
    cpus = pin_threads(task["threads"])
    result = dict(solver=task["solver"], kind=task["kind"], cpus=cpus)
    try:
        data = load(task)
        runner = {"dense": run_dense, "iteration": run_iteration, "batched": run_batched,
                  "online": run_online, "exact": run_exact}[task["kind"]]
        result.update(runner(task, data))
        result.setdefault("status", "ok")
        if task.get("_notes"):
            result["shims"] = task["_notes"]
        if task.get("device", "cpu") == "cuda" and "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    except ModuleNotFoundError as exc:
        result.update(status="not available", reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # reported in the table, never hidden
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=6))
    result["versions"] = versions()
    result["rss_final_kb"] = maxrss_kb()
    with open(out_path, "w") as fh:
        json.dump(result, fh, default=float)


if __name__ == "__main__":
    main()
