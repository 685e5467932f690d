"""The reproduction's own settings (conf/reproduce.yaml, conf/search/), checked.

Every value is checked before anything is planned, loaded or written: a bad one raises a
``ConfigError``, one line naming the setting, its value and the fix (``scripts/reproduce.py``
prints it and exits with status 1, for ``dry_run=true`` too). The composed config is read
as a mapping (``plain``), so that Hydra stays behind ``runner/plan.py``; ``build`` turns the
checked settings into objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..runner.plan import ConfigError, hydra_launchers
from ..runner.session import check_device
from .batching import members_of
from .search import SearchSettings

#: Launchers that run on this machine besides Hydra's: in this process, or worker processes
#: (auto: packed on CUDA, basic on a CPU).
OWN_LAUNCHERS = ("auto", "basic", "packed")


def plain(node):
    """A composed config node as plain dicts, lists and values (interpolations resolved)."""
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [plain(v) for v in node]
    return node


def is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def real(value):
    """A number given as an int or a string, as a float; anything else as it is (the
    settings' check names it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def whole(value):
    """A whole number given as a string, as an int; anything else as it is."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def search_settings(node) -> SearchSettings:
    """``conf/search/<profile>.yaml`` as ``SearchSettings``; a ConfigError (one line, naming
    the setting, its value and the fix) for any value that is missing or out of range."""
    raw = plain(node)
    g = raw.get("grid")
    if not isinstance(g, dict):
        raise ConfigError(f"search.grid={g} is not a mapping; see conf/search/paper.yaml")
    hi = g.get("hi") or {}
    mantissas, seeds = g.get("mantissas"), raw.get("replicate_seeds")
    try:
        return SearchSettings(
            name=str(raw.get("name")),
            mantissas=tuple(real(m) for m in mantissas) if is_list(mantissas) else mantissas,
            lo=real(g.get("lo")),
            grid_hi={k: real(v) for k, v in hi.items()} if isinstance(hi, dict) else hi,
            up_points=whole(g.get("up_points")),
            probe_fraction=real(raw.get("probe_fraction")),
            progress_ratio=real(raw.get("progress_ratio")),
            points=whole(raw.get("points")),
            max_extensions=whole(raw.get("max_extensions")),
            metric=raw.get("metric"),
            mode=raw.get("mode"),
            tolerance=real(raw.get("tolerance")),
            search_seed=whole(raw.get("search_seed")),
            replicate_seeds=tuple(whole(x) for x in seeds) if is_list(seeds) else seeds,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def names(cfg, key: str, known, example: str) -> list[str]:
    """``cfg[key]``, a non-empty list of known names."""
    value = cfg.get(key)
    if not is_list(value):
        raise ConfigError(f"{key}={value} is not a list; write it as a list, {example}")
    out = [str(v) for v in value]
    if not out:
        raise ConfigError(f"{key}=[] names none; name at least one, {example}")
    unknown = [n for n in out if n not in known]
    if unknown:
        raise ConfigError(
            f"{key}=[{','.join(out)}] names unknown {key[:-1]}(s) {unknown}; choose from "
            f"{list(known)}"
        )
    return out


def check_settings(cfg) -> None:
    """The reproduction's own settings (not the search's, not the runs'): a ConfigError,
    one line, before anything is planned, loaded or written."""
    launcher = cfg.launcher
    known = hydra_launchers()
    if not isinstance(launcher, str) or (
        known is not None and launcher not in (*OWN_LAUNCHERS, *known)
    ):
        choices = ", ".join([*OWN_LAUNCHERS, *(n for n in known or () if n != "basic")])
        raise ConfigError(f"launcher={launcher} is not a launcher; choose one of {choices}")
    members_of(whole(cfg.get("parallel_seeds")), ["cpu"])  # auto or an integer >= 1
    value = whole(cfg.get("estimate_steps"))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"estimate_steps={value} must be an integer >= 1; e.g. estimate_steps=3")
    if cfg.estimate not in (None, True, False):
        raise ConfigError(
            f"estimate={cfg.estimate} must be true, false or null; null: estimate, except "
            "with dry_run"
        )
    if cfg.dry_run not in (True, False):
        raise ConfigError(f"dry_run={cfg.dry_run} must be true or false; e.g. dry_run=true")
    if not is_list(cfg.get("launcher_overrides") or []):
        raise ConfigError(
            f"launcher_overrides={cfg.get('launcher_overrides')} is not a list; e.g. "
            "\"launcher_overrides=['hydra.launcher.partition=gpu']\""
        )
    if remote(cfg):
        return  # the runs' device is on the cluster's nodes, not here
    check_device(str(cfg.device))


def remote(cfg) -> bool:
    """Whether the runs go to other machines (a SLURM cluster), not this one."""
    return "slurm" in str(cfg.launcher)
