"""``segtune tune``: an Optuna study whose trials are ordinary ``segtune train`` runs.

A study folder ``OUT/`` holds::

    study.db                  the Optuna study (SQLite): `--resume` continues it
    tune.yaml                 data, base config, search space, sampler, pruner, seed, keep
    trials.csv                one row per trial: state, val mIoU, epochs, seconds, params, error
    best_config.yaml          the best trial's config: `segtune train --config best_config.yaml`
    optimization_history.png  val mIoU per trial and the best so far (Optuna, matplotlib)
    param_importances.png     fANOVA importance of each parameter (from 2 finished trials on)
    trials/trial-NNNN/        each trial's run folder (checkpoints removed; `keep: best` keeps
                              only the best trial's folder)

Each trial samples the search space (:mod:`segtune.tuning.space`), applies the values on top
of the base config and calls :func:`segtune.engine.train.train` with a callback that reports
the val mIoU of every epoch to Optuna and stops the run when the pruner says so. The trial's
value is the run's final val mIoU (best checkpoint, whole val split). A trial that fails (bad
combination of values, a crash) is recorded as failed with its one-line reason; the study goes
on. Ctrl-C stops the study after the running trial saved nothing more; `--resume` continues it.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from .. import _log
from .._io import atomic_path, atomic_write_text, atomic_write_yaml
from ..config import Config, apply_overrides
from ..engine.resume import Interrupted
from ..errors import ConfigError, RunError, SegtuneError
from .samplers import build_pruner, build_sampler
from .space import SearchSpace, load_space

__all__ = ["tune", "TuneResult", "PruningCallback", "KEEP", "STUDY_DB", "SETTINGS_FILE", "TRIALS_CSV", "BEST_CONFIG"]

STUDY_DB = "study.db"
SETTINGS_FILE = "tune.yaml"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
TRIALS_DIR = "trials"
STUDY_NAME = "segtune"
KEEP = ("best", "all")
_INTERRUPTED = "interrupted"


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        dir: the study folder.
        best_value: best val mIoU (None when no trial finished).
        best_trial: its trial number.
        best_params: its sampled parameters (Optuna's names).
        best_config: path of ``best_config.yaml`` (None when no trial finished).
        counts: number of trials per state (``complete``, ``pruned``, ``failed``).
        rows: the trials table (as written to ``trials.csv``).
    """

    dir: Path
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_config: Path | None
    counts: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)


class PruningCallback(L.Callback):
    """Reports val mIoU after every validated epoch to an Optuna trial (step = epoch index) and
    raises ``optuna.TrialPruned`` when the trial's pruner says stop, except after the run's last
    epoch (or step): pruning then would save only the final evaluation and lose a finished result."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        miou = (getattr(pl_module, "last_val_metrics", None) or {}).get("miou")
        if miou is None or not math.isfinite(float(miou)):
            return
        epoch = int(trainer.current_epoch)
        self.trial.report(float(miou), step=epoch)
        if not _last_epoch(trainer) and self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (val mIoU {float(miou):.4f})")


def _last_epoch(trainer: L.Trainer) -> bool:
    """Whether training ends after the epoch just validated (max_epochs or max_steps reached)."""
    epochs_done = trainer.current_epoch + 1
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and epochs_done >= trainer.max_epochs:
        return True
    max_steps = trainer.max_steps or -1
    return 0 < max_steps <= trainer.global_step


def tune(
    data: str | Path | None = None,
    *,
    trials: int = 20,
    timeout: float | None = None,
    sampler: str | Any | None = None,
    pruner: str | Any | None = None,
    space: str | Path | dict[str, Any] | SearchSpace | None = None,
    out: str | Path = "runs/tune",
    resume: bool = False,
    config: Config | dict | str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    keep: str | None = None,
    seed: int | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> TuneResult:
    """Search hyperparameters with Optuna; each trial is a ``segtune train`` run.

    Args:
        data: data set folder or dataset.yaml (taken from the study on ``resume``).
        trials: the study's total number of trials (on ``resume`` the finished ones count;
            a trial cut short by an interrupt does not).
        timeout: stop starting new trials after this many seconds (a running trial finishes).
        sampler: ``tpe`` (default) | ``grid`` | ``random``, or an Optuna sampler object.
        pruner: ``median`` (default) | ``hyperband`` | ``none``, or an Optuna pruner object.
        space: search space file, dict or :class:`SearchSpace` (default: the built-in one,
            see ``segtune tune --write-space``).
        out: study folder; it must not exist yet unless ``resume``.
        resume: continue the study in ``out`` (its data, base config and space are used).
        config: base config of every trial (Config, dict or YAML path); ``overrides`` on top.
        keep: ``best`` (default: only the best trial's run folder is kept) or ``all``.
        seed: sampler seed (default: ``train.seed`` of the base config).
        callbacks: extra Lightning callbacks added to every trial's training.

    Returns:
        The :class:`TuneResult`.

    Raises:
        SegtuneError: bad arguments, an existing study folder without ``resume``, nothing to
            resume, or an interrupt (``Interrupted``, with the command that continues).
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError("tune needs Optuna: pip install 'segtune[tune]'") from None

    out = Path(out)
    settings = _open_study_folder(out, resume, data, config, overrides, space, sampler, pruner, keep, seed)
    space_obj = load_space(settings["space"])
    storage = f"sqlite:///{(out / STUDY_DB).resolve()}"
    with _quiet_optuna():
        finished = _finished_before(out, storage) if resume else 0
    the_sampler = build_sampler(sampler or settings["sampler"], space_obj, settings["seed"] + finished)
    the_pruner = build_pruner(pruner or settings["pruner"], _max_epochs(space_obj, settings["config"]))
    with _quiet_optuna():
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                                    sampler=the_sampler, pruner=the_pruner, load_if_exists=resume)
    todo = max(0, int(trials) - finished)
    _log.info(f"tune: {out}: {finished} trial(s) done, {todo} to run (sampler {_name(sampler or settings['sampler'])}, "
              f"pruner {_name(pruner or settings['pruner'])}, {len(space_obj.params)} parameters)")
    objective = _Objective(out, settings, space_obj, callbacks, todo, finished)
    try:
        with _quiet_optuna():
            study.optimize(objective, n_trials=todo, timeout=timeout, callbacks=[objective.after_trial],
                           gc_after_trial=True)
    except (KeyboardInterrupt, Interrupted):
        _write_outputs(study, out, settings, space_obj, plots=True)
        raise Interrupted(f"{out}: study stopped by an interrupt during trial {objective.current} (not counted); "
                          f"continue it with `segtune tune --resume --out {out} --trials {trials}`") from None
    return _write_outputs(study, out, settings, space_obj, plots=True)


# ----------------------------------------------------------------------------- phase: study folder
def _open_study_folder(out: Path, resume: bool, data: Any, config: Any, overrides: Any, space: Any,
                       sampler: Any, pruner: Any, keep: str | None, seed: int | None) -> dict[str, Any]:
    """New study: refuse an existing folder, check everything, write tune.yaml. Resume: read it."""
    if resume:
        return _settings_for_resume(out, data, space, keep)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out}: a study folder already exists (pass --resume to continue it, or --out to pick another)")
    if data is None and config is None:
        raise ConfigError("tune: give the data set folder, e.g. `segtune tune path/to/data --trials 20`")
    from ..engine.train import resolve_config

    base = resolve_config(config, overrides)
    if data is not None:
        base.data.root = str(data)
    if not base.data.root:
        raise ConfigError("tune: data.root is not set: pass the data set folder (e.g. `segtune tune DATA`)")
    from ..data import load_dataset_spec

    load_dataset_spec(base.data.root)  # a missing or broken data set is one error now, not N failed trials
    space_obj = load_space(space)
    settings = {
        "data": base.data.root,
        "sampler": _name(sampler or "tpe"),
        "pruner": _name(pruner or "median"),
        "seed": int(base.train.seed if seed is None else seed),
        "keep": keep or "best",
        "config": base.to_dict(),
        "space": space_obj.to_dict(),
    }
    if settings["keep"] not in KEEP:
        raise ConfigError(f"tune: keep={keep!r} is not valid; choose one of: {', '.join(KEEP)}")
    if isinstance(sampler, str) or sampler is None:
        build_sampler(settings["sampler"], space_obj, 0)  # unknown name / grid without grid: lists
    if isinstance(pruner, str) or pruner is None:
        build_pruner(settings["pruner"], None)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / SETTINGS_FILE, settings)
    return settings


def _settings_for_resume(out: Path, data: Any, space: Any, keep: str | None) -> dict[str, Any]:
    import yaml

    path = out / SETTINGS_FILE
    if not (out / STUDY_DB).is_file() or not path.is_file():
        raise RunError(f"{out}: no study to resume here ({STUDY_DB} / {SETTINGS_FILE} missing); "
                       "start one without --resume")
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data is not None and Path(str(data)).resolve() != Path(settings["data"]).resolve():
        raise ConfigError(f"{path}: this study tunes on {settings['data']}, not {data} "
                          "(drop DATA with --resume, or start a new study with another --out)")
    if space is not None and load_space(space).to_dict() != settings["space"]:
        raise ConfigError(f"{path}: --space differs from the study's search space (a study keeps its space; "
                          "drop --space with --resume, or start a new study with another --out)")
    if keep is not None:
        settings["keep"] = keep
    return settings


def _finished_before(out: Path, storage: str) -> int:
    """Close trials a killed process left RUNNING (as failed, folder removed); count the
    finished ones (not those cut short by an interrupt)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(t.number, state=TrialState.FAIL)
        _remove_run(out, t.number)
    done = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        done += not _was_interrupted(t)
    return done


def _was_interrupted(t: Any) -> bool:
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and t.user_attrs.get("error", _INTERRUPTED).startswith(_INTERRUPTED)


def _max_epochs(space: SearchSpace, config: dict[str, Any]) -> int | None:
    """The longest run in epochs (Hyperband's max resource), when the space or config fix it."""
    values: list[Any] = []
    for p in space.params:
        for key, v in ((k, v) for value in (p.grid_values() or [p.high]) for k, v in p.config_values(value).items()):
            if key == "train.epochs" and v is not None:
                values.append(v)
    if not values:
        values = [config.get("train", {}).get("epochs")]
    values = [int(v) for v in values if v is not None]
    return max(values) if values else None


# ----------------------------------------------------------------------------- phase: trials
class _Objective:
    """One trial: sample, train in ``OUT/trials/trial-NNNN``, return the val mIoU."""

    def __init__(self, out: Path, settings: dict[str, Any], space: SearchSpace,
                 callbacks: Sequence[L.Callback], todo: int, done: int) -> None:
        self.out, self.settings, self.space = out, settings, space
        self.callbacks = list(callbacks)
        self.todo, self.done = todo, done
        self.started = 0
        self.current: int | None = None

    def trial_config(self, values: dict[str, Any], number: int) -> Config:
        """Base config + the trial's values + the run folder settings of a trial."""
        cfg = Config.from_dict(self.settings["config"])
        apply_overrides(cfg, values)
        cfg.train.out = str(self.out / TRIALS_DIR)
        cfg.train.name = _run_name(number)
        cfg.train.progress = False
        cfg.train.num_overlays = 0
        cfg.train.memory = 0
        return cfg

    def __call__(self, trial: Any) -> float:
        import optuna

        from ..engine.train import train

        self.started += 1
        self.current = trial.number
        values = self.space.suggest(trial)
        _log.info(f"trial {trial.number} ({self.started}/{self.todo}): "
                  + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        t0 = time.perf_counter()
        try:
            with _quiet():
                run = train(self.trial_config(values, trial.number),
                            callbacks=[PruningCallback(trial), *self.callbacks])
        except optuna.TrialPruned:
            _remove_run(self.out, trial.number)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            raise
        except (KeyboardInterrupt, Interrupted) as e:
            trial.set_user_attr("error", f"{_INTERRUPTED}: {_one_line(e)}")
            _remove_run(self.out, trial.number)
            raise
        except Exception as e:  # a failing trial is recorded, never fatal to the study
            trial.set_user_attr("error", _one_line(e))
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            _remove_run(self.out, trial.number)
            return float("nan")
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("epochs", run.summary.get("epochs"))
        shutil.rmtree(run.dir / "checkpoints", ignore_errors=True)  # keep trial folders small
        miou = run.metrics.get("miou")
        if miou is None or not math.isfinite(float(miou)):
            trial.set_user_attr("error", "no val mIoU (empty val split?)")
            return float("nan")
        return float(miou)

    def after_trial(self, study: Any, trial: Any) -> None:
        """Print the trial's outcome; keep only the best run folder (keep: best); write the table."""
        from optuna.trial import TrialState

        best = _best(study)
        if trial.state == TrialState.COMPLETE:
            what = f"val mIoU {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            steps = sorted(trial.intermediate_values)
            what = f"pruned after epoch {steps[-1] + 1 if steps else 0}"
        else:
            what = "failed"
        best_txt = f"; best {best.value:.4f} (trial {best.number})" if best is not None else ""
        error = f": {trial.user_attrs.get('error', 'no result')}" if what == "failed" else ""
        _log.info(f"trial {trial.number}: {what} in {trial.user_attrs.get('seconds', 0):.0f} s{best_txt}{error}")
        if self.settings["keep"] == KEEP[0] and best is not None:
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if t.number != best.number:
                    _remove_run(self.out, t.number)
        _write_outputs(study, self.out, self.settings, self.space, plots=False)


# ----------------------------------------------------------------------------- phase: outputs
def _write_outputs(study: Any, out: Path, settings: dict[str, Any], space: SearchSpace, plots: bool) -> TuneResult:
    """trials.csv, best_config.yaml and (``plots``) the two Optuna plots; the result."""
    rows = _rows(study, out)
    _write_csv(out / TRIALS_CSV, rows)
    best = _best(study)
    best_path = None
    if best is not None:
        cfg = Config.from_dict(settings["config"])
        apply_overrides(cfg, space.config_values(best.params))
        best_path = out / BEST_CONFIG
        atomic_write_yaml(best_path, cfg.to_dict())
    if plots:
        _plot(study, out)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    return TuneResult(out, best.value if best else None, best.number if best else None,
                      dict(best.params) if best else {}, best_path, counts, rows)


def _rows(study: Any, out: Path) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = out / TRIALS_DIR / _run_name(t.number)
        error = t.user_attrs.get("error", "")
        if t.state == TrialState.FAIL and not error:
            error = f"{_INTERRUPTED} (the process stopped during this trial)"
        rows.append({
            "trial": t.number,
            "state": names.get(t.state, str(t.state)),
            "val_miou": t.value if t.state == TrialState.COMPLETE else None,
            "epochs": t.user_attrs.get("epochs", (max(t.intermediate_values) + 1) if t.intermediate_values else None),
            "seconds": t.user_attrs.get("seconds"),
            **{f"param.{k}": v for k, v in t.params.items()},
            "run": str(run) if run.is_dir() else "",
            "error": error,
        })
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    head = ["trial", "state", "val_miou", "epochs", "seconds"]
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    fields = [*head, *params, "run", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


def _plot(study: Any, out: Path) -> None:
    """optimization_history.png and param_importances.png (each skipped with a warning line
    when Optuna cannot draw it, e.g. fewer than two finished trials)."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    if _best(study) is None:  # Optuna would draw empty axes and log two multi-line warnings
        _log.info("tune: optimization_history.png and param_importances.png not drawn (no finished trial)")
        return
    for name, fn in (("optimization_history.png", plot_optimization_history),
                     ("param_importances.png", plot_param_importances)):
        try:
            with warnings.catch_warnings(), _quiet_optuna():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 - a plot never fails the study
            _log.info(f"tune: {name} not drawn ({_one_line(e)})")


# ----------------------------------------------------------------------------- helpers
def _best(study: Any) -> Any:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _run_name(number: int) -> str:
    return f"trial-{number:04d}"


def _remove_run(out: Path, number: int) -> None:
    """Delete a trial's run folder (only ever one under ``OUT/trials/`` that tune created)."""
    shutil.rmtree(out / TRIALS_DIR / _run_name(number), ignore_errors=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, SegtuneError) else f"{type(e).__name__}: {msg}".rstrip(": ")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _name(x: Any) -> str:
    return x if isinstance(x, str) else type(x).__name__


@contextmanager
def _quiet():
    """Trial training prints nothing but warnings (tune prints one line per trial)."""
    was = _log.is_quiet()
    _log.set_quiet(True)
    try:
        yield
    finally:
        _log.set_quiet(was)


@contextmanager
def _quiet_optuna():
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by tune, one line each
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)

