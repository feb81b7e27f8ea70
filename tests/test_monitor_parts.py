"""The named parts of a monitor, each on its own (issue 23): the schedule (when), the phase table and the binding
around it (where the run stands), the publisher (where a value goes), the state (what is kept, measured and
checkpointed), the adapter's callback-list check, and the forecaster as a callback of its own."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from hadainit.callbacks import SpectralForecast, SpectralMonitor
from hadainit.callbacks.phase import Phase, decide_phase
from hadainit.callbacks.publish import Publisher
from hadainit.callbacks.schedule import Schedule
from hadainit.callbacks.state import STATE_VERSION, CollapseState, MonitorState
from tests.lightning_helpers import TinyModule, loader, trainer


def _trainer(epoch=0, sanity=False, fn="fit"):
    return SimpleNamespace(current_epoch=epoch, sanity_checking=sanity, state=SimpleNamespace(fn=fn))


# ---------------------------------------------------------------- schedule
@pytest.mark.parametrize("every, at, due", [(1, None, [1, 2, 3, 4, 5, 6]), (2, None, [2, 4, 6]), (3, None, [3, 6]),
                                            (1, [1, 4, 5], [1, 4, 5])])
def test_schedule_says_which_epochs_are_due(every, at, due):
    schedule = Schedule("train", every, at)
    assert [e for e in range(1, 7) if schedule.epoch_due(e)] == due
    assert [e + 1 for e in range(6) if schedule.due(_trainer(e))] == due  # current_epoch counts from 0
    assert not any(schedule.due(_trainer(e - 1, sanity=True)) for e in due)


def test_schedule_by_mode():
    t = _trainer(1)  # the second epoch: due every 2 epochs
    train, eval_, val = (Schedule(mode, 2) for mode in ("train", "eval", "val"))
    assert train.captures_train_batch(t) and not eval_.captures_train_batch(t) and not val.captures_train_batch(t)
    assert train.at_epoch_end(t) and eval_.at_epoch_end(t) and not val.at_epoch_end(t)
    assert val.captures_validation(t) and not train.captures_validation(t)
    assert not val.captures_validation(_trainer(0))  # not a due epoch of the fit
    assert val.captures_validation(_trainer(0, fn="validate"))  # trainer.validate: every run
    assert not val.captures_validation(_trainer(1, sanity=True))
    eval_.measured_epoch = 1
    assert not eval_.epoch_end_pending(t) and eval_.epoch_end_pending(_trainer(3))
    eval_.reset()
    assert eval_.epoch_end_pending(t)


@pytest.mark.parametrize("kwargs, match", [({"mode": "test"}, "mode must be one of"),
                                           ({"every_n_epochs": 0}, "every_n_epochs must be a positive int"),
                                           ({"every_n_epochs": 2, "at_epochs": [1]}, "not both"),
                                           ({"at_epochs": [0, 1]}, "epoch counts >= 1"),
                                           ({"at_epochs": "12"}, "epoch counts >= 1")])
def test_schedule_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_schedule_warns_about_checkpoints_reading_between_measurements():
    said = {}
    callbacks = [ModelCheckpoint(monitor="nc/nc1"), ModelCheckpoint(monitor="nc/nc1", every_n_epochs=4),
                 EarlyStopping(monitor="nc/nc1"), ModelCheckpoint(monitor="other/nc1")]
    Schedule("train", 2).check_readers(callbacks, "nc", "M('nc')", lambda key, msg: said.setdefault(key, msg))
    assert sorted(said) == sorted(f"schedule-{id(cb)}" for cb in (callbacks[0], callbacks[2]))
    assert "every_n_epochs=2" in said[f"schedule-{id(callbacks[0])}"]
    said.clear()
    Schedule("train", 1).check_readers(callbacks, "nc", "M('nc')", lambda key, msg: said.setdefault(key, msg))
    Schedule("val", 2).check_readers(callbacks, "nc", "M('nc')", lambda key, msg: said.setdefault(key, msg))
    assert not said
    Schedule("train", 1, [1, 4]).check_readers(callbacks, "nc", "M('nc')", lambda key, msg: said.setdefault(key, msg))
    assert len(said) == 3 and all("at the epochs in at_epochs" in m for m in said.values())


def test_schedule_says_which_eval_passes_are_wanted():
    def at(epoch=1, step=0):
        return SimpleNamespace(**vars(_trainer(epoch)), global_step=step)

    schedule, t = Schedule("eval", 2), at()
    assert schedule.wants_pass("init", t, measured=False) and not schedule.wants_pass("init", t, measured=True)
    assert not schedule.wants_pass("init", at(step=3), measured=False)  # trained already
    assert not Schedule("eval", at_init=False).wants_pass("init", t, measured=False)
    assert schedule.wants_pass("epoch", t, measured=True)  # epoch 2 is due, not measured yet
    schedule.measured_epoch = 1
    assert not schedule.wants_pass("epoch", t, measured=True)
    assert not schedule.wants_pass("epoch", at(epoch=2), measured=True)  # epoch 3 is not due


def test_schedule_knows_the_batch_that_ends_a_measured_epoch():
    def at(batch_idx, last=False, epoch=1):
        loop = SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=last))
        return SimpleNamespace(**vars(_trainer(epoch)), num_training_batches=4, fit_loop=SimpleNamespace(epoch_loop=loop))

    schedule = Schedule("train", 2)
    assert schedule.ends_epoch(at(3), 3) and schedule.ends_epoch(at(1, last=True), 1)
    assert not schedule.ends_epoch(at(2), 2) and not schedule.ends_epoch(at(3, epoch=0), 3)  # epoch 1 is not due
    assert not Schedule("val", 2).ends_epoch(at(3), 3)


# ---------------------------------------------------------------- phase table
# (fitting, restored, same_model, trained, history, basis) -> phase: every row of phase.py's table, and the
# cases a wrong order of the rules would get wrong
PHASE_TABLE = [
    ((True, True, False, False, False, False), Phase.RESUMED),
    ((True, True, True, True, True, True), Phase.RESUMED),
    ((True, False, True, True, True, True), Phase.CONTINUING),
    ((True, False, True, True, False, False), Phase.CONTINUING),
    ((True, False, True, False, True, True), Phase.REFIT),
    ((True, False, True, False, False, False), Phase.FRESH),
    ((True, False, False, True, True, True), Phase.FRESH),
    ((True, False, False, False, False, False), Phase.FRESH),
    ((False, True, False, False, True, True), Phase.RESUMED),
    ((False, False, False, False, True, False), Phase.VALIDATING_OTHER),
    ((False, False, False, False, False, True), Phase.VALIDATING_OTHER),
    ((False, False, False, False, False, False), Phase.VALIDATING),
    ((False, False, True, True, True, True), Phase.VALIDATING),
]


@pytest.mark.parametrize("facts, phase", PHASE_TABLE)
def test_the_phase_table(facts, phase):
    names = ("fitting", "restored", "same_model", "trained", "history", "basis")
    assert decide_phase(**dict(zip(names, facts))) is phase


def test_which_phases_start_afresh():
    assert {p for p in Phase if p.starts_afresh} == {Phase.FRESH, Phase.REFIT, Phase.VALIDATING_OTHER}


def test_the_phase_of_real_runs():
    module, spectral = TinyModule(), SpectralMonitor()
    phases = []
    spectral.add_extension(SimpleNamespace(extend=lambda t, done, values: phases.append(spectral.phase) or {},
                                           reset=lambda: None))
    t = trainer([spectral], max_epochs=1)
    t.fit(module, loader())
    t.fit_loop.max_epochs = 2
    t.fit(module, loader())  # the same Trainer goes on
    with pytest.warns(UserWarning, match="SVD of the weights now"):
        trainer([spectral], max_epochs=1).fit(module, loader())  # a new Trainer, trained weights
    trainer([spectral], max_epochs=1).fit(TinyModule(seed=3), loader())  # another model
    assert phases == [Phase.FRESH, Phase.FRESH, Phase.CONTINUING, Phase.REFIT, Phase.REFIT, Phase.FRESH, Phase.FRESH]
    assert spectral.phase is None  # between stages


def test_the_binding_binds_once_per_stage_and_releases_the_hook():
    from hadainit.callbacks.phase import Binding
    from hadainit.callbacks.source import FeatureSource

    module, calls = TinyModule(), []
    source, state, schedule = FeatureSource("train", owner="M", name="m"), MonitorState("M"), Schedule("train")
    binding = Binding(source, state, schedule, build=lambda k, d: calls.append(("build", k, d)) or {},
                      consume=lambda *rows: None, wants=lambda kind, t: False, reset=lambda: calls.append("reset"),
                      warn=lambda key, message: calls.append(key))
    t = SimpleNamespace(state=SimpleNamespace(fn="fit"), global_step=0, datamodule=None, callbacks=[])
    binding.clear()
    assert binding.phase is None and source.classifier is None
    binding.bind(t, module, None, None)
    assert binding.phase is Phase.FRESH and binding.classifier_name == "fc" and source.classifier is module.fc
    assert calls == ["reset", ("build", 5, 16)] and set(state.metrics) == {"count"}
    assert state.follows(module.fc.weight) and len(module.fc._forward_hooks) == 1
    binding.bind(t, module, None, None)  # bound already in this stage: nothing again
    assert calls == ["reset", ("build", 5, 16)] and len(module.fc._forward_hooks) == 1
    state.restored = True
    binding.release()
    assert binding.phase is None and not state.restored and not module.fc._forward_hooks
    state.history = [{"epoch": 0}]
    binding.bind(t, module, None, None)  # a new Trainer (no steps) on the weights it followed: refit, said so
    assert binding.phase is Phase.REFIT and calls[-3:] == ["refit", "reset", ("build", 5, 16)]
    binding.release()


# ---------------------------------------------------------------- publisher
class _Logger:
    def __init__(self, sep="/"):
        self.group_separator, self.rows = sep, []

    def log_metrics(self, values, step):
        self.rows.append((step, values))


def test_the_publisher_sends_a_row_to_history_callback_metrics_and_each_logger():
    loggers = [_Logger("/"), _Logger("-")]
    t = SimpleNamespace(state=SimpleNamespace(fn="fit"), validating=False, lightning_module=None, callback_metrics={},
                        loggers=loggers)
    history = []
    row = {"epoch": 2, "step": 30, "epochs_done": 3.0, "nc1": 0.5, "lam": [1.0, 2.0], "flag": True, "skip": 1.0}
    Publisher("nc", lambda key: key in ("nc1", "lam", "flag")).publish(t, row, history)
    assert history == [row]
    assert set(t.callback_metrics) == {"nc/nc1"}  # numbers only, selected only, no bools, no lists
    assert t.callback_metrics["nc/nc1"].dtype == torch.float64 and t.callback_metrics["nc/nc1"].item() == 0.5
    assert loggers[0].rows == [(30, {"nc/nc1": 0.5})] and loggers[1].rows == [(30, {"nc-nc1": 0.5})]


def test_the_publisher_logs_through_the_module_under_validate():
    logged = []
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda key, value, **kw: logged.append((key, value.item())))
    t = SimpleNamespace(state=SimpleNamespace(fn="validate"), validating=True, lightning_module=module,
                        callback_metrics={}, loggers=[_Logger()])
    Publisher("nc_val", lambda key: True).publish(t, {"epoch": 0, "step": 0, "epochs_done": 0.0, "nc1": 2.0}, [])
    assert ("nc_val/nc1", 2.0) in logged and not t.callback_metrics and not t.loggers[0].rows


def _fit_trainer(step=12, loggers=(), log_dir=None):
    loop = SimpleNamespace(_batches_that_stepped=step)
    return SimpleNamespace(state=SimpleNamespace(fn="fit"), validating=False, lightning_module=None, callback_metrics={},
                           loggers=list(loggers), log_dir=log_dir, fit_loop=SimpleNamespace(epoch_loop=loop))


def test_the_publisher_publishes_a_measurement_or_says_once_why_not():
    said, history = {}, []
    publisher = Publisher("nc", lambda key: True, owner="M")
    warn = lambda key, message: said.setdefault(key, message)  # noqa: E731
    publisher.publish_measurement(_fit_trainer(12), 3, 4.0, lambda: {"nc1": 0.5}, history, warn, step_back=1)
    assert history == [{"epoch": 3, "step": 11, "epochs_done": 4.0, "nc1": 0.5}] and not said

    def undefined():
        raise ValueError("a class is missing")

    publisher.publish_measurement(_fit_trainer(0), -1, 0.0, undefined, history, warn)
    assert len(history) == 1 and said == {"undefined:a class is missing": "M('nc'): values not logged at "
                                          "initialization: a class is missing (said once; the same cause at a later "
                                          "epoch is not repeated)"}


def test_the_publisher_settles_where_the_figures_go(tmp_path):
    said = []
    publisher = Publisher("nc", lambda key: True, owner="M")
    publisher.prepare(_fit_trainer(), True, None, lambda key, message: said.append(message))
    assert publisher.directory is None and said[-1].endswith("no figures are made (pass plot_dir=... for them)")
    publisher.prepare(_fit_trainer(), True, tmp_path / "figs", lambda key, message: said.append(message))
    assert publisher.directory == tmp_path / "figs" and said[-1].endswith("trainer.callback_metrics only")
    publisher.prepare(_fit_trainer(loggers=[_Logger()], log_dir=str(tmp_path)), True, None, None)
    assert publisher.directory == tmp_path
    publisher.prepare(_fit_trainer(loggers=[_Logger()], log_dir=str(tmp_path)), False, tmp_path / "figs", None)
    assert publisher.directory is None  # plot=False: no figures
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        publisher.prepare(_fit_trainer(), True, tmp_path / "file", lambda key, message: None)


def test_the_publisher_draws_the_history_and_after_an_interrupt_never_raises(tmp_path):
    publisher = Publisher("nc", lambda key: True, owner="M")
    publisher.directory = tmp_path
    history = [{"epoch": -1, "step": 0, "epochs_done": 0.0, "nc1": 1.0}, {"epoch": 0, "step": 5, "epochs_done": 1.0,
                                                                         "nc1": 0.5}]
    publisher.plot(_fit_trainer(), history, ["nc1"], "Title", "panel", lambda directory: [])
    assert (tmp_path / "nc.png").is_file()

    def broken(directory):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publisher.plot(_fit_trainer(), history, ["nc1"], "Title", "panel", broken)
    with pytest.warns(UserWarning, match="M: no figures after the interrupt: disk full"):
        publisher.plot(_fit_trainer(), history, ["nc1"], "Title", "panel", broken, quiet=True)


def test_warn_once_says_each_key_once_until_reset():
    from hadainit.callbacks.publish import WarnOnce

    warn = WarnOnce()
    with pytest.warns(UserWarning) as record:
        warn("a", "first")
        warn("a", "again")
        warn("b", "other")
        warn.reset()
        warn("a", "after reset")
    assert [str(w.message) for w in record] == ["first", "other", "after reset"]


# ---------------------------------------------------------------- state
def test_the_state_takes_rows_and_measures_them_once():
    from hadainit.callbacks.sums import RunningMean, SampleCount

    state, fed = MonitorState("M"), []
    state.bind(torch.nn.Linear(4, 3), lambda k, d: {"mean": RunningMean((d,))}, "cpu")
    take = lambda *row: state.take(lambda f, y, z: fed.append(f.shape[0]), *row)  # noqa: E731
    take(torch.ones(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3), 1)
    take(torch.ones(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), 3)  # all ignored: counted only
    assert fed == [2] and isinstance(state.metrics["count"], SampleCount)
    extension = SimpleNamespace(extend=lambda t, done, values: {"twice": 2 * values["x"]})
    values = state.measure("trainer", 1.5, lambda t, done, samples: {"x": torch.tensor(samples), "v": torch.ones(2)},
                           [extension])
    assert values == {"x": 2.0, "v": [1.0, 1.0], "twice": 4.0, "num_samples": 2.0, "num_ignored": 4.0}
    assert list(values) == ["x", "v", "twice", "num_samples", "num_ignored"]  # the row's column order

    def undefined(t, done, samples):
        raise ValueError("undefined")

    take(torch.ones(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="undefined"):
        state.measure("trainer", 2.0, undefined)
    assert state.measure("trainer", 3.0, lambda t, done, samples: {})["num_samples"] == 0.0  # reset after a raise


def test_the_state_round_trips_and_refuses_what_it_cannot_read():
    state = CollapseState("NeuralCollapseMonitor")
    state.history = [{"epoch": -1, "nc1": 1.0}]
    state.means, state.seen = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, dtype=torch.bool)
    saved = state.state_dict()
    assert saved["version"] == STATE_VERSION and "metrics" not in saved  # no metrics built: no partial sums
    fresh = CollapseState("NeuralCollapseMonitor")
    fresh.load_state_dict(saved, shape=(3, 4))
    assert fresh.restored and fresh.history == state.history and torch.equal(fresh.means, state.means)
    with pytest.raises(ValueError, match="'means' has shape"):
        CollapseState("NeuralCollapseMonitor").load_state_dict(saved, shape=(3, 5))
    for bad, match in [({**saved, "version": 1}, "version 1"), ({"version": STATE_VERSION, "history": []}, "'basis'"),
                       ({**saved, "history": [1]}, "list of dicts")]:
        with pytest.raises(ValueError, match=match):
            MonitorState("M").load_state_dict(bad)
    fresh.reset()
    assert fresh.history == [] and fresh.means is None and fresh.restored  # restored stays until the stage ends


def test_the_state_follows_one_weight_object():
    state, w = MonitorState("M"), torch.nn.Parameter(torch.zeros(2))
    assert not state.follows(w)
    state.follow(w)
    assert state.follows(w) and not state.follows(torch.nn.Parameter(torch.zeros(2)))


# ---------------------------------------------------------------- adapter: the callback-list check
def test_callbacks_in_check_sees_the_list_trainer_checks():
    from hadainit.callbacks import _lightning as internals

    with pytest.raises(ValueError, match="two monitors log under 'spectral'"):
        trainer([SpectralMonitor(), SpectralMonitor()], max_epochs=1)
    assert internals.callbacks_in_check() is None  # asked from anywhere else


# ---------------------------------------------------------------- the forecaster as its own callback
def test_a_standalone_forecaster_gives_what_forecast_true_gives():
    built_in = SpectralMonitor(mode="eval", forecast=True, forecast_window=4, name="a")
    plain = SpectralMonitor(mode="eval", name="b")
    forecaster = SpectralForecast(plain, window=4)
    trainer([built_in, plain, forecaster], max_epochs=5).fit(TinyModule(), loader())
    keys = [{k for k in row if "forecast" in k or "baseline" in k} for row in built_in.history]
    assert any(keys) and keys == [{k for k in row if "forecast" in k or "baseline" in k} for row in plain.history]
    for a, b in zip(built_in.history, plain.history):
        for key in keys[-1]:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-9, nan_ok=True), key
    with pytest.raises(ValueError, match="not a callback of this Trainer"):
        trainer([SpectralForecast(SpectralMonitor())], max_epochs=1).fit(TinyModule(), loader())
