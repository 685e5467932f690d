"""The RunSpec: identities kept from before the redesign, the way back to Hydra overrides
(launchers), its record in config.yaml, the launcher's commands, and the package's shape
(no import cycle, modules of a readable size)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from dissecting_adam.protocol.launch import HydraMultirun
from dissecting_adam.runner.plan import plan, to_overrides
from dissecting_adam.runner.session import execute
from dissecting_adam.runner.spec import RunSpec
from dissecting_adam.runner.store import config_hash

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
PACKAGE = ROOT / "src" / "dissecting_adam"


def planned(*overrides) -> RunSpec:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return plan(compose("train", overrides=list(overrides)))


#: Identity-version-2 hashes, pinned when the version was introduced (the version-1
#: hashes of these runs, unchanged from the RunSpec redesign at a981c21 to 41ff232, are in
#: tests/data/identities_v1.json, which tests/test_migrate.py upgrades).
PINNED = [
    (["problem=fmnist_2c2d", "optimizer=msvag"], "5097e799e5"),
    (
        [
            "problem=tolstoi_char_rnn",
            "optimizer=adam",
            "profile=preview",
            "optimizer.lr=0.003",
            "seed=2",
        ],
        "0778baa475",
    ),  # fmt: skip
    (
        ["problem=cifar100_wrn404", "optimizer=msgd", "profile=smoke", "train.num_steps=7"],
        "e04529fc62",
    ),  # fmt: skip
    (
        [
            "problem=cifar10_3c3d",
            "optimizer=mssd_erf",
            "train.num_steps=4000",
            "data.variant=synthetic",
        ],
        "996901e604",
    ),  # fmt: skip
    (
        [
            "problem=tolstoi_char_rnn",
            "optimizer=msvag_mb",
            "profile=preview",
            "train.num_steps=375",
        ],
        "bc7964c3a0",
    ),  # fmt: skip
]


@pytest.mark.parametrize("overrides,expected", PINNED)
def test_identities_are_pinned(overrides, expected):
    assert config_hash(planned(*overrides).identity()) == expected


def test_operational_flags_are_not_part_of_the_identity():
    """``force`` (rerun) and ``role`` (the protocol's tag for the logger) say how a run is
    launched, not what it computes: the same run, the same record."""
    spec = planned("problem=cifar10_3c3d", "optimizer=msvag")
    flagged = planned("problem=cifar10_3c3d", "optimizer=msvag", "force=true", "role=probe")
    assert (flagged.force, flagged.role) == (True, "probe")
    assert flagged.identity() == spec.identity() and flagged.run_dir().path == spec.run_dir().path


CASES = list(itertools.product(
    ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"],
    ["msgd", "adam", "mssd_erf"],
    ["paper", "preview"],
))  # fmt: skip


@pytest.mark.parametrize("problem,optimizer,profile", CASES)
def test_overrides_from_a_spec_plan_to_the_same_run(problem, optimizer, profile):
    """What a Hydra launcher receives: derived runs (probes with a scaled schedule) too."""
    base = planned(f"problem={problem}", f"optimizer={optimizer}", f"profile={profile}",
                   "data.mirror='/some where/it\\'s'", "+optimizer.foreach=false")  # fmt: skip
    short = base.derive(lr=3e-05, seed=7, num_steps=base.num_steps // 10 + 1)
    for spec in (base, short, base.derive(lr=0.3, seed=100, stop_at=base.train.eval_every)):
        again = planned(*to_overrides(spec))
        assert again.identity() == spec.identity()
        assert again.problem_config == spec.problem_config and again.train == spec.train
        assert (again.results_root, again.device, again.logger) == (
            spec.results_root, spec.device, spec.logger)  # fmt: skip


@pytest.mark.parametrize(
    "settings",
    [["train.compile=reduce-overhead", "allow_tf32=false", "deterministic=true",
      "flush_denormal=true"],
     ["train.compile=true", "cudnn_benchmark=false"]],
)  # fmt: skip
def test_speed_and_numerics_settings_travel_to_launchers(settings):
    spec = planned("problem=cifar10_3c3d", "optimizer=msvag", *settings)
    again = planned(*to_overrides(spec))
    assert again.identity() == spec.identity() and again.train == spec.train
    flags = ("precision", "cudnn_benchmark", "deterministic", "flush_denormal")
    assert [getattr(again, f) for f in flags] == [getattr(spec, f) for f in flags]


def test_the_run_record_holds_the_resolved_spec(tmp_path):
    spec = planned("profile=smoke", "data.variant=synthetic", f"results_root={tmp_path}",
                   "problem.batch_size=8", "problem.eval_batch_size=16", "train.num_steps=2",
                   "train.progress=off")  # fmt: skip
    run = Path(execute(spec)["run_dir"])
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["problem_config"]["batch_size"] == 8  # the value in effect, never null
    assert record["train"]["num_steps"] == 2 and record["optimizer"]["kwargs"]["lr"] == 0.1
    assert RunSpec.from_dict(record) == spec


def test_launcher_commands_sweep_lr_and_seed_and_use_the_given_script():
    spec = planned("problem=fmnist_2c2d", "optimizer=msgd", "profile=smoke")
    specs = [spec.derive(lr=lr, seed=s) for lr in (0.1, 0.01) for s in (0, 1)]
    specs.append(spec.derive(lr=0.1, seed=0, num_steps=3))
    launcher = HydraMultirun("joblib", ("python", "/checkout/scripts/train.py"))
    grid, probe = launcher.commands(specs)
    assert grid[:4] == ["python", "/checkout/scripts/train.py", "-m", "hydra/launcher=joblib"]
    assert grid[-2:] == ["optimizer.lr=0.1,0.01", "seed=0,1"]
    assert "train.num_steps=3" in probe and probe[-2:] == ["optimizer.lr=0.1", "seed=0"]
    assert not any("site-packages" in part or "src/dissecting_adam" in part for part in grid)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at module level (relative or absolute)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            targets = [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.startswith("dissecting_adam")}
    return out


def test_no_import_cycle_and_the_layers_point_down():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in PACKAGE.rglob("*.py")}  # fmt: skip
    graph = {m: {t for t in _imports(p) if t in files} - {m} for m, p in files.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*stack, m, t])
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    # scripts -> bench (measurements) -> protocol -> runner -> optim, problems
    order = ["bench", "protocol", "runner", "optim", "problems"]
    rank = {f"dissecting_adam.{name}": i for i, name in enumerate(order)}
    rank["dissecting_adam.problems"] = rank["dissecting_adam.optim"]  # side by side

    def layer(module: str) -> int | None:
        return next((r for p, r in rank.items() if module == p or module.startswith(p + ".")),
                    None)  # fmt: skip

    for m, targets in graph.items():
        if layer(m) is not None:
            above = [t for t in targets if layer(t) is not None and layer(t) < layer(m)]
            assert not above, (m, above)


def test_hydra_stays_in_scripts_and_plan():
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if {"hydra", "omegaconf"} & {n.split(".")[0] for n in _top_imports(p)}
    )
    assert users == ["runner/plan.py"]


def _top_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_modules_are_of_a_readable_size_or_say_why():
    """About 300 lines at most, unless the module's docstring gives the reason."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 330:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "Longer than" in doc, f"{path.relative_to(PACKAGE)}: {len(text.splitlines())}"


def test_plan_pairs_equals_composing_every_pair():
    from dissecting_adam.runner.plan import plan_pairs

    pairs = [(p, o) for p in ("fmnist_2c2d", "cifar100_wrn404", "tolstoi_char_rnn")
             for o in ("msgd", "adam", "msvag_mb", "sgd")]  # fmt: skip
    overrides = ["profile=preview", "optimizer.lr=0.3", "train.num_steps=100"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        fast = plan_pairs(pairs, overrides)
        for (p, o), spec in fast.items():
            cfg = compose("train", overrides=[f"problem={p}", f"optimizer={o}", *overrides])
            try:
                expected = plan(cfg)
            except Exception as err:  # noqa: BLE001 - the same refusal
                assert type(spec) is type(err) and str(spec) == str(err)
            else:
                assert spec == expected, (p, o)
