"""Executable verifiers: keep a synthetic item only when its answer checks out.

Two domains allow a mechanical check, and both are cheaper and far more
trustworthy than any LLM judge:

- **Python code** must pass its tests. The code and the tests run together in
  a fresh interpreter (``python -I``: no user site, no ``PYTHON*`` variables,
  the script's folder not on ``sys.path``) inside an empty temporary folder,
  with ``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_FSIZE``
  (no large files) and ``RLIMIT_NOFILE`` set in ``preexec_fn``, a wall-clock
  timeout on top, and its own process group so a runaway child is killed with
  it. This is a resource sandbox against accidents (loops, memory bombs), not
  a security boundary against hostile code: run untrusted generators in a
  container as well.
- **Math** answers are checked numerically: numbers, fractions, percentages,
  thousands separators and ``$`` are parsed, and an arithmetic expression is
  evaluated by a small AST walker (``+ - * / // % **``, parentheses,
  ``sqrt``/``abs``/``round``/``min``/``max``), never ``eval``.

:func:`cap_synthetic` limits the synthetic share of any dataset; the dataset
builder calls it on the rows it is about to write.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

__all__ = [
    "VerifyResult",
    "run_python_tests",
    "parse_number",
    "eval_arithmetic",
    "check_math",
    "arithmetic_in",
    "is_synthetic",
    "cap_synthetic",
]

T = TypeVar("T")


@dataclass
class VerifyResult:
    """The verdict of one verifier run. ``reason`` says why it failed (``passed`` when ok)."""

    ok: bool
    reason: str
    duration_ms: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "duration_ms": round(self.duration_ms, 1), "detail": self.detail}


def _limits(memory_mb: int, cpu_s: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python_tests(
    code: str,
    tests: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 256,
    python: str | None = None,
) -> VerifyResult:
    """Run ``code`` then ``tests`` (asserts) in a sandboxed subprocess; ok when it exits 0.

    >>> run_python_tests("def sq(x): return x * x", "assert sq(3) == 9").ok
    True
    >>> run_python_tests("def sq(x): return x + x", "assert sq(3) == 9").reason
    'failed'
    """
    if not tests.strip() or "assert" not in tests:
        return VerifyResult(False, "no-tests")
    try:
        ast.parse(code)
        ast.parse(tests)
    except SyntaxError as exc:
        return VerifyResult(False, "syntax-error", detail=str(exc))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="afterword-verify-") as tmp:
        script = os.path.join(tmp, "main.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(code.rstrip() + "\n\n# --- tests ---\n" + tests.rstrip() + "\nprint('__ALL_PASSED__')\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [python or sys.executable, "-I", script],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: the wall-clock kill takes grandchildren too
            preexec_fn=_limits(memory_mb, max(1, math.ceil(timeout_s))),
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return VerifyResult(False, "timeout", (time.perf_counter() - start) * 1000)
    ms = (time.perf_counter() - start) * 1000
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if proc.returncode == 0 and "__ALL_PASSED__" in stdout:
        return VerifyResult(True, "passed", ms)
    tail = stderr.strip().splitlines()[-1:] or [""]
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return VerifyResult(False, "cpu-limit", ms, tail[0])
    if "MemoryError" in stderr:
        return VerifyResult(False, "memory-limit", ms, tail[0])
    if "AssertionError" in stderr:
        return VerifyResult(False, "failed", ms, tail[0])
    return VerifyResult(False, "error", ms, tail[0])


# -- math -------------------------------------------------------------------------

_NUM = re.compile(
    r"(?P<neg>[-−])?\s*\$?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?\s*(?P<pct>%|percent\b)?",
    re.IGNORECASE,
)
_FINAL = re.compile(r"(?i)(?:final answer|answer|result|=|is)\s*[:=]?\s*(?=[-−$.\d])")


def parse_number(text: str | int | float) -> Fraction | None:
    """The answer's number: the one after "answer:"/"=" when present, else the last one in the text.

    Handles ``1,234.5``, ``-3``, ``$12``, ``3/4``, ``12.5%`` (as 0.125), ``\\frac{3}{4}`` and ``\\boxed{7}``.

    >>> parse_number("The final answer is 3/4.")
    Fraction(3, 4)
    >>> parse_number("$1,200")
    Fraction(1200, 1)
    """
    if isinstance(text, int | float):
        return Fraction(text).limit_denominator(10**9) if math.isfinite(text) else None
    s = str(text)
    s = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", s)
    s = re.sub(r"\\boxed\{([^{}]+)\}", r"answer: \1", s)
    boxed = _FINAL.search(s)
    candidates = list(_NUM.finditer(s[boxed.end() :] if boxed else s))
    if not candidates and boxed:
        candidates = list(_NUM.finditer(s))
    if not candidates:
        return None
    m = candidates[0] if boxed and boxed.end() < len(s) else candidates[-1]
    try:
        val = Fraction(m.group("num").replace(",", ""))
        if m.group("den"):
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            val /= den
    except (ValueError, ZeroDivisionError):
        return None
    if m.group("neg"):
        val = -val
    if m.group("pct"):
        val /= 100
    return val


_BIN = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": lambda x: Fraction(math.sqrt(x)).limit_denominator(10**9),
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}


def eval_arithmetic(expr: str) -> Fraction | None:
    """Evaluate an arithmetic expression exactly (Fractions) without ``eval``; None if it is not one.

    >>> eval_arithmetic("(3 + 4) * 2 / 7")
    Fraction(2, 1)
    >>> eval_arithmetic("__import__('os')") is None
    True
    """
    expr = expr.replace("×", "*").replace("÷", "/").replace("^", "**").replace("−", "-").strip().rstrip("=?. ")
    expr = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expr)
    if not expr or len(expr) > 200:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return Fraction(node.value).limit_denominator(10**12)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                if b.denominator != 1 or abs(b) > 64 or abs(a) > 10**6:
                    raise ValueError("exponent too large")
                return a**b.numerator
            op = _BIN.get(type(node.op))
            if op is None:
                raise ValueError("operator")
            return Fraction(op(a, b))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return Fraction(_FUNCS[node.func.id](*[ev(a) for a in node.args]))
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None


_EXPR_IN_TEXT = re.compile(r"[\d(][\d\s.,+\-*/×÷^()%−]*[+\-*/×÷^][\d\s.,+\-*/×÷^()−]*[\d)]")


def check_math(answer: str, *, expected: str | float | None = None, expression: str | None = None) -> VerifyResult:
    """Check an answer numerically against ``expected`` or against an arithmetic ``expression``.

    With neither, the first arithmetic expression found in ``expected``'s place is not guessed:
    the item cannot be verified (``reason="unverifiable"``).

    >>> check_math("It comes to 84.", expression="12 * 7").ok
    True
    >>> check_math("0.75", expected="3/4").ok
    True
    """
    got = parse_number(answer)
    if got is None:
        return VerifyResult(False, "no-number")
    if expression is not None:
        want = eval_arithmetic(expression)
        if want is None:
            return VerifyResult(False, "bad-expression", detail=expression)
    elif expected is not None:
        want = parse_number(expected)
        if want is None:
            return VerifyResult(False, "bad-expected", detail=str(expected))
    else:
        return VerifyResult(False, "unverifiable")
    tol = max(1e-6, 1e-6 * abs(float(want)))
    if abs(float(got) - float(want)) <= tol:
        return VerifyResult(True, "passed", detail=f"{float(got):g}")
    return VerifyResult(False, "wrong", detail=f"got {float(got):g}, want {float(want):g}")


def arithmetic_in(text: str) -> str | None:
    """The longest arithmetic expression written in ``text`` ("What is 12 * 7?" → "12 * 7"), if any."""
    best = None
    for m in _EXPR_IN_TEXT.finditer(text):
        cand = m.group(0).strip()
        if eval_arithmetic(cand) is not None and (best is None or len(cand) > len(best)):
            best = cand
    return best


# -- the synthetic share -------------------------------------------------------------


def is_synthetic(item: Any) -> bool:
    """True for a synthetic row: a Conversation or dict with ``source == "synthetic"``, or metadata saying so."""
    if isinstance(item, dict):
        meta = item.get("metadata") or {}
        return item.get("source") == "synthetic" or bool(isinstance(meta, dict) and meta.get("synthetic"))
    meta = getattr(item, "metadata", None) or {}
    return getattr(item, "source", None) == "synthetic" or bool(isinstance(meta, dict) and meta.get("synthetic"))


def cap_synthetic(
    items: Sequence[T],
    max_share: float,
    *,
    is_synth: Callable[[T], bool] = is_synthetic,
    seed: int = 0,
) -> list[T]:
    """Drop synthetic items at random (seeded) until they are at most ``max_share`` of the result.

    Order is kept. ``max_share=0`` removes all synthetic items; ``1`` keeps everything.

    >>> rows = [{"source": "user"}] * 3 + [{"source": "synthetic"}] * 9
    >>> sum(is_synthetic(r) for r in cap_synthetic(rows, 0.5))
    3
    """
    if not 0 <= max_share <= 1:
        raise ValueError("max_share must be within [0, 1]")
    flags = [is_synth(x) for x in items]
    n_syn = sum(flags)
    n_real = len(items) - n_syn
    if max_share >= 1 or n_syn == 0:
        return list(items)
    allowed = math.floor(max_share * n_real / (1 - max_share) + 1e-9)
    if n_syn <= allowed:
        return list(items)
    syn_idx = [i for i, f in enumerate(flags) if f]
    keep = set(random.Random(seed).sample(syn_idx, allowed))
    return [x for i, x in enumerate(items) if not flags[i] or i in keep]
