"""experiments/_jsonargparse.py, the one module that reads jsonargparse's internals: each reader against the
pinned jsonargparse (constraints.txt), on the real ``hadainit train`` parser. The messages built from them are
checked in tests/test_cli.py (``test_parser_errors_are_one_line_from_the_chain``)."""

import argparse
import sys
import typing

import pytest

from hadainit.experiments import _jsonargparse as internals
from hadainit.experiments import train

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _refusal(tmp_path, *flags) -> BaseException:
    with pytest.raises(BaseException) as info:
        train.cli(["--out", str(tmp_path / "run"), *flags, *QUIET])
    return info.value


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # as train.main leaves it for LightningCLI


def test_the_trainer_limits_are_typed_int_first(tmp_path):
    parser = train.cli(["--out", str(tmp_path / "run"), *QUIET]).parser
    limits = {a.dest: internals.typehint(a) for a in parser._actions if a.dest.startswith("trainer.limit_")}
    assert set(limits) >= {"trainer.limit_train_batches", "trainer.limit_val_batches"}
    for dest, hint in limits.items():
        assert typing.get_args(hint)[:2] == (int, float), (dest, hint)
    assert internals.typehint(argparse.Action(["--x"], "x")) is None  # a plain argparse option has none


def test_a_bad_value_names_its_option_and_value(tmp_path):
    err = _refusal(tmp_path, "--model.lr", "nan")
    errors = internals.chain(err)
    assert isinstance(errors[0], argparse.ArgumentError) and len(errors) >= 2  # jsonargparse raises from its cause
    assert all(internals.raised_in(e, "jsonargparse") for e in errors)
    action, option, value = internals.given(errors)
    assert (action.dest, option, value) == ("model.lr", "--model.lr", "nan")
    assert internals.type_name(internals.typehint(action)) == "float"


def test_an_unknown_option_of_a_chosen_class_is_a_key_error_inside_its_action(tmp_path):
    errors = internals.chain(_refusal(tmp_path, "--data", "MNIST1D", "--data.nope", "3"))
    assert isinstance(errors[-1], KeyError)  # jsonargparse's NSKeyError
    assert "data" in [a.dest for e in errors for a in internals.actions(e)]


def test_a_class_that_refuses_its_arguments_is_named(tmp_path):
    errors = internals.chain(_refusal(tmp_path, "--data.batch_size", "0"))
    leaf = errors[-1]
    assert isinstance(leaf, ValueError) and not internals.raised_in(leaf, "jsonargparse")
    assert internals.instance_of(leaf) == "Digits"


def test_type_names_in_words():
    assert internals.type_name(typing.Optional[typing.Union[int, float]]) == "int or float or None"
    assert internals.type_name(typing.Literal["a", "b"]) == "one of 'a', 'b'"
    assert internals.type_name(list[int]) == "list[int]"


def test_a_config_saved_before_the_lookup_moved_still_parses(tmp_path):
    """Saved ``config.yaml`` files name the batch readers by import path; ``hadainit.callbacks.capture`` was their
    home until the classifier lookup got a module of its own, so that path still resolves to the same functions."""
    from hadainit.callbacks.classifier import default_inputs, default_labels

    old = "hadainit.callbacks.capture"
    run = train.cli(["--out", str(tmp_path / "run"), "--nc_monitor.labels_from_batch", f"{old}.default_labels",
                     "--spectral_monitor.inputs_from_batch", f"{old}.default_inputs", *QUIET])
    assert run.config.nc_monitor.labels_from_batch is default_labels
    assert run.config_init.spectral_monitor.source.inputs_from_batch is default_inputs
