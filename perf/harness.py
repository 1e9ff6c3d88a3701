"""A deliberately small benchmark harness for pipevisor.

Why it exists instead of pytest-benchmark or pyperf: every figure we publish must
be a ratio against a floor measured in the same process, on the same machine,
minutes apart, and the floors involve child processes that must never outlive
the run.  Keeping the machinery to one file makes both properties auditable.

Cases register themselves at import time with :func:`case`; the runner imports
every module under ``perf.cases`` so adding a case never touches this file.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import fnmatch
import importlib
import inspect
import json
import os
import pkgutil
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeAlias, cast

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
RESULTS_DIR = PERF_DIR / "results"
SCHEMA_VERSION = 1

Sample: TypeAlias = float | Sequence[float]
CaseFn: TypeAlias = Callable[["Context"], "Sample | Awaitable[Sample]"]
HookFn: TypeAlias = Callable[["Context"], Any]

# Units where a bigger number is better; everything else is treated as a cost.
_RATE_SUFFIXES = ("/s", "/sec", "per second")


class SkipCase(Exception):
    """Raised (via ``Context.skip``) when a case cannot run on this machine.

    A missing compiler is not a failure of the code under test, so CI must stay
    green while the report still says clearly what was not measured.
    """


@dataclass
class Case:
    """One thing to measure.

    ``fn`` returns one sample, or a list of samples, per repetition; the
    harness pools them.  ``baseline`` names another case of the same run whose
    median this one is divided by; units must match for a ratio to mean anything.
    """

    name: str
    fn: CaseFn
    group: str = "misc"
    unit: str = "us/call"
    baseline: str | None = None
    setup: HookFn | None = None
    teardown: HookFn | None = None
    repeat: int | None = None
    warmup: int | None = None
    description: str = ""
    higher_is_better: bool | None = None
    # False: left out of a plain ``--quick`` run (still run when --only names it).
    in_quick: bool = True

    def __post_init__(self) -> None:
        if self.higher_is_better is None:
            self.higher_is_better = self.unit.endswith(_RATE_SUFFIXES)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


REGISTRY: dict[str, Case] = {}


def register(c: Case) -> Case:
    """Add a case; duplicate names are an error because ratios refer to names."""
    if c.name in REGISTRY:
        raise ValueError(f"duplicate perf case name {c.name!r}")
    REGISTRY[c.name] = c
    return c


def case(
    name: str,
    *,
    group: str = "misc",
    unit: str = "us/call",
    baseline: str | None = None,
    setup: HookFn | None = None,
    teardown: HookFn | None = None,
    repeat: int | None = None,
    warmup: int | None = None,
    higher_is_better: bool | None = None,
    in_quick: bool = True,
) -> Callable[[CaseFn], CaseFn]:
    """Decorator form of :func:`register`; the function's docstring becomes the description."""

    def deco(fn: CaseFn) -> CaseFn:
        register(
            Case(
                name=name,
                fn=fn,
                group=group,
                unit=unit,
                baseline=baseline,
                setup=setup,
                teardown=teardown,
                repeat=repeat,
                warmup=warmup,
                description=inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0],
                higher_is_better=higher_is_better,
                in_quick=in_quick,
            )
        )
        return fn

    return deco


# --------------------------------------------------------------------------- processes

_LIVE: set[subprocess.Popen[bytes]] = set()


def _reap(proc: subprocess.Popen[bytes], grace: float = 1.0) -> None:
    """Close pipes first so well-behaved peers exit on EOF; kill only stragglers."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    _LIVE.discard(proc)


def reap_all(grace: float = 1.0) -> None:
    for proc in list(_LIVE):
        _reap(proc, grace)


atexit.register(reap_all)


def _leftover_children() -> list[int]:
    """Last line of defence: find (and kill) any descendant a case forgot about."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a project dependency
        return []
    leftovers = psutil.Process().children(recursive=True)
    for child in leftovers:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(leftovers, timeout=2)
    return [c.pid for c in leftovers]


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What a case sees: mode, its own state, and helpers that keep runs clean."""

    case: Case
    quick: bool
    state: Any = None
    notes: dict[str, Any] = field(default_factory=dict)
    # True during discarded repetitions, so cases can keep side statistics clean.
    warming_up: bool = False

    def pick(self, full: int, quick: int) -> int:
        """Iteration counts live next to the code that uses them, for both modes."""
        return quick if self.quick else full

    def skip(self, reason: str) -> NoReturn:
        raise SkipCase(reason)

    def note(self, key: str, value: Any) -> None:
        """Attach a side figure (e.g. a tail percentile) to the JSON without ranking it."""
        self.notes[key] = value

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Spawn a tracked child that is reaped after the case even if it raises.

        A fresh session keeps the terminal's Ctrl-C away from children, so the
        harness alone decides when and how they stop (EOF first, then kill).
        """
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
        _LIVE.add(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes], grace: float = 1.0) -> None:
        """Close pipes, wait ``grace`` seconds for the child to exit, then kill it."""
        _reap(proc, grace)


def private_cache_dir() -> Path:
    """perf's cache of compiled helpers (``$TMPDIR/pipevisor-perf-<uid>``), checked
    before anything in it is run or imported: a real directory, ours, writable by us
    alone. The name is predictable, so another local user could make it first and
    leave a binary or a compiled module for perf to run as whoever runs perf."""
    import stat
    import tempfile

    cache = Path(tempfile.gettempdir()) / f"pipevisor-perf-{os.getuid()}"
    try:
        cache.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(cache)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise RuntimeError(
            f"{cache} is not a private directory of this user (a symlink, another "
            f"owner, or writable by others): perf will not run what it holds; remove it")
    return cache


def build_c(ctx: Context, source: Path, extra_flags: Sequence[str] = ()) -> Path:
    """Compile a helper once per source/compiler/flags combination.

    Cached outside the repo, keyed by content, so repeated runs (and CI smoke
    runs) do not pay compile time and concurrent runs never see a half-written
    binary.  No compiler means the case is skipped, not failed.
    """
    import hashlib
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        ctx.skip("no C compiler found (set CC or install cc/gcc/clang)")
    flags = ["-O2", *extra_flags]
    key = hashlib.sha256(source.read_bytes() + cc.encode() + " ".join(flags).encode()).hexdigest()
    cache = private_cache_dir()
    out = cache / f"{source.stem}-{key[:16]}"
    if out.exists():
        return out
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [cc, *flags, "-o", str(tmp), str(source)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cc} failed on {source.name}:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- statistics


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; defined for any n >= 1."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    xs = sorted(samples)
    q1, q3 = _quantile(xs, 0.25), _quantile(xs, 0.75)
    return {
        "median": statistics.median(xs),
        "p10": _quantile(xs, 0.10),
        "p90": _quantile(xs, 0.90),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": xs[0],
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


# --------------------------------------------------------------------------- running


@dataclass
class Settings:
    quick: bool = False
    repeat: int | None = None
    warmup: int | None = None
    pin_cpu: int | None = None
    uvloop: bool = False

    def backend_options(self) -> dict[str, Any]:
        """What ``anyio.run`` gets for async cases: uvloop under anyio's asyncio backend.

        Only the harness's own loop changes; the C and blocking baselines do not
        use one, so with ``--uvloop`` every ratio against them prices uvloop too.
        """
        return {"use_uvloop": True} if self.uvloop else {}

    def reps_for(self, c: Case) -> tuple[int, int]:
        if self.quick:
            default_repeat, default_warmup = 3, 1
        else:
            default_repeat, default_warmup = c.repeat or 15, c.warmup if c.warmup is not None else 2
        repeat = self.repeat if self.repeat is not None else default_repeat
        warmup = self.warmup if self.warmup is not None else default_warmup
        return max(1, repeat), max(0, warmup)


def _as_list(sample: Sample) -> list[float]:
    if isinstance(sample, int | float):
        return [float(sample)]
    return [float(x) for x in sample]


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _lifecycle_sync(c: Case, ctx: Context, reps: int, warmup: int) -> list[float]:
    if c.setup is not None:
        ctx.state = c.setup(ctx)
    try:
        ctx.warming_up = True
        for _ in range(warmup):
            c.fn(ctx)
        ctx.warming_up = False
        samples: list[float] = []
        for _ in range(reps):
            samples.extend(_as_list(cast(Sample, c.fn(ctx))))
        return samples
    finally:
        if c.teardown is not None:
            c.teardown(ctx)


async def _lifecycle_async(c: Case, ctx: Context, reps: int, warmup: int) -> list[float]:
    # Setup, repetitions and teardown share one event loop so that async
    # resources (a running supervisor, task groups) survive across repetitions.
    if c.setup is not None:
        ctx.state = await _maybe_await(c.setup(ctx))
    try:
        ctx.warming_up = True
        for _ in range(warmup):
            await _maybe_await(c.fn(ctx))
        ctx.warming_up = False
        samples: list[float] = []
        for _ in range(reps):
            samples.extend(_as_list(await _maybe_await(c.fn(ctx))))
        return samples
    finally:
        if c.teardown is not None:
            await _maybe_await(c.teardown(ctx))


def run_case(c: Case, settings: Settings) -> dict[str, Any]:
    reps, warmup = settings.reps_for(c)
    ctx = Context(case=c, quick=settings.quick)
    row: dict[str, Any] = {
        "name": c.name,
        "group": c.group,
        "unit": c.unit,
        "higher_is_better": c.higher_is_better,
        "baseline": c.baseline,
        "description": c.description,
        "repetitions": reps,
        "warmup": warmup,
    }
    t0 = time.perf_counter()
    try:
        if c.is_async:
            import anyio

            samples = anyio.run(_lifecycle_async, c, ctx, reps, warmup,
                                backend="asyncio", backend_options=settings.backend_options())
        else:
            samples = _lifecycle_sync(c, ctx, reps, warmup)
    except SkipCase as exc:
        row.update(status="skipped", reason=str(exc))
    except KeyboardInterrupt:
        # Whoever pressed Ctrl-C wants the terminal back, not a polite EOF dance.
        reap_all(grace=0.1)
        raise
    except Exception as exc:
        traceback.print_exc()
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    else:
        if not samples:
            row.update(status="error", reason="case returned no samples")
        else:
            row.update(status="ok", n_samples=len(samples), **summarize(samples))
            row["samples"] = samples
    finally:
        reap_all()
    row["notes"] = ctx.notes
    row["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return row


def attach_ratios(rows: list[dict[str, Any]]) -> None:
    """Divide each median by its baseline's median from the same run.

    ``ratio`` is the plain quotient in the case's unit.  ``cost`` is oriented so
    that > 1 always means "worse than the baseline" (for rates it is inverted),
    which is what the chart plots and what people usually mean by "x slower".
    """
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        row["ratio"] = row["cost"] = None
        base = by_name.get(row["baseline"] or "")
        if row["status"] != "ok" or base is None or base["status"] != "ok":
            continue
        if base["unit"] != row["unit"]:
            row["ratio_error"] = f"unit {row['unit']!r} differs from baseline unit {base['unit']!r}"
            continue
        if base["median"] == 0 or row["median"] == 0:
            # An idle CPU figure can be exactly 0; a ratio against it means nothing.
            row["ratio_error"] = "a median of 0 on either side: no ratio"
            continue
        ratio = row["median"] / base["median"]
        row["ratio"] = ratio
        row["cost"] = 1.0 / ratio if row["higher_is_better"] else ratio


# --------------------------------------------------------------------------- discovery


def load_cases(package: str = "perf.cases") -> list[str]:
    """Import every module of the package; returns import errors instead of dying.

    A broken case module from one contributor should not hide everyone else's
    numbers, but it must still turn the run red.
    """
    errors: list[str] = []
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package}.{info.name}")
        except Exception:
            errors.append(f"{package}.{info.name}: {traceback.format_exc()}")
    return errors


def _matches(c: Case, patterns: Sequence[str]) -> bool:
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            if fnmatch.fnmatch(c.name, pat) or fnmatch.fnmatch(c.group, pat):
                return True
        elif pat in c.name or pat == c.group:
            return True
    return False


def select(patterns: Sequence[str]) -> tuple[list[Case], list[str]]:
    """Filter the registry, pulling in baselines the selection depends on.

    Without the baseline in the same run a ratio would have to come from another
    run, which is exactly what the rules forbid.
    """
    chosen = [c for c in REGISTRY.values() if not patterns or _matches(c, patterns)]
    names = {c.name for c in chosen}
    added: list[str] = []
    for c in list(chosen):
        if c.baseline and c.baseline not in names and c.baseline in REGISTRY:
            names.add(c.baseline)
            added.append(c.baseline)
    ordered = [c for c in REGISTRY.values() if c.name in names]
    return ordered, added


# --------------------------------------------------------------------------- reporting


def machine_info(pin_cpu: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "pinned_cpu": pin_cpu,
    }
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    try:
        import psutil

        info["cpu_count_physical"] = psutil.cpu_count(logical=False)
        freq = psutil.cpu_freq()
        info["cpu_freq_mhz"] = freq._asdict() if freq else None
    except Exception as exc:  # cpu_freq is unavailable in many VMs/containers
        info["cpu_freq_mhz"] = None
        info["cpu_freq_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import orjson

        info["orjson"] = orjson.__version__
    except ImportError:
        pass
    from importlib import metadata

    for dist in ("uvloop", "jsonschema-rs", "fastjsonschema"):
        # Optional speed packages: whether a figure could have used them.
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PERF_DIR, timeout=5
        )
        if rev.returncode == 0:
            info["git_commit"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 10_000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    header = ["case", "group", "unit", "median", "p90", "IQR", "n", "ratio", "cost", "baseline"]
    lines: list[list[str]] = []
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                [r["name"], r["group"], r["unit"], f"{r['status'].upper()}: {r['reason']}"]
            )
            continue
        lines.append(
            [
                r["name"],
                r["group"],
                r["unit"],
                _fmt(r["median"]),
                _fmt(r["p90"]),
                _fmt(r["iqr"]),
                str(r["n_samples"]),
                "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                "-" if r["cost"] is None else f"{r['cost']:.2f}x",
                r["baseline"] or "-",
            ]
        )
    full = [ln for ln in lines if len(ln) == len(header)]
    widths = [max([len(h), *(len(ln[i]) for ln in full)]) for i, h in enumerate(header)]
    numeric = {3, 4, 5, 6, 7, 8}

    def render(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if len(cells) != len(header) and i == len(cells) - 1:
                out.append(cell)  # status message spans the rest of the row
                break
            out.append(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), sep, *(render(ln) for ln in lines)])


def write_chart(rows: list[dict[str, Any]], png: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart: matplotlib not installed, skipping PNG (pip install matplotlib)"
    data = [(r["name"], r["cost"]) for r in rows if r.get("cost") is not None]
    if not data:
        return "chart: no ratios to plot"
    names, costs = zip(*data, strict=True)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(list(names), list(costs), color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")  # spawn-per-call sits orders of magnitude away from the pipe floors
    ax.set_xlabel("cost vs baseline of the same run (log, >1 = worse)")
    ax.invert_yaxis()
    ax.set_xlim(min(min(costs), 1.0) / 2, max(max(costs), 1.0) * 4)  # room for the labels
    for y, v in enumerate(costs):
        ax.annotate(f"{v:.2f}x", (v, y), xytext=(3, 0), textcoords="offset points", va="center")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return f"chart: {png}"


# --------------------------------------------------------------------------- entry point


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny counts, seconds total")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="substring or glob on case name or group; repeatable or comma-separated",
    )
    p.add_argument("--repeat", type=int, help="repetitions per case (overrides case defaults)")
    p.add_argument("--warmup", type=int, help="discarded warm-up repetitions per case")
    p.add_argument("--json", type=Path, metavar="PATH", help="write results here only")
    p.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        default=int(os.environ["PERF_PIN_CPU"]) if os.environ.get("PERF_PIN_CPU") else None,
        help="pin the harness and every child to one CPU (env PERF_PIN_CPU)",
    )
    p.add_argument(
        "--uvloop",
        action="store_true",
        default=os.environ.get("PERF_UVLOOP", "") not in ("", "0"),
        help="run the async cases on uvloop under anyio (env PERF_UVLOOP=1); needs uvloop",
    )
    p.add_argument(
        "--compiled",
        action="store_true",
        help="run on a mypyc-compiled copy of the call path (perf/compiled.py); needs mypy "
             "and a C compiler",
    )
    p.add_argument("--list", action="store_true", help="list registered cases and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compiled: list[str] = []
    if args.compiled:
        from perf import compiled as _compiled

        if not os.environ.get(_compiled.ROOT_ENV):
            _compiled.reexec(list(sys.argv[1:] if argv is None else argv))
        compiled = _compiled.compiled_modules()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    import_errors = load_cases()
    for err in import_errors:
        print(f"error importing case module {err}", file=sys.stderr)

    if args.list:
        for c in REGISTRY.values():
            print(f"{c.name:32} {c.group:12} {c.unit:10} {c.description}")
        return 1 if import_errors else 0

    patterns = [p for chunk in args.only for p in chunk.split(",") if p]
    cases, added = select(patterns)
    if args.quick and not patterns:
        # e.g. the peers (issue #20), which need their own venvs and take minutes
        left_out = [c.name for c in cases if not c.in_quick]
        cases = [c for c in cases if c.in_quick]
        if left_out:
            print(f"--quick leaves out {len(left_out)} full-run-only case(s); "
                  "--only selects them")
    if added:
        print(f"including baselines needed for ratios: {', '.join(added)}")
    if not cases:
        print(f"no case matches {patterns}", file=sys.stderr)
        return 2

    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("--uvloop needs uvloop: pip install uvloop", file=sys.stderr)
            return 2
    if args.pin is not None:
        # Children inherit the mask, so both ends of every pipe share one CPU.
        os.sched_setaffinity(0, {args.pin})
    settings = Settings(quick=args.quick, repeat=args.repeat, warmup=args.warmup, pin_cpu=args.pin,
                        uvloop=args.uvloop)

    started = _dt.datetime.now(_dt.UTC)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        for c in cases:
            print(f"running {c.name} ...", end=" ", flush=True)
            row = run_case(c, settings)
            rows.append(row)
            print(f"{row['status']} ({row['elapsed_s']:.2f}s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting what finished", file=sys.stderr)
    finally:
        reap_all()
        leftovers = _leftover_children()
    if leftovers:
        print(f"warning: killed leftover child processes {leftovers}", file=sys.stderr)

    attach_ratios(rows)
    duration = time.perf_counter() - t0
    print()
    print(format_table(rows))
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(f"\n{'quick' if args.quick else 'full'} run: {duration:.1f}s, {len(rows)} case(s), "
          f"async cases on {loop_name}"
          + (f", {len(compiled)} modules compiled with mypyc" if compiled else ""))

    result = {
        "schema": SCHEMA_VERSION,
        "started_at": started.isoformat(),
        "duration_s": round(duration, 3),
        "mode": "quick" if args.quick else "full",
        "argv": list(sys.argv if argv is None else argv),
        "interrupted": interrupted,
        "settings": {
            "quick": settings.quick,
            "repeat": settings.repeat,
            "warmup": settings.warmup,
            "pin_cpu": settings.pin_cpu,
            "event_loop": loop_name,
            "compiled": compiled,
        },
        "import_errors": import_errors,
        "leftover_children": leftovers,
        "machine": machine_info(args.pin),
        "cases": rows,
    }
    payload = json.dumps(result, indent=2) + "\n"
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(payload)
        targets = [args.json]
    else:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        targets = [RESULTS_DIR / f"{stamp}.json", RESULTS_DIR / "latest.json"]
        for t in targets:
            t.write_text(payload)
    print(f"json: {', '.join(str(t) for t in targets)}")
    print(write_chart(rows, targets[0].with_suffix(".png")))

    if interrupted:
        return 130
    failed = import_errors or any(r["status"] == "error" for r in rows)
    return 1 if failed else 0
