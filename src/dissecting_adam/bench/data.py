"""A problem for timing: on its real data when that is at hand, else on generated stand-ins.

Stand-ins are files in the original formats (``problems.datasets.synthetic``) run through
the real loading code, with random contents: their numbers say nothing but speed, and
every report that uses them says "generated data (timing only)".

- ``"shapes"``: the real shapes at the real batch sizes (2,048 training and 256 test
  images; 400,000 characters of text, enough for many batches of 50 x 50 characters);
- ``"small"``: the runner's smoke-test sets (``runner.data.synthetic_sources``), for tiny
  batches only.
"""

from __future__ import annotations

from pathlib import Path

from ..problems import PROBLEMS, DataError, Problem, load
from ..problems.datasets import synthetic
from ..runner.data import synthetic_sources

GENERATED = "generated data (timing only)"


def generated_text(chars: int) -> str:
    """Plain text in War and Peace's alphabet (well below its 83 characters)."""
    words = (
        "Well, Prince, so Genoa and Lucca are now just family estates of the "
        "Buonapartes. But I warn you: if you don't tell me that this means war"
    )
    lines, size, i = [], 0, 0
    while size < chars:
        line = f"{i % 997}: {words[i % 37 :]} {words[: i % 53]}\n"
        lines.append(line)
        size, i = size + len(line), i + 1
    return "".join(lines)


def stand_in(name: str, folder: Path, kind: str = "shapes"):
    """The source of generated files for problem ``name``, written under ``folder``."""
    if kind == "small":
        return synthetic_sources(folder)[name]
    if kind != "shapes":
        raise ValueError(f"kind must be 'shapes' or 'small', got {kind!r}")
    if name == "fmnist_2c2d":
        return synthetic.write_fashion_mnist(folder, n_train=2048, n_test=256)
    if name in ("cifar10_3c3d", "cifar100_wrn404"):
        which = "cifar-10" if name == "cifar10_3c3d" else "cifar-100"
        return synthetic.write_cifar(folder, which, n_train=2048, n_test=256)
    if name == "tolstoi_char_rnn":
        return synthetic.write_text(folder, generated_text(400_000))
    raise ValueError(f"unknown problem {name!r}; choose one of: {', '.join(PROBLEMS)}")


def load_for_timing(
    name: str,
    device: str,
    scratch: Path,
    *,
    data_root: str = "data",
    mirror: str | None = None,
    fallback=tuple(PROBLEMS),
    kind: str = "shapes",
    real: bool = True,
    overrides: dict | None = None,
    stand_in_overrides: dict | None = None,
) -> tuple[Problem, str, str | None]:
    """``(problem, "real" or GENERATED, why the real data was not used or None)``.

    The data is resident on ``device`` on return. The real data set is tried first (from
    ``data_root``, ``mirror`` or a download) unless ``real`` is False; problems in
    ``fallback`` then run on stand-ins of ``kind`` (with ``stand_in_overrides`` on top of
    ``overrides``), the others raise the DataError.
    """
    overrides = dict(overrides or {})
    reason = "generated data asked for"
    if real:
        try:
            problem = load(name, device=device, data_root=data_root, mirror=mirror, **overrides)
            _ = problem.data  # resident on the device before any timing
            return problem, "real", None
        except (DataError, OSError) as err:
            if name not in fallback:
                raise
            reason = f"real data unavailable ({str(err).splitlines()[0]})"
    folder = Path(scratch) / f"stand-in-{name}-{kind}"
    source = stand_in(name, folder, kind)
    settings = {**overrides, **(stand_in_overrides or {})}
    problem = load(
        name, source=source, device=device, data_root=str(folder), mirror=str(folder), **settings
    )
    _ = problem.data
    return problem, GENERATED, reason
