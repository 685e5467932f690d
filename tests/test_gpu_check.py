"""The GPU check (``scripts/gpu_check.py``): its CPU self-check end to end, the one-line
refusal without CUDA, the section runner (failures, budget stops, incremental reports) and
the projection of the paper protocol that it shares with ``scripts/reproduce.py``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import once_per_session

from dissecting_adam.bench import report
from dissecting_adam.bench.check_measure import pytest_counts
from dissecting_adam.bench.recommend import best_by, compile_choice, loss_difference
from dissecting_adam.bench.sections import FAILED, INTERRUPTED, OK, STOPPED, Section, run_sections
from dissecting_adam.protocol import estimate as estimate_mod
from dissecting_adam.protocol.estimate import project, projection

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


SECTIONS = ["environment", "optimizer_step", "problem_step", "runner_overhead",
            "runs_per_hour", "p1_run", "projection", "p1_protocol"]  # fmt: skip


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# --- the CPU self-check, end to end ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    """The CPU self-check's process and report folder, run once per test session."""

    def run() -> dict:
        out = tmp_path_factory.mktemp("gpu_check")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--budget-s", "200",
             "--out", str(out)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=480,
        )  # fmt: skip
        took = time.perf_counter() - t0
        return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                "out": str(out), "took": took}  # fmt: skip

    r = once_per_session(tmp_path_factory, "gpu_check_tiny", run)
    proc = SimpleNamespace(returncode=r["returncode"], stdout=r["stdout"], stderr=r["stderr"])
    return proc, Path(r["out"]), r["took"]


def test_tiny_check_writes_both_reports(tiny_check):
    proc, out, took = tiny_check
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert took < 290  # about 200 s on the loaded 2-core development machine
    doc = strict_json((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert [s["name"] for s in doc["sections"]] == SECTIONS
    for s in doc["sections"]:
        assert s["status"] in (OK, STOPPED), (s["name"], s.get("error"))
        assert s["title"] in md
    assert "not a measurement" in md and doc["header"]["tiny"] is True
    assert "not a measurement" in proc.stdout
    assert "## Recommendations" in md


def _rows(doc: dict, section: str, table: int) -> list[dict]:
    sec = next(s for s in doc["sections"] if s["name"] == section)
    return sec["tables"][table]["rows"]


@pytest.mark.parametrize(
    "section, table, column, least_rows",
    [
        # every method single-tensor, foreach and fused, and Adam foreach and fused
        ("optimizer_step", 0, "median_ms", 20),
        ("optimizer_step", 0, "vs_adam_fused", 20),
        ("optimizer_step", 0, "gb_per_s", 20),
        ("optimizer_step", 0, "vs_copy", 20),
        ("optimizer_step", 0, "first_step_ms", 20),
        ("optimizer_step", 1, "seconds", 1),  # the C kernel's build
        ("problem_step", 0, "tflop_per_s", 2),  # the fp32 and bf16 matmul peaks
        ("problem_step", 1, "step_ms", 16),  # four problems x four eager settings
        ("problem_step", 1, "tflop_per_s", 16),
        ("problem_step", 1, "vs_peak", 16),
        ("problem_step", 1, "compile_s", 1),  # P1 compiled
        ("problem_step", 1, "speed_up", 1),
        ("runner_overhead", 0, "bare_ms", 1),
        ("runner_overhead", 0, "runner_ms", 1),
        ("runner_overhead", 1, "seconds", 2),  # an evaluation pass of each split
        ("runs_per_hour", 0, "runs_per_hour", 1),
        ("runs_per_hour", 0, "steady_steps_per_s", 1),  # from the runs' training time
        ("runs_per_hour", 0, "steps_per_s", 1),  # over the wall time
        ("runs_per_hour", 1, "cost", 4),  # a group against a single run, on every problem
        ("p1_run", 0, "wall_s", 1),
        ("projection", 0, "hours", 4),
        ("p1_protocol", 0, "wall_s", 1),
    ],
)  # fmt: skip
def test_tiny_check_has_the_promised_numbers(tiny_check, section, table, column, least_rows):
    _, out, _ = tiny_check
    rows = _rows(strict_json((out / "report.json").read_text()), section, table)
    values = [row[column] for row in rows if row.get(column) is not None]
    assert len(values) >= least_rows, rows
    assert all(v >= 0 for v in values) and any(v > 0 for v in values), values


def test_tiny_check_compares_the_compiled_first_loss_with_eager(tiny_check):
    _, out, _ = tiny_check
    rows = _rows(strict_json((out / "report.json").read_text()), "problem_step", 1)
    (row,) = [r for r in rows if r["setting"] == "compile"]
    assert row["status"] == "default: ok", row
    assert row["loss_rel_diff"] is not None and row["loss_rel_diff"] <= 1e-5  # CPU: 5e-8


def test_tiny_check_times_every_setting_and_names_the_machine(tiny_check):
    _, out, _ = tiny_check
    doc = strict_json((out / "report.json").read_text())
    rows = _rows(doc, "problem_step", 1)
    wrn_name = "cifar100_wrn404"
    wrn = {r["setting"]: r for r in rows if r["problem"] == wrn_name}
    assert set(wrn) >= {"eager", "cudnn_benchmark", "channels_last", "channels_last+bf16"}
    assert wrn["channels_last+bf16"]["precision"] == "bf16"
    for setting in ("cudnn_benchmark", "channels_last"):  # the first loss, against eager
        assert wrn[setting]["loss_rel_diff"] <= 1e-5, wrn[setting]
    assert wrn["channels_last+bf16"]["loss_rel_diff"] <= 2e-2  # bf16 products
    for fused in ("fused_bn_relu", "fused_bn_relu+bf16"):  # Triton: CUDA only, said so
        assert wrn[fused]["status"] == "skipped: its Triton kernels need a CUDA device, not cpu"
    assert not any(r["setting"].startswith("fused") for r in rows if r["problem"] != wrn_name)
    # FLOPs counted once and scaled: WRN-40-4 at batch 128 is 997 GFLOP, so 7.8 per example
    assert wrn["eager"]["gflop_per_step"] == pytest.approx(997.0 / 64, rel=0.01)
    for sec in doc["sections"]:
        assert any(n.startswith("machine: cpu: CPU ") for n in sec["notes"]), sec["name"]
    step = next(s for s in doc["sections"] if s["name"] == "problem_step")
    assert any("whole-step CUDA graphs skipped: whole-step CUDA graphs need a CUDA" in n
               for n in step["notes"])  # fmt: skip
    assert (
        "batch norm + ReLU layer skipped: its Triton kernels need a CUDA device, not cpu"
        in (step["notes"])
    )
    projection = next(s for s in doc["sections"] if s["name"] == "projection")
    titles = " ".join(t["title"] for t in projection["tables"])
    assert "fp32/tf32, the fastest setting" in titles and "bf16 autocast" in titles


def test_tiny_check_labels_generated_data_and_the_p1_run(tiny_check):
    _, out, _ = tiny_check
    doc = strict_json((out / "report.json").read_text())
    assert all(r["data"] == "generated data (timing only)" for r in _rows(doc, "problem_step", 1))
    (p1,) = _rows(doc, "p1_run", 0)
    assert p1["status"] == "completed" and p1["steps"] == 10 and p1["exit_status"] == 0
    assert "generated data (timing only)" in (out / "report.md").read_text()


def test_tiny_check_runs_the_whole_p1_protocol_and_keeps_its_outputs(tiny_check):
    """The last section resumes the reproduction section 6 stopped, runs it to its end
    (smoke profile, generated data) and copies Fig. 5, the summary and the claims into
    the report's folder; the packing section measured the driver's groups too."""
    _, out, _ = tiny_check
    doc = strict_json((out / "report.json").read_text())
    (row,) = _rows(doc, "p1_protocol", 0)
    assert row["exit_status"] == 0 and not row["stopped_at_deadline"]
    assert row["outputs"] == "fig5.png, summary.md, claims.md"
    for name in ("fig5.png", "summary.md", "claims.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "summary.md").read_text() == (out / "p1_protocol" / "summary.md").read_text()
    selected = _rows(doc, "p1_protocol", 1)
    assert sorted(r["pair"] for r in selected) == sorted(
        f"fmnist_2c2d/{m}" for m in ("msgd", "mssd", "msvag", "adam"))  # fmt: skip
    assert len(_rows(doc, "p1_protocol", 2)) == 4  # the replicates' summary, per method
    p1 = next(s for s in doc["sections"] if s["name"] == "p1_run")
    for started in p1["tables"][1]["rows"] if len(p1["tables"]) > 1 else []:
        # SIGTERM at its deadline: 143 once the script's handler is in place; -15 while it
        # is still importing (a loaded machine), when it has written nothing. Both resumable.
        assert started["exit_status"] in (0, 143, -15)
    sec = next(s for s in doc["sections"] if s["name"] == "p1_protocol")
    assert any("Batching: single runs (auto: CPU" in note for note in sec["notes"])
    driver_rows = [r for r in _rows(doc, "runs_per_hour", 0) if r.get("driver")]
    assert driver_rows and all(r["members"] == 2 and r["finished"] for r in driver_rows)


def test_without_cuda_one_line_and_status_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device here")
    assert "--device cpu --tiny" in lines[0]
    assert not (tmp_path / "report.md").exists()


# --- the section runner ---------------------------------------------------------------
def _ok(ctx):
    ctx.table("numbers", [{"x": 1.5}])


def _fails(ctx):
    raise ValueError("broken on purpose")


def _polls(ctx):  # stops itself when its share is spent
    while not ctx.out_of_time():
        time.sleep(0.01)


def _ignores(ctx):  # overruns: the alarm stops it
    ctx.table("partial", rows := [])
    for i in range(1000):
        rows.append({"i": i})
        time.sleep(0.01)


@pytest.mark.parametrize(
    "body, status",
    [(_ok, OK), (_fails, FAILED), (_polls, STOPPED), (_ignores, STOPPED)],
)
def test_a_section_is_recorded_and_the_next_one_runs(body, status):
    after = []
    sections = [Section("first", "First", body, weight=1.0, floor_s=0.0),
                Section("second", "Second", lambda ctx: after.append(1), floor_s=0.0)]  # fmt: skip
    t0 = time.perf_counter()
    records = run_sections(sections, budget_s=0.4, grace=lambda share: 0.2)
    assert time.perf_counter() - t0 < 3
    assert [r["status"] for r in records] == [status, OK] and after == [1]
    if status == FAILED:
        assert "ValueError: broken on purpose" in records[0]["error"]["error"]
        assert any("_fails" in frame for frame in records[0]["error"]["traceback"])
    if body is _ignores:  # what it measured before the stop is kept
        assert records[0]["tables"][0]["rows"] and records[0]["tables"][0]["columns"] == ["i"]


def test_the_report_is_written_after_every_section(tmp_path):
    seen = []

    def reads_report(ctx):
        seen.append(strict_json((tmp_path / "report.json").read_text()))

    def write(records):
        report.write(tmp_path, {"header": {"title": "t", "facts": {}}, "sections": records})

    sections = [Section("a", "A", _fails), Section("b", "B", reads_report)]
    run_sections(sections, budget_s=10, on_update=write)
    (before,) = seen
    assert [s["status"] for s in before["sections"]] == [FAILED, "not run yet"]
    assert "## 1. A: failed" in (tmp_path / "report.md").read_text()


def test_an_interrupt_is_recorded_then_raised():
    def interrupted(ctx):
        raise KeyboardInterrupt

    updates = []
    sections = [Section("a", "A", _ok), Section("b", "B", interrupted), Section("c", "C", _ok)]
    with pytest.raises(KeyboardInterrupt):
        run_sections(sections, budget_s=10, on_update=lambda r: updates.append(list(r)))
    assert [r["status"] for r in updates[-1]] == [OK, INTERRUPTED, "not run yet"]


@pytest.mark.parametrize(
    "value, expected",
    [(float("nan"), None), (float("inf"), None), (1.5, 1.5), ((1, 2), [1, 2]),
     ({"a": [float("-inf")]}, {"a": [None]}), (Path("x"), "x")],
)  # fmt: skip
def test_report_json_is_strict(value, expected):
    assert strict_json(report.to_json({"v": value})) == {"v": expected}


@pytest.mark.parametrize(
    "output, counts",
    [
        ("sss\n3 skipped, 10 deselected in 2.1s\n", {"skipped": 3, "passed": 0}),
        ("..F\nFAILED t.py::x\n2 passed, 1 failed in 3.0s\n", {"passed": 2, "failed": 1}),
        ("..s.F  [ 40%]\n", {"passed": 3, "skipped": 1, "failed": 1}),  # stopped half-way
    ],
)
def test_pytest_counts(output, counts):
    found = pytest_counts(output)
    assert {k: found[k] for k in counts} == counts


# --- the projection (shared with scripts/reproduce.py) --------------------------------
def fake_reproduction(methods_per_example, budget, points, seeds, frac, problems=("p",)):
    def spec(per_example):
        method = SimpleNamespace(per_example=per_example)
        return SimpleNamespace(num_steps=budget, optimizer=SimpleNamespace(method=method))

    base = {(p, f"m{i}"): spec(mb) for p in problems for i, mb in enumerate(methods_per_example)}
    search = SimpleNamespace(replicate_seeds=tuple(range(seeds)), probe_fraction=frac,
                             points=points)  # fmt: skip
    return SimpleNamespace(pairs=list(base), base=base, search=search)


@pytest.mark.parametrize(
    "methods, budget, points, seeds, frac, step, mb_step, runs, hours",
    [
        # 4 methods x 0.01 s x 6,000 steps x (4 + 10 + 3 x 0.1) runs = 3,432 s
        ([False] * 4, 6000, 4, 10, 0.1, 0.01, None, 56, "~0.95 h"),
        # (0.01 + 0.03) s x 1,000 x (2 + 3 + 3 x 1) = 320 s; probe_fraction capped at 1
        ([False, True], 1000, 2, 3, 2.0, 0.01, 0.03, 10, "~0.09 h"),
        ([False], 200_000, 4, 10, 0.1, 0.036, None, 14, "~28.60 h"),  # 102,960 s
    ],
)  # fmt: skip
def test_projection_hours(methods, budget, points, seeds, frac, step, mb_step, runs, hours):
    r = fake_reproduction(methods, budget, points, seeds, frac)
    (row,) = projection(r, {"p": step}, {"p": mb_step} if mb_step else None)
    assert row["runs"] == runs and row["probes"] == 3 * len(methods)
    text = project(r, {"p": step}, {"p": mb_step} if mb_step else None)
    assert text.splitlines()[0].endswith(hours) and f"total: {hours}" in text


def test_projection_with_groups_and_packing_uses_the_measured_costs():
    """Groups of 10: groupable methods cost the measured member-step, per-example ones a
    single run's; the packing gain divides the whole; the first round probes ahead."""
    r = fake_reproduction([False, False, True], 1000, 4, 10, 0.1)
    r.batching = SimpleNamespace(members=10)
    r.search.up_points = 6
    (row,) = projection(r, {"p": 0.01}, {"p": 0.05}, {"p": 0.002}, {"p": 2.0})
    assert row["members"] == 10 and row["probes"] == 3 * 10
    steps = 1000 * (4 + 10 + 10 * 0.1)  # per method: search, replicates, probes
    assert row["seconds"] == pytest.approx((0.002 + 0.002 + 0.05) * steps / 2.0)
    text = project(r, {"p": 0.01}, {"p": 0.05}, {"p": 0.002}, {"p": 2.0})
    assert "2.0 per member in groups of 10" in text and "x2.00 packed" in text
    single = fake_reproduction([False], 1000, 4, 10, 0.1)  # no batching: as before
    (row,) = projection(single, {"p": 0.01}, None, {"p": 0.002}, None)
    assert row["members"] == 1 and row["member_step_s"] is None and row["probes"] == 3


def test_estimate_times_a_group_when_the_driver_trains_groups(monkeypatch):
    r = fake_reproduction([False], 1000, 2, 3, 0.5)
    r.batching = SimpleNamespace(members=4)
    r.search.up_points = 1
    for spec in r.base.values():
        spec.data_variant = "synthetic"
        spec.optimizer.method.seed_parallel = True
    monkeypatch.setattr(estimate_mod, "problem_for", lambda spec: contextlib.nullcontext())
    monkeypatch.setattr(estimate_mod, "time_backward", lambda problem, steps, per_example: 0.02)
    monkeypatch.setattr(estimate_mod, "time_group", lambda problem, k, steps: 0.005 * (k == 4))
    assert estimate_mod.estimate(r, 3) == project(r, {"p": 0.02}, None, {"p": 0.005})


def test_projection_names_untimed_problems_and_needs_per_example_times():
    r = fake_reproduction([False], 1000, 1, 1, 0.0, problems=("a", "b"))
    text = project(r, {"a": 0.36})
    assert "  b: no step time" in text and "total: ~0.20 h" in text  # 0.36 s x 2,000 steps
    with pytest.raises(ValueError, match="per-example"):
        projection(fake_reproduction([True], 10, 1, 1, 0.0), {"p": 0.1})


def test_estimate_times_steps_then_projects(monkeypatch):
    r = fake_reproduction([False, True], 1000, 2, 3, 0.5)
    for spec in r.base.values():
        spec.data_variant = "synthetic"
    monkeypatch.setattr(estimate_mod, "problem_for", lambda spec: contextlib.nullcontext())
    timed = lambda problem, steps, per_example: 0.05 if per_example else 0.02  # noqa: E731
    monkeypatch.setattr(estimate_mod, "time_backward", timed)
    assert estimate_mod.estimate(r, 3) == project(r, {"p": 0.02}, {"p": 0.05})


# --- recommendations and the bench scripts ---------------------------------------------
@pytest.mark.parametrize(
    "eager_s, compiled_s, compile_s, compiled_loss, choice",
    [
        (0.010, 0.005, 20.0, 2.3, "default"),  # saves 5 ms x 6,000 steps = 30 s > 20 s
        (0.010, 0.005, 40.0, 2.3, None),  # the compile costs more than it saves
        (0.010, 0.0098, 0.0, 2.3, None),  # x1.02: below MIN_SPEED_UP
        (0.010, 0.005, 20.0, 2.31, None),  # first loss 4e-3 from eager: not the same maths
    ],
)
def test_compile_choice(eager_s, compiled_s, compile_s, compiled_loss, choice):
    eager = {"fmnist_2c2d": {"step": eager_s, "first_loss": 2.3}}
    compiled = {"step": compiled_s, "compile_s": compile_s, "first_loss": compiled_loss}
    compiled["loss_rel_diff"] = loss_difference(eager["fmnist_2c2d"], compiled)
    assert compile_choice(eager, {"fmnist_2c2d": {"default": compiled}}) == {"fmnist_2c2d": choice}


def test_best_by_keeps_the_best_row_per_problem():
    rows = [{"problem": "a", "n": 1, "v": 2.0}, {"problem": "a", "n": 2, "v": 3.0},
            {"problem": "a", "n": 4, "error": "x"}, {"problem": "b", "n": 1, "v": 1.0}]  # fmt: skip
    assert {k: r["n"] for k, r in best_by(rows, "v").items()} == {"a": 2, "b": 1}


def test_gpu_check_script_starts():
    """The script itself, as the GPU machine runs it (its logic is tested through bench/)."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--budget-s" in out.stdout, out.stderr


def test_a_failing_setting_is_its_row_and_the_others_are_timed(tmp_path, monkeypatch):
    """A setting that raises (a kernel that does not compile on this GPU) is a row with the
    error; the settings after it are still timed. Only the baseline, eager, stops the
    problem."""
    from dissecting_adam.bench import check_steps
    from dissecting_adam.bench.config import CheckConfig
    from dissecting_adam.bench.sections import Context
    from dissecting_adam.bench.step_settings import SETTINGS
    from dissecting_adam.bench.timing import Deadline

    def fake_time_steps(problem, device, setting, *args, **kwargs):
        if setting == SETTINGS["channels_last"]:
            raise RuntimeError("no kernel image for this device")
        return {"step": 0.01, "first_step": 0.02, "first_loss": 1.0, "measured": 5,
                "peak_memory_mib": 0.0}  # fmt: skip

    monkeypatch.setattr(check_steps, "ORDER", ("fmnist_2c2d",))
    monkeypatch.setattr(check_steps, "time_steps", fake_time_steps)
    monkeypatch.setattr(check_steps, "_compiled", lambda *args: None)
    cfg = CheckConfig(device="cpu", tiny=True, out=tmp_path, root=ROOT, budget_s=60)
    ctx = Context("problem_step", Deadline.after(60.0), 60.0, {})
    check_steps.steps_section(cfg, ctx)
    rows = {r["setting"]: r for r in ctx.data["rows"] if r.get("problem") == "fmnist_2c2d"}
    assert rows["channels_last"]["status"] == "RuntimeError: no kernel image for this device"
    assert rows["channels_last+bf16"]["status"] == "ok" and rows["eager"]["status"] == "ok"
    assert "channels_last" not in ctx.shared["settings"]["fmnist_2c2d"]
