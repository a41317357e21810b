"""Mutation check: does the unit suite catch these one-line bugs? (``make mutants``)

Each mutant replaces one line of the library by a wrong one. The package, the tests and
the files they read are copied to a temporary folder, the line is replaced there (the
working tree is never touched), and the test files that guard that behaviour run against
the copy (``PYTHONPATH`` puts the copy first; the script checks that the copy is the one
imported). A mutant is *killed* when those tests fail, *survived* when they pass. Before
the mutants, the same test files run once on the unmodified copy: they must pass, or a
kill would mean nothing.

Usage: ``python tests/mutants.py [NAME ...]`` (default: every mutant); exit status 0 when
every mutant run was killed. Not part of ``make test``: it runs about a minute and a half.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("encnet_lite", "tests", "data_scripts", "pyproject.toml", "constraints.txt")


class Mutant(NamedTuple):
    name: str
    path: str  # file in the repository
    old: str  # text that occurs exactly once in that file
    new: str  # its wrong replacement
    tests: Sequence[str]  # the test files that must catch it


MUTANTS: List[Mutant] = [
    Mutant("sync-bn-local-statistics", "encnet_lite/distributed.py",
           "stats = all_reduce(stats)", "stats = stats",
           ["tests/test_gloo_group.py"]),
    Mutant("confusion-matrix-not-all-reduced", "encnet_lite/metrics.py",
           "dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)", "pass",
           ["tests/test_gloo_group.py"]),
    Mutant("context-sums-over-codewords", "encnet_lite/context.py",
           "return F.relu(self.code_norm(codes)).mean(dim=1)",
           "return F.relu(self.code_norm(codes)).sum(dim=1)",
           ["tests/test_context.py"]),
    Mutant("attention-drops-its-residual", "encnet_lite/context.py",
           "return F.relu(x + scaled) if residual else scaled",
           "return scaled",
           ["tests/test_context.py"]),
    Mutant("ignored-pixels-count-as-class-0", "encnet_lite/losses.py",
           "masked_fill(mask.flatten(1) == ignore_index, num_classes)",
           "masked_fill(mask.flatten(1) == ignore_index, 0)",
           ["tests/test_losses.py"]),
    # No custom autograd Function here: 2 c.detach() - c has the value of c and the
    # gradient -1, so the forward pass is unchanged and only the gradient's sign flips.
    Mutant("codeword-gradient-sign-in-the-layer", "encnet_lite/encoding.py",
           "return residual_encoding(x, self.codewords, self.smoothing())",
           "return residual_encoding(x, 2 * self.codewords.detach() - self.codewords, "
           "self.smoothing())",
           ["tests/test_encoding.py"]),
    Mutant("codeword-gradient-sign-of-the-residuals", "encnet_lite/encoding.py",
           "x, codewords = x.to(dtype), codewords.to(dtype)",
           "x, codewords = x.to(dtype), (2 * codewords.detach() - codewords).to(dtype)",
           ["tests/test_encoding.py"]),
    Mutant("mirrored-scores-not-flipped-back", "encnet_lite/inference.py",
           "_scores(model, x.flip(-1)).flip(-1)", "_scores(model, x.flip(-1))",
           ["tests/test_inference.py"]),
    # The encoding layer's hand-written backward (residual_encoding's autograd Function).
    Mutant("encoding-backward-drops-the-norm-gradient", "encnet_lite/encoding.py",
           "return out.addcmul_(x.transpose(1, 2), rho.unsqueeze(1)).transpose(1, 2)",
           "return out.transpose(1, 2)",
           ["tests/test_encoding.py"]),
    Mutant("encoding-backward-softmax-not-centred", "encnet_lite/encoding.py",
           "q = torch._softmax_backward_data(dl_da, assign, kdim, assign.dtype)",
           "q = dl_da.mul(assign)",
           ["tests/test_encoding.py"]),
    Mutant("encoding-scale-gradient-misses-the-codeword-norms", "encnet_lite/encoding.py",
           "grad_scale = q_sq + codewords.pow(2).sum(-1) * q_sum",
           "grad_scale = q_sq + 0 * q_sum",
           ["tests/test_encoding.py"]),
    Mutant("encoding-subnormal-weights-kept", "encnet_lite/encoding.py",
           "return F.threshold_(assign, guard, 0.0)", "return assign",
           ["tests/test_encoding.py"]),
    Mutant("encoding-exp-makes-subnormal-weights", "encnet_lite/encoding.py",
           "assign = torch.softmax(logits.clamp_min_(floor), kdim)",
           "assign = torch.softmax(logits, kdim)",
           ["tests/test_encoding.py"]),
    Mutant("encoding-backward-keeps-subnormal-gradients", "encnet_lite/encoding.py",
           "q = F.hardshrink(q, torch.finfo(q.dtype).tiny)", "q = q",
           ["tests/test_encoding.py"]),
    Mutant("kmeans-initialises-from-a-non-finite-batch", "encnet_lite/encoding.py",
           "finite = bool(torch.isfinite(points).all())", "finite = True",
           ["tests/test_encoding.py"]),
]


def make_copy(dest: Path) -> None:
    """The files the tests need, without caches (and never a run folder or data)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=skip)
        elif src.exists():
            shutil.copy2(src, dest / name)


def apply(copy: Path, mutant: Mutant) -> None:
    """Replace the mutant's line in the copy; a line that is not there exactly once is a
    stale mutant (the library changed): fail loudly instead of running an unmutated copy."""
    target = copy / mutant.path
    text = target.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: {mutant.old!r} occurs {count} times in "
                         f"{mutant.path} (expected once); update the mutant in tests/mutants.py")
    target.write_text(text.replace(mutant.old, mutant.new))


def run_tests(copy: Path, tests: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
           "-m", "not site", "--rootdir", str(copy), *tests]
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check_import_path(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    out = subprocess.run([sys.executable, "-c", "import encnet_lite; print(encnet_lite.__file__)"],
                         cwd=copy, env=env, capture_output=True, text=True, check=True)
    if not Path(out.stdout.strip()).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the tests would import {out.stdout.strip()}, not the mutated copy")


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [s for s in proc.stdout.splitlines() if s.strip()]
    return lines[-1] if lines else proc.stderr.strip()[-200:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test run")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutants {unknown}; known: {sorted(known)}")
    chosen = [known[n] for n in args.names] if args.names else MUTANTS
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encnet-mutants-") as tmp:
        base = Path(tmp) / "base"
        make_copy(base)
        check_import_path(base)
        files = sorted({t for m in chosen for t in m.tests})
        proc = run_tests(base, files, args.timeout)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-2000:])
            print(f"the unmutated copy fails {files}: fix the suite before judging mutants")
            return 2
        print(f"baseline: {' '.join(files)} pass ({last_line(proc)})")
        results: Dict[str, str] = {}
        for mutant in chosen:
            copy = Path(tmp) / mutant.name
            shutil.copytree(base, copy)
            apply(copy, mutant)
            t0 = time.perf_counter()
            proc = run_tests(copy, mutant.tests, args.timeout)
            # pytest exit 1: tests failed (killed); 0: all passed (survived); else an error.
            verdict = {0: "SURVIVED", 1: "killed"}.get(proc.returncode,
                                                      f"error (pytest exit {proc.returncode})")
            results[mutant.name] = verdict
            print(f"{verdict:>9}  {mutant.name:42s} {time.perf_counter() - t0:5.1f} s  "
                  f"{last_line(proc)}")
            shutil.rmtree(copy)
    killed = sum(v == "killed" for v in results.values())
    print(f"{killed}/{len(results)} mutants killed in {time.perf_counter() - start:.0f} s")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
