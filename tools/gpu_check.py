"""The GPU check's plan, its stages after the environment, and its report (see gpu_check.sh).

    python tools/gpu_check.py --out DIR --deadline EPOCH_S      # on the GPU (from gpu_check.sh)
    python tools/gpu_check.py --dry-run --out DIR               # on a CPU: check the plan
    python tools/gpu_check.py --budget STAGE                    # seconds (for the shell)

Stages and their budgets (:data:`BUDGET_S`, at most :data:`TOTAL_S` = 7 minutes together):

1. ``environment`` (gpu_check.sh): the GPU, torch, the wheels of ``tools/gpu_wheels.txt``;
2. ``tests``: the GPU test tier (``pytest tests/gpu``), its log and JUnit XML kept;
3. ``bench``: for iresnet50 and mbf at B = 128 in bf16 and fp16 (:data:`BENCH`), each in a
   fresh process under :data:`BENCH_EACH_S`: the step's phases timed with CUDA events in the
   audit's split (data, backbone forward + backward, head forward + backward, optimizer),
   next to :mod:`dist_face.audit`'s projection of the same step (W = 1, the GPU's profile);
   images/s and peak memory; the product's own step (``build_trainer`` on synthetic data)
   under ``torch.cuda.set_sync_debug_mode("error")`` (host syncs) and an attempted CUDA-graph
   capture of it, with the result;
4. ``report``: ``gpu_check.json`` and ``gpu_check.md`` in ``--out`` (kept).

Only this module's stdlib imports run at import time: the shell asks for budgets before any
wheel is installed. ``--dry-run`` checks, on a CPU: the budgets add up; the wheel list
against pyproject.toml; every test function of tests/gpu is collected; the projections and the
report are produced (measured columns empty).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOTAL_S = 420
"""The whole check, start-up and report included: 7 minutes (one 10-minute command)."""
BUDGET_S = {"environment": 45, "tests": 150, "bench": 200, "report": 10}
BENCH = [(m, p) for m in ("iresnet50", "mbf") for p in ("bf16", "fp16")]
BENCH_EACH_S = 48
BATCH = 128
CLASSES = 93_431  # ms1mv3's identities
WHEELS = ROOT / "tools" / "gpu_wheels.txt"

IMAGE = {"torch", "numpy", "pillow"}
"""Core dependencies the GPU image has (with torch's own)."""
DEFERRED = {
    "pyarrow": "imported only to read .rec indexes and CSV lists, which the check does not "
    "use; its manylinux wheel alone is larger than the 20 MiB folder",
}
REQUIRED_BY = {
    "antlr4-python3-runtime": "omegaconf",
    "pyyaml": "omegaconf",
    "pluggy": "pytest",
    "iniconfig": "pytest",
    "packaging": "pytest",
}
TESTING = {"pytest", "pytest-timeout"}
"""From the ``dev`` extra: the GPU test tier."""


def _name(req: str) -> str:
    return re.split(r"[<>=!~; \[]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def wheel_list() -> dict[str, str]:
    """``tools/gpu_wheels.txt``: normalised name -> pinned version."""
    out = {}
    for line in WHEELS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[_name(name)] = version.strip()
    return out


def check_wheels() -> list[str]:
    """Problems of the wheel list against pyproject.toml (empty: none)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r): r for r in project["dependencies"]}
    dev = {_name(r): r for r in project["optional-dependencies"]["dev"]}
    wheels = wheel_list()
    problems = []
    for name in core:
        if name not in IMAGE and name not in DEFERRED and name not in wheels:
            problems.append(f"core dependency {name} is neither on the image nor in {WHEELS.name}")
    for name in wheels:
        if name in core or name in TESTING or REQUIRED_BY.get(name) in (*core, *TESTING):
            continue
        problems.append(f"{WHEELS.name}: {name} is no core or testing dependency, nor theirs")
    for name in TESTING:
        if name not in dev:
            problems.append(f"testing wheel {name} is not in the dev extra")
        if name not in wheels:
            problems.append(f"testing dependency {name} is missing from {WHEELS.name}")
    try:
        from packaging.requirements import Requirement
    except ImportError:  # the shell's environment may lack it; the CI suite has it
        return problems
    for name, version in wheels.items():
        req = core.get(name) or dev.get(name)
        if req is not None and version not in Requirement(req).specifier:
            problems.append(f"{WHEELS.name}: {name}=={version} does not satisfy {req!r}")
    return problems


def check_budgets() -> list[str]:
    """Problems of the time plan (empty: none)."""
    problems = []
    if sum(BUDGET_S.values()) > TOTAL_S:
        problems.append(f"stage budgets {BUDGET_S} add up past {TOTAL_S} s")
    if len(BENCH) * BENCH_EACH_S > BUDGET_S["bench"]:
        problems.append(f"{len(BENCH)} benchmarks x {BENCH_EACH_S} s pass the bench budget")
    shell = (ROOT / "tools" / "gpu_check.sh").read_text()
    if f"TOTAL_S={TOTAL_S}" not in shell:
        problems.append(f"gpu_check.sh does not stop at TOTAL_S={TOTAL_S}")
    return problems


def test_functions() -> set[str]:
    """``file::name`` of every test function defined in tests/gpu."""
    names = set()
    for path in sorted((ROOT / "tests" / "gpu").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(f"tests/gpu/{path.name}::{node.name}")
    return names


def check_collection(python: str, out: Path) -> list[str]:
    """Problems collecting the GPU tier: every test function must be collected."""
    proc = subprocess.run(
        [python, "-m", "pytest", "tests/gpu", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (out / "collect.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return [f"pytest --collect-only tests/gpu exited {proc.returncode} (collect.log)"]
    collected = {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    missing = sorted(test_functions() - collected)
    return [f"not collected: {name}" for name in missing]


# -- the benchmark (GPU) ---------------------------------------------------------------------
def _config(model: str, precision: str, extra: tuple[str, ...] = ()) -> Any:
    from dist_face.config import load_config

    return load_config(
        "ms1mv3_r50",
        [
            f"--model.name={model}",
            f"--train.precision={precision}",
            f"--data.batch_size={BATCH}",
            f"--data.num_classes={CLASSES}",
            *extra,
        ],
    )


def projection(model: str, precision: str, gpu: str) -> dict[str, Any]:
    """The audit's projection of the benchmarked step (W = 1) on ``gpu``'s profile."""
    from dist_face.audit import audit_step

    return audit_step(
        "ms1mv3_r50",
        1,
        BATCH,
        precision,
        gpu,
        (f"--model.name={model}", f"--data.num_classes={CLASSES}"),
    )


def _phases(model: str, precision: str, steps: int = 20) -> dict[str, Any]:
    """The audit's split of a step, timed with CUDA events (one GPU, W = 1)."""
    import torch

    from dist_face.heads import build_head
    from dist_face.heads.sharded.row_optim import build_row_optimizer
    from dist_face.models import build_backbone

    cfg = _config(model, precision)
    dev = torch.device("cuda", 0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.backends.cudnn.benchmark = True
    backbone = build_backbone(cfg.model).to(dev).to(memory_format=torch.channels_last)
    head = build_head(cfg.head, cfg.model.embedding_size, CLASSES, precision=precision).to(dev)
    row_opt = None
    if cfg.head_update == "sparse":
        row_opt = build_row_optimizer(
            head, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum
        )
        head.hand_rows_to(row_opt.sink)
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9, fused=True)
    images = torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, CLASSES, (BATCH,)).pin_memory()
    names = ("data", "backbone_fwd", "head", "backbone_bwd", "optimizer")
    times: dict[str, list[float]] = {n: [] for n in names}
    torch.cuda.reset_peak_memory_stats(dev)
    for i in range(steps + 3):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)]
        ev[0].record()
        x = images.float().sub_(127.5).div_(127.5).contiguous(memory_format=torch.channels_last)
        ev[1].record()
        with torch.autocast("cuda", dtype=dtype):
            emb = backbone(x)
        ev[2].record()
        e = emb.detach().float().requires_grad_(True)
        head(e, labels).backward()
        if row_opt is not None:  # the kept rows, applied after the step's skip decision
            row_opt.step()
        ev[3].record()
        emb.backward(e.grad.to(emb.dtype))
        ev[4].record()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ev[5].record()
        torch.cuda.synchronize(dev)
        if i >= 3:  # warm-up: cuDNN's search, the allocator
            for n, a, b in zip(names, ev, ev[1:]):
                times[n].append(a.elapsed_time(b))
    med = {n: sorted(v)[len(v) // 2] for n, v in times.items()}
    ms = {
        "data": med["data"],
        "backbone": med["backbone_fwd"] + med["backbone_bwd"],
        "head": med["head"],
        "optimizer": med["optimizer"],
    }
    ms["step"] = sum(ms.values())
    return {
        "ms": ms,
        "images_per_s": BATCH / ms["step"] * 1e3,
        "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20,
    }


def _product_step(model: str, precision: str, out: Path) -> dict[str, Any]:
    """The trainer's own step: images/s, host syncs in "error" mode, a CUDA-graph capture."""
    import torch

    from dist_face.dist import Topology
    from dist_face.metrics import InMemorySink
    from dist_face.train.build import build_trainer

    cfg = _config(
        model,
        precision,
        (
            "--data.root=synthetic",
            "--data.num_workers=1",
            "--eval.targets=[]",
            f"--output_root={out / 'runs'}",
            f"--name={model}_{precision}",
        ),
    )
    dev = torch.device("cuda", 0)
    trainer, _ = build_trainer(cfg, Topology(), dev, sink=InMemorySink())
    step = trainer.step_fn
    batches = iter(trainer.loader_factory(0, 0))
    result: dict[str, Any] = {}
    for _ in range(3):
        step([next(batches)])
    torch.cuda.synchronize(dev)
    micro = [[next(batches)] for _ in range(10)]
    start = time.perf_counter()
    for m in micro:
        step(m)
    torch.cuda.synchronize(dev)
    result["images_per_s"] = 10 * BATCH / (time.perf_counter() - start)
    syncs = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            try:
                step([next(batches)])
            except RuntimeError as exc:  # the mode raises at the first sync of a step
                syncs.append(str(exc).splitlines()[0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    result["host_syncs"] = {"steps": 5, "steps_with_a_sync": len(syncs), "first": syncs[:1]}
    result["cuda_graph"] = _capture(step, [next(batches)])
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    return result


def _capture(step: Any, micro: list) -> str:
    """Try to capture one step in a CUDA graph and replay it: the result, in one line."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):
            step(micro)  # warm-up on the capture stream
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            out = step(micro)
        graph.replay()
        torch.cuda.synchronize()
        return f"captured and replayed (loss finite: {bool(torch.isfinite(out['loss']))})"
    except Exception as exc:  # the result is what is reported
        return f"not capturable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def bench_one(model: str, precision: str, out: Path) -> dict[str, Any]:
    """One benchmark in this process (GPU): measured phases, the product step, projection."""
    import torch

    name = torch.cuda.get_device_name(0)
    gpu = "h200" if "H200" in name else "a100" if "A100" in name else "h100"
    measured = _phases(model, precision)
    measured["product"] = _product_step(model, precision, out)
    return {
        "model": model,
        "precision": precision,
        "batch": BATCH,
        "device": name,
        "measured": measured,
        "projected": _projected(model, precision, gpu),
    }


def _projected(model: str, precision: str, gpu: str) -> dict[str, Any]:
    rep = projection(model, precision, gpu)
    keep = ("projected_ms", "projected_band_ms", "images_per_s", "images_per_s_band")
    return {
        "gpu": rep["gpu"],
        "calibrated": rep["calibrated"],
        "basis": rep["basis"],
        **{k: rep[k] for k in keep},
    }


# -- the report --------------------------------------------------------------------------------
def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The report's table: measured against projected per phase, and the step's facts."""
    lines = [
        f"# dist_face GPU check ({header.get('date', '')})",
        "",
        f"Device: {header.get('device', 'none (dry run: nothing measured)')}. "
        f"Stages: {header.get('stages', {})}.",
        "",
        "| model | precision | phase | measured ms | projected ms (band) |",
        "|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    for r in results:
        meas = (r.get("measured") or {}).get("ms", {})
        proj = r.get("projected") or {}
        pms = proj.get("projected_ms", {})
        for phase in ("data", "backbone", "head", "optimizer", "step"):
            band = ""
            if phase == "step" and proj:
                lo, hi = proj["projected_band_ms"]
                band = f" ({lo:.1f}–{hi:.1f})"
            lines.append(
                f"| {r['model']} | {r['precision']} | {phase} | {fmt(meas.get(phase))} | "
                f"{fmt(pms.get(phase))}{band} |"
            )
    lines += [
        "",
        "| model | precision | images/s measured (audit split) | images/s of the trainer's step "
        "| images/s projected (band) | peak MiB | steps with a host sync (of 5) | CUDA graph |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.get("measured") or {}
        product = m.get("product") or {}
        proj = r.get("projected") or {}
        ips = "—"
        if proj:
            lo, hi = proj["images_per_s_band"]
            ips = f"{proj['images_per_s']:.0f} ({lo:.0f}–{hi:.0f})"
        syncs = product.get("host_syncs", {}).get("steps_with_a_sync", "—")
        lines.append(
            f"| {r['model']} | {r['precision']} | {fmt(m.get('images_per_s'))} | "
            f"{fmt(product.get('images_per_s'))} | {ips} | {fmt(m.get('peak_mib'))} | {syncs} | "
            f"{product.get('cuda_graph', r.get('error', '—'))} |"
        )
    if results and results[0].get("projected"):
        p = results[0]["projected"]
        lines += [
            "",
            f"Projected: {p['gpu']}, efficiencies calibrated {p['calibrated']} ({p['basis']}); "
            "W = 1 (one GPU: no collectives). Measured: CUDA events around each phase, median "
            "of 20 steps after 3 warm-up steps.",
        ]
    return "\n".join(lines) + "\n"


def _run_tests(python: str, out: Path, budget: float) -> dict[str, Any]:
    cmd = [python, "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={out / 'tests.xml'}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        log, rc = f"{exc.stdout or ''}\nTIMEOUT after {budget:.0f} s", 124
    (out / "tests.log").write_text(log if isinstance(log, str) else log.decode())
    tail = [line for line in str(log).splitlines() if line.strip()][-1:]
    return {"returncode": rc, "summary": tail[0] if tail else ""}


def _run_bench(python: str, out: Path, model: str, precision: str, budget: float) -> dict:
    path = out / f"bench_{model}_{precision}.json"
    cmd = [python, str(Path(__file__)), "--bench-one", model, precision, "--out", str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        (out / f"bench_{model}_{precision}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode == 0 and path.exists():
            return json.loads(path.read_text())
        error = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {budget:.0f} s"
    return {"model": model, "precision": precision, "error": error, "measured": None}


def run(out: Path, deadline: float, python: str, stages: set[str]) -> int:
    """The stages after the environment, each within its budget and the deadline."""
    header: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}
    import torch

    header["device"] = torch.cuda.get_device_name(0)
    header["torch"] = torch.__version__
    header["stages"] = dict(BUDGET_S)
    reserve = BUDGET_S["report"]

    def left(stage: str) -> float:
        return max(1.0, min(BUDGET_S[stage], deadline - time.time() - reserve))

    failed = 0
    if "tests" in stages:
        header["tests"] = _run_tests(python, out, left("tests"))
        failed |= header["tests"]["returncode"] not in (0, 5)
    results = []
    if "bench" in stages:
        bench_end = time.time() + left("bench")
        for model, precision in BENCH:
            budget = min(BENCH_EACH_S, bench_end - time.time())
            if budget < 10:
                results.append({"model": model, "precision": precision, "error": "no time left"})
                continue
            results.append(_run_bench(python, out, model, precision, budget))
        failed |= any(r.get("error") for r in results)
    write_report(out, header, results)
    return int(failed)


def write_report(out: Path, header: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out``."""
    (out / "gpu_check.json").write_text(json.dumps({**header, "bench": results}, indent=2))
    (out / "gpu_check.md").write_text(markdown(results, header))


def dry_run(out: Path, python: str) -> int:
    """Check the plan on a CPU (module doc); 0 when every check passes."""
    problems = check_budgets() + check_wheels() + check_collection(python, out)
    results = []
    for model, precision in BENCH:
        try:
            results.append(
                {
                    "model": model,
                    "precision": precision,
                    "measured": None,
                    "projected": _projected(model, precision, "h100"),
                }
            )
        except Exception as exc:  # a plan whose projection fails is a failed plan
            problems.append(f"projection of {model} {precision}: {type(exc).__name__}: {exc}")
    header = {"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "stages": BUDGET_S}
    header["dry_run"] = {"problems": problems, "collected": sorted(test_functions())}
    write_report(out, header, results)
    for p in problems:
        print(f"gpu_check --dry-run: {p}", file=sys.stderr)
    print(f"gpu_check --dry-run: {'FAIL' if problems else 'PASS'}; report in {out}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--deadline", type=float, default=0.0, help="epoch seconds to finish by")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--budget", choices=sorted(BUDGET_S))
    ap.add_argument("--total", action="store_true", help="print TOTAL_S")
    ap.add_argument("--skip", action="append", default=[], choices=("tests", "bench"))
    ap.add_argument("--bench-one", nargs=2, metavar=("MODEL", "PRECISION"))
    args = ap.parse_args(argv)
    if args.budget:
        print(BUDGET_S[args.budget])
        return 0
    if args.total:
        print(TOTAL_S)
        return 0
    if args.out is None:
        ap.error("--out DIR is required")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        return dry_run(args.out, sys.executable)
    if args.bench_one:
        model, precision = args.bench_one
        result = bench_one(model, precision, args.out)
        (args.out / f"bench_{model}_{precision}.json").write_text(json.dumps(result, indent=2))
        return 0
    deadline = args.deadline or time.time() + TOTAL_S
    return run(args.out, deadline, sys.executable, {"tests", "bench"} - set(args.skip))


if __name__ == "__main__":
    raise SystemExit(main())
