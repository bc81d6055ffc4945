"""The network on the GPU, in one prepared run (< 8 minutes on an H200):

1. the GPU tests: pytest -q tests/test_triton_mlp.py without the interpreter
   (compiled Triton kernels, CUDA tensors, cuBLAS);
2. timings of the paper's network (2048 x 128 x 32 x 1, 512 clean + 17
   poisoning rows, 64 validation rows, T = 600, float32; synthetic standardised
   features and random labels) per mode of mithridate.hypergrad.mlp_torch,
   B = 1 and B = 30 problems per call, next to the torch unrolled reference
   (mlp_torch.unrolled: autograd through the loop) on the same GPU (checkpoint:
   the sqrt schedule), with the
   peak memory above the inputs (torch.cuda.max_memory_allocated) and the
   largest relative difference of grad_lam and grad_Xp from the reference;
3. the same modes through the public engine, ``Engine(..., model=MLP(layers),
   backend="triton", device="cuda")`` (rows "Engine <mode>": numpy in and out,
   the clean and validation rows moved to the GPU once, per call Xp, lam, w0
   there and the results back; w0 rounded to float32 as the engine takes it).

All modes run heavy-ball with gamma = 0.9 (reversible needs gamma > 0; the
paper trains with plain GD), alpha = 0.05, lam = -4 on every layer. Output: a
markdown table on stdout (paste it into benchmarks/RESULTS.md).

    python benchmarks/gpu_mlp.py            # on a GPU machine
    python benchmarks/gpu_mlp.py --tiny     # dry run: tiny shapes, CPU under TRITON_INTERPRET=1
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(layers=(2048, 128, 32, 1), n=512, k=17, nv=64, T=600, B=(1, 30))
TINY = dict(layers=(9, 5, 3, 1), n=11, k=3, nv=5, T=3, B=(1, 3))
ALPHA, GAMMA, LAM = 0.05, 0.9, -4.0


def gpu_tests():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_triton_mlp.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    return proc.returncode, time.perf_counter() - started, tail[0] if tail else ""


def problems(torch, cfg, B, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    layers, n, k, nv = cfg["layers"], cfg["n"], cfg["k"], cfg["nv"]
    d = layers[0]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    def labels(*shape):
        return (torch.rand(*shape, generator=g) < 0.5).float().to(device)
    parts = []
    for a, b in zip(layers[:-1], layers[1:]):  # Xavier uniform, biases 1e-2 (Appendix D.1)
        bound = (6.0 / (a + b)) ** 0.5
        parts += [(torch.rand(B, a * b, generator=g, dtype=torch.float64) * 2 - 1) * bound,
                  torch.full((B, b), 1e-2, dtype=torch.float64)]
    return dict(Xc=randn(n, d), yc=labels(n), Xp=randn(B, k, d) * 0.5, yp=labels(B, k),
                Xv=randn(nv, d), yv=labels(nv),
                lam=torch.full((B, len(layers) - 1), LAM, dtype=torch.float64, device=device),
                theta0=torch.cat(parts, 1).to(device))


def measure(torch, fn, cuda, repeats):
    """(best seconds, peak bytes above the memory held before, result)."""
    best, peak, result = float("inf"), None, None
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
    return best, peak, result


def rel_diff(torch, a, b):
    if a is None:
        return None
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def engine_rows(torch, cfg, pb, B, ref_t, ref_m, ref, device, cuda, repeats):
    """Table rows of every mode through mithridate.hypergrad.Engine (the public route)."""
    import numpy as np
    from mithridate.hypergrad import Engine
    from mithridate.hypergrad.mlp_torch import MODES
    from mithridate.models import MLP
    host = {k: v.cpu().numpy() for k, v in pb.items()}
    dt = host["Xc"].dtype
    w0, lam = host["theta0"].astype(dt), host["lam"]
    backend = "triton" if cuda or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    rows, mib = [], 2.0**-20
    for mode in MODES:
        eng = Engine(host["Xc"], host["yc"], host["Xv"], host["yv"], model=MLP(cfg["layers"]),
                     T=cfg["T"], alpha=ALPHA, gamma=GAMMA, mode=mode, backend=backend,
                     device=device)
        # the kernels are compiled by the warm-up above; best of `repeats` leaves out the
        # first call's move of the fixed rows where repeats > 1
        t, m, res = measure(torch, lambda: eng.run(host["Xp"], host["yp"], lam, w0), cuda, repeats)
        mem = "n/a" if m is None else f"{m * mib:.1f}"
        if ref is None:
            rows.append(f"| {B} | Engine {mode} | {t:.3f} | | {mem} | | | |")
            continue
        dlam = rel_diff(torch, torch.as_tensor(np.atleast_2d(res.grad_lam)), ref.grad_lam.cpu())
        dX = None if res.grad_Xp is None else rel_diff(
            torch, torch.as_tensor(res.grad_Xp).reshape(ref.grad_Xp.shape), ref.grad_Xp.cpu())
        ratio = "n/a" if m is None or not ref_m else f"{m / ref_m:.4f}"
        rows.append(f"| {B} | Engine {mode} | {t:.3f} | {ref_t / t:.2f} | {mem} | {ratio} | "
                    f"{dlam:.2e} | "
                    f"{'-' if dX is None else f'{dX:.2e}'} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes on the CPU under TRITON_INTERPRET=1 (a dry run)")
    parser.add_argument("--skip-tests", action="store_true", help="timings only")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per cell (best kept)")
    args = parser.parse_args()
    import torch
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda:
        if not args.tiny:
            sys.exit("benchmarks/gpu_mlp.py needs a CUDA GPU; use --tiny for the CPU dry run.")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    sys.path.insert(0, str(ROOT))
    from mithridate.hypergrad import mlp_torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 GEMMs in IEEE precision
    cfg = TINY if args.tiny else PAPER
    device = "cuda" if cuda else "cpu"
    lines = []
    if not args.skip_tests:
        rc, seconds, summary = gpu_tests()
        lines.append(f"GPU tests (tests/test_triton_mlp.py, no interpreter): rc={rc}, "
                     f"{seconds:.0f} s: {summary}\n")
    name = torch.cuda.get_device_name() if cuda else "CPU (TRITON_INTERPRET=1 dry run)"
    layers = " x ".join(map(str, cfg["layers"]))
    lines += [f"Network {layers}, {cfg['n']} + {cfg['k']} rows, {cfg['nv']} validation, "
              f"T = {cfg['T']}, float32, alpha {ALPHA}, gamma {GAMMA}, lam {LAM}; {name}; "
              f"torch {torch.__version__}; best of {args.repeats}.\n",
              "| B | mode | time (s) | speed-up vs reference | peak extra (MiB) | / reference | "
              "rel. diff grad_lam | rel. diff grad_Xp |",
              "|---|---|---|---|---|---|---|---|"]
    mib = 2.0**-20
    for B in cfg["B"]:
        pb = problems(torch, cfg, B, device)
        args_ = [pb[k] for k in ("Xc", "yc", "Xp", "yp", "Xv", "yv", "lam", "theta0")]
        common = dict(alpha=ALPHA, gamma=GAMMA)
        if cuda:  # compile every kernel outside the timings (the interpreter compiles nothing)
            for mode in mlp_torch.MODES:
                mlp_torch.hypergrad(cfg["layers"], *args_, T=2, mode=mode, **common)
        fmt_m = (lambda m: "n/a" if m is None else f"{m * mib:.1f}")
        try:
            ref_t, ref_m, ref = measure(torch, lambda: mlp_torch.unrolled(
                cfg["layers"], *args_, T=cfg["T"], **common), cuda, args.repeats)
            lines.append(f"| {B} | torch unrolled | {ref_t:.3f} | 1 | {fmt_m(ref_m)} | 1 | | |")
        except torch.cuda.OutOfMemoryError:  # its graph grows with B T: report, go on
            ref_t = ref_m = ref = None
            torch.cuda.empty_cache()
            lines.append(f"| {B} | torch unrolled | out of GPU memory | | | | | |")
        for mode in mlp_torch.MODES:
            t, m, res = measure(torch, lambda: mlp_torch.hypergrad(
                cfg["layers"], *args_, T=cfg["T"], mode=mode, **common), cuda, args.repeats)
            if ref is None:
                lines.append(f"| {B} | {mode} | {t:.3f} | | {fmt_m(m)} | | | |")
                continue
            ratio = "n/a" if m is None or not ref_m else f"{m / ref_m:.4f}"
            dX = rel_diff(torch, res.grad_Xp, ref.grad_Xp)
            lines.append(f"| {B} | {mode} | {t:.3f} | {ref_t / t:.2f} | {fmt_m(m)} | {ratio} | "
                         f"{rel_diff(torch, res.grad_lam, ref.grad_lam):.2e} | "
                         f"{'-' if dX is None else f'{dX:.2e}'} |")
            del res
        lines += engine_rows(torch, cfg, pb, B, ref_t, ref_m, ref, device, cuda, args.repeats)
        del pb, args_, ref
    print("\n".join(lines))


if __name__ == "__main__":
    main()
