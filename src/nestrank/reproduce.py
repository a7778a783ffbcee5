"""Reproductions as data: a file of conditions (commands, the run they write, the figure it must score).

As Pyserini's reproduction pages do, every figure the README quotes is a condition in
``reproductions/*.toml``::

    [[condition]]
    name = "bm25"
    commands = ["nestrank pipeline run --config pipelines/scifact-bm25.toml --dataset {dataset} --split test \\
                 --out {out}/bm25.run"]
    run = "{out}/bm25.run"       # the run the commands write
    split = "test"               # whose qrels judge it
    metric = "nDCG@10"
    expected = 0.6863
    tolerance = 0.0005           # |got - expected| allowed
    minutes = 0.2                # about how long the commands take on 2 CPU cores (informative)
    sample = 0                   # > 0: the commands ran `--sample N --seed SEED`; scored on those queries

``{dataset}`` and ``{out}`` are filled in; a command's leading ``nestrank`` runs this
installation's CLI. :func:`reproduce` runs the conditions in order (a condition whose run
already exists is only evaluated, unless ``rerun``) and reports every figure against its
expectation; ``nestrank reproduce FILE`` is its command line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nestrank.errors import ConfigError

__all__ = ["Condition", "Outcome", "load_conditions", "reproduce"]


@dataclass
class Condition:
    """One reproduction: what to run, and the figure its run must score."""

    name: str
    commands: list[str]
    run: str
    expected: float
    split: str = "test"
    metric: str = "nDCG@10"
    tolerance: float = 0.0005
    minutes: float | None = None
    note: str = ""
    sample: int = 0      # > 0: the commands ran a seeded sample of N judged queries (--sample N --seed SEED)
    seed: int = 0


@dataclass
class Outcome:
    """What a condition scored: the figure, whether it is within tolerance, and the minutes it took."""

    condition: Condition
    got: float
    minutes: float
    ran: bool = field(default=True)

    @property
    def ok(self) -> bool:
        """``|got - expected| <= tolerance``."""
        return abs(self.got - self.condition.expected) <= self.condition.tolerance + 1e-12


def load_conditions(path: str | Path) -> list[Condition]:
    """The ``[[condition]]`` entries of a reproduction file, checked (names unique, known keys, types)."""
    import typing

    from nestrank.tomlconfig import check_type, read_toml

    data = read_toml(path, what="reproduction")
    entries = data.get("condition")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[condition]] entries")
    hints = typing.get_type_hints(Condition)
    conditions, names = [], set()
    for position, entry in enumerate(entries, 1):
        where = f"{path}: condition {entry.get('name', position)!r}"
        unknown = set(entry) - set(hints)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        missing = [key for key in ("name", "commands", "run", "expected") if key not in entry]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        condition = Condition(**{key: check_type(value, hints[key], key, where) for key, value in entry.items()})
        if condition.name in names:
            raise ConfigError(f"{path}: condition name {condition.name!r} appears twice")
        names.add(condition.name)
        conditions.append(condition)
    return conditions


def reproduce(conditions: list[Condition], *, dataset: str, out: str | Path, rerun: bool = False,
              log=None) -> list[Outcome]:
    """Run each condition's commands (unless its run exists and not ``rerun``), then score its run."""
    from nestrank.data import Dataset, Qrels, Run
    from nestrank.data.download import resolve_dataset
    from nestrank.data.queries import sample_ids
    from nestrank.evaluate import evaluate

    say = log or (lambda *_: None)
    ds = Dataset.open(resolve_dataset(dataset))
    outcomes = []
    for condition in conditions:
        run_path = Path(_fill(condition.run, dataset, out))
        clock = time.perf_counter()
        ran = rerun or not run_path.is_file()
        if ran:
            for command in condition.commands:
                say(f"[{condition.name}] {_fill(command, dataset, out)}")
                _execute(_fill(command, dataset, out), condition.name)
        if not run_path.is_file():
            raise ConfigError(f"condition {condition.name!r}: its commands did not write {run_path}")
        judged = ds.qrels(condition.split)
        if condition.sample > 0:  # the queries `--sample N --seed S` ran, as `nestrank evaluate --sample` scores them
            judged = Qrels({qid: judged[qid] for qid in sample_ids(judged, condition.sample, condition.seed)})
        got = evaluate(Run.read_trec(run_path), judged, [condition.metric])
        outcomes.append(Outcome(condition, round(next(iter(got.values())), 4), (time.perf_counter() - clock) / 60, ran))
    return outcomes


def _fill(template: str, dataset: str, out: str | Path) -> str:
    return template.replace("{dataset}", str(dataset)).replace("{out}", str(out))


def _execute(command: str, name: str) -> None:
    argv = shlex.split(command)
    if argv and argv[0] == "nestrank":
        argv = [sys.executable, "-c", "from nestrank.cli import main; main()", *argv[1:]]
    completed = subprocess.run(argv, check=False)
    if completed.returncode != 0:
        raise ConfigError(f"condition {name!r}: `{command}` failed with exit code {completed.returncode}")
