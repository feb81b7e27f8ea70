"""The named parts of a monitor, each on its own (issue 23): the schedule (when), the phase table (where the
run stands), the publisher (where a value goes), the state (what is kept and checkpointed), the adapter's
callback-list check, and the forecaster as a callback of its own."""

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


# ---------------------------------------------------------------- state
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
