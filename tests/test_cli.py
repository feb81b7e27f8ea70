"""The `hadainit` commands end to end on the real embedded data: train (LightningCLI), compare, bad flags."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from hadainit.experiments import cli, compare, train
from hadainit.experiments.data import MNIST1D, Digits
from hadainit.experiments.runs import read_metrics

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# for runs whose tests read no figure: the monitors' figures are most of a short run's time
NO_FIGURES = ["--nc_monitor.plot", "false", "--spectral_monitor.plot", "false"]
SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]  # a run whose batches do not matter


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert train.main(["--out", str(out), "--trainer.max_epochs", "3", *QUIET]) == 0
    return out


def test_train_with_no_data_argument_trains_the_digits_mlp(digits_run):
    for name in ("report.json", "report.md", "metrics.csv", "config.yaml", "curves.png", "nc_eval.png",
                 "spectral_eval.png", "checkpoints/last.ckpt"):
        assert (digits_run / name).is_file(), name
    report = json.loads((digits_run / "report.json").read_text())
    assert report["data"] == "Digits" and report["num_classes"] == 10 and report["epochs_trained"] == 3
    with open(digits_run / "metrics.csv") as fh:  # the report's final values are the CSV's last ones
        rows = list(csv.DictReader(fh))
    last_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")][-1]
    assert report["final"]["val/acc"] == last_acc
    assert report["final"]["nc_eval/nc1"] == [float(r["nc_eval/nc1"]) for r in rows if r.get("nc_eval/nc1")][-1]


@pytest.fixture(scope="module")
def resumed_run(digits_run, tmp_path_factory):
    """A copy of ``digits_run`` resumed in place from its checkpoint to 5 epochs."""
    import shutil

    resumed = tmp_path_factory.mktemp("resume") / "resumed"
    shutil.copytree(digits_run, resumed)
    argv = ["--out", str(resumed), "--trainer.max_epochs", "5", "--ckpt_path", str(resumed / "checkpoints/last.ckpt"),
            *QUIET, *NO_FIGURES]
    assert train.main(argv) == 0
    return resumed


def test_resume_from_the_checkpoint_continues_the_run(digits_run, resumed_run):
    resumed = resumed_run
    table = read_metrics(resumed / "metrics.csv")
    assert [r["epoch"] for r in table] == [-1, 0, 1, 2, 3, 4]
    assert json.loads((resumed / "report.json").read_text())["epochs_trained"] == 5
    original = read_metrics(digits_run / "metrics.csv")
    assert table[:4] == original  # the history before the checkpoint is kept as it was


def test_a_failed_resume_keeps_the_history_and_drops_the_stale_report(digits_run, tmp_path, monkeypatch):
    import shutil

    import lightning as L

    resumed = tmp_path / "failed"
    shutil.copytree(digits_run, resumed)

    def explode(self, *args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: (self.loggers[0].log_metrics({"x": 1.0}, step=999),
                                                                  self.loggers[0].save(), explode(self)))
    argv = ["--out", str(resumed), "--trainer.max_epochs", "5", "--ckpt_path", str(resumed / "checkpoints/last.ckpt"),
            *QUIET]
    assert train.main(argv) == 2
    assert read_metrics(resumed / "metrics.csv")[:4] == read_metrics(digits_run / "metrics.csv")
    assert not (resumed / "report.json").exists() and not (resumed / "report.md").exists()


def test_print_config_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--print_config", "--data", "MNIST1D", "--model.init", "etf"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("init: etf", "class_path: hadainit.experiments.data.MNIST1D", "nc_monitor:", "spectral_monitor:",
                   "max_epochs: 300", "mode: eval"):
        assert needle in text, needle
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "--model.init {hadamard,etf,default}" in text and "--nc_monitor.mode {train,eval,val}" in text


def test_config_file_and_mnist1d(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  arch: cnn\n  init: etf\ndata:\n  class_path: hadainit.experiments.data.MNIST1D\n"
                      "trainer:\n  max_epochs: 1\n  limit_train_batches: 4\n")
    out = tmp_path / "run"
    assert train.main(["--config", str(config), "--out", str(out), "--trainer.limit_val_batches", "1", *QUIET,
                       *NO_FIGURES]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == "MNIST1D" and report["config"]["model"]["arch"] == "cnn"


@pytest.mark.parametrize("flags, message", [
    (["--model.lr", "nan"], "model.lr"),
    (["--trainer.devices", "0"], "devices 0"),
    (["--trainer.limit_train_batches", "0"], "limit_train_batches must be a positive number"),
    (["--model.init", "xavier"], "xavier"),
    (["--data", "Nope"], "Nope"),
    (["--data.batch_size", "0"], "batch size must be positive"),
    (["--trainer.logger", "CSVLogger"], "--trainer.logger"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, capsys, flags, message):
    assert train.main(["--out", str(tmp_path / "o"), *flags, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hadainit train:") and message in err, err


def test_outputs_are_never_mixed(digits_run, tmp_path, capsys):
    assert train.main(["--out", str(digits_run), *QUIET]) == 2
    assert "not empty: pass --overwrite" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert train.main(["--out", str(afile), *QUIET]) == 2
    assert "is a file" in capsys.readouterr().err
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "report.json").write_text("{old")
    (stale / ".hadainit-run").write_text("{}")  # an earlier hadainit command's folder
    assert train.main(["--out", str(stale), "--overwrite", "--trainer.max_epochs", "1", *SHORT, *QUIET,
                       *NO_FIGURES]) == 0
    assert json.loads((stale / "report.json").read_text())["epochs_trained"] == 1


def test_hadainit_command_lists_and_refuses(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("ufm", "real", "train", "validate", "compare", "slowdown"):
        assert f"  {name}" in out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "hadainit.experiments.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "validate" in result.stdout


def test_compare_labels_groups_and_keys(digits_run, tmp_path, capsys):
    import shutil

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"  # same folder name: distinct labels
    shutil.copytree(digits_run, a)
    shutil.copytree(digits_run, b)
    result = compare.compare([a, b], tmp_path / "cmp")
    assert set(result["runs"]) == {"a/run", "b/run"}
    assert {"nc_eval.png", "spectral_eval.png", "train.png", "val.png"} <= set(result["figures"])
    assert "spectral_eval/drift" in result["keys"] and not any(k.endswith("num_samples") for k in result["keys"])
    only = compare.compare([a / "metrics.csv", b], tmp_path / "cmp2", keys=["val/acc"])  # a plain CSVLogger file
    assert only["keys"] == ["val/acc"]
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp3"), "--keys", "nope"]) == 2
    assert "--keys ['nope'] are in none of the runs" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert compare.plotted("nc_eval/nc1") and not compare.plotted("spectral_eval/lam_3")
    assert not compare.plotted("nc_eval/num_samples")


def test_data_modules_have_fixed_splits_and_leave_the_rng_alone():
    first, second = Digits(), Digits()
    first.setup(), second.setup()
    assert len(first.train_set) + len(first.test_set) == 1797
    assert torch.equal(first.train_set.tensors[1], second.train_set.tensors[1])
    assert first.train_set.tensors[0].shape[1:] == (1, 8, 8) and first.train_set.tensors[0].max() <= 1.0
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    m = MNIST1D()
    m.setup()
    assert np.array_equal(np.random.get_state()[1], state)  # the generator reseeds numpy; restored
    assert len(m.train_set) == 4000 and len(m.test_set) == 1000 and m.train_set.tensors[0].shape[1:] == (1, 40)
    assert sorted(m.train_set.tensors[1].unique().tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        Digits(batch_size=0)
    assert math.isfinite(float(m.train_set.tensors[0].abs().max()))


def test_every_command_refuses_a_non_empty_out(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "report.json").write_text("{}")
    for command in (["ufm", "--quick"], ["real"], ["validate", "--quick"], ["compare", str(tmp_path)]):
        assert cli.main([*command, "--out", str(full)]) == 2, command
        assert "not empty: pass --overwrite" in capsys.readouterr().err


# ------------------------------------------------- the run folder and resume
def _fake_run(folder):
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    (folder / "metrics.csv").write_text("epoch,step\n0,1\n")
    (folder / ".hadainit-run").write_text("{}")


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, capsys):
    old = tmp_path / "old"
    _fake_run(old)
    argv = ["--config", "configs/cifar10_resnet18.yaml", "--data.data_dir", str(tmp_path / "missing"),
            "--out", str(old), "--overwrite", *QUIET]
    assert train.main(argv) == 2
    assert "cifar10 not found" in capsys.readouterr().err
    assert sorted(p.name for p in old.iterdir()) == [".hadainit-run", "metrics.csv", "report.json"]  # untouched


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("keep me")
    assert train.main(["--out", str(notes), "--overwrite", "--trainer.max_epochs", "1", *QUIET]) == 2
    assert "holds no hadainit output" in capsys.readouterr().err
    assert (notes / "thesis.txt").read_text() == "keep me"


def test_resume_into_another_runs_folder_is_refused(digits_run, tmp_path, capsys):
    other = tmp_path / "other"
    _fake_run(other)
    argv = ["--out", str(other), "--ckpt_path", str(digits_run / "checkpoints/last.ckpt"), "--trainer.max_epochs", "4",
            *QUIET]
    assert train.main(argv) == 2
    assert "holds another run" in capsys.readouterr().err


def test_resume_into_a_new_folder_carries_the_history(digits_run, tmp_path):
    new = tmp_path / "new"
    argv = ["--out", str(new), "--ckpt_path", str(digits_run / "checkpoints/last.ckpt"), "--trainer.max_epochs", "4",
            *QUIET, *NO_FIGURES]
    assert train.main(argv) == 0
    table = read_metrics(new / "metrics.csv")
    assert [r["epoch"] for r in table] == [-1, 0, 1, 2, 3]
    assert table[:4] == read_metrics(digits_run / "metrics.csv")
    assert "resumed from a checkpoint after 3 epochs" in (new / "report.md").read_text()


def test_a_resumed_run_follows_the_uninterrupted_one(resumed_run, tmp_path):
    """The shuffle of epoch e depends on (seed, e) only: resuming gives the uninterrupted run's batches."""
    resumed = resumed_run
    straight = tmp_path / "straight"
    assert train.main(["--out", str(straight), "--trainer.max_epochs", "5", *QUIET, *NO_FIGURES]) == 0
    a, b = read_metrics(resumed / "metrics.csv"), read_metrics(straight / "metrics.csv")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train/loss", "val/acc", "nc_eval/nc1", "spectral_eval/drift"):
            if key in rb:
                assert math.isclose(ra[key], rb[key], rel_tol=1e-5, abs_tol=1e-7), (ra["epoch"], key, ra[key], rb[key])


# ------------------------------------------------------------ other defects
def test_a_config_without_a_data_section_keeps_the_digits(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_epochs: 1\nmodel:\n  init: default\n")
    out = tmp_path / "run"
    assert train.main(["--config", str(config), "--out", str(out), *SHORT, *QUIET, *NO_FIGURES]) == 0
    assert json.loads((out / "report.json").read_text())["data"] == "Digits"


@pytest.mark.parametrize("flags, message", [(["--trainer.accelerator", "gpu"], "gpu"),
                                            (["--data", "CIFAR10"], "unknown data module; choose one of Digits"),
                                            (["--data.data_dir", "/nope"], "--data.data_dir: not an option of the"),
                                            (["--trainer.max_epochs", "abc"], "got 'abc', expected int")])
def test_misconfigurations_give_one_line(tmp_path, capsys, flags, message):
    assert train.main(["--out", str(tmp_path / "run"), "--trainer.max_epochs", "1", *flags, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("hadainit train: ")


RUN_FILES = ("metrics.csv", "config.yaml", "nc_eval.png", "curves.png", "report.md", "checkpoints/last.ckpt")


@pytest.mark.parametrize("logger", [["--trainer.logger", "false"],
                                    ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "{tmp}/user"]])
def test_the_run_folder_does_not_depend_on_the_logger(tmp_path, logger):
    out = tmp_path / "run"
    flags = [f.format(tmp=tmp_path) for f in logger]
    assert train.main(["--out", str(out), "--trainer.max_epochs", "1", *flags, *SHORT, *QUIET,
                       "--spectral_monitor.plot", "false"]) == 0  # nc_eval.png is one of the RUN_FILES
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert any(r.get("nc_eval/nc1") for r in csv.DictReader(open(out / "metrics.csv")))
    if "CSVLogger" in flags:  # the user's own logger got the values too
        assert any("nc_eval/nc1" in p.read_text() for p in (tmp_path / "user").rglob("metrics.csv"))


def test_reports_are_readable_and_hold_no_reprs(digits_run):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.json", "report.md", "metrics.csv"):
        assert stat.S_IMODE((digits_run / name).stat().st_mode) == 0o666 & ~umask, name
    assert "<function" not in (digits_run / "report.json").read_text()


def test_digits_split_sizes_match_the_docs():
    data = Digits()
    data.setup()
    assert (len(data.train_set), len(data.test_set)) == (1438, 359)
    assert "1,438 training / 359 test" in Digits.__doc__


def test_data_given_as_json_is_passed_to_the_parser(tmp_path):
    out = tmp_path / "run"
    argv = ["--data", '{"class_path": "Digits", "init_args": {"batch_size": 32}}', "--out", str(out),
            "--trainer.max_epochs", "1", *SHORT, *QUIET, *NO_FIGURES]
    assert train.main(argv) == 0
    assert json.loads((out / "report.json").read_text())["data"] == "Digits"


def test_overwrite_needs_a_hadainit_output_not_a_generic_file(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("a: 1")
    assert train.main(["--out", str(project), "--overwrite", "--trainer.max_epochs", "1", *QUIET]) == 2
    assert "holds no hadainit output" in capsys.readouterr().err and (project / "src").is_dir()


# ------------------------------------------------------------ data loss (issue 22, item 10)
def _user_folder(folder):
    """A folder a user owns: code, data, and a metrics.csv such as any CSVLogger writes."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "model.py").write_text("keep me")
    (folder / "metrics.csv").write_text("epoch,step,loss\n0,1,0.5\n")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_compare_never_empties_one_of_its_inputs(digits_run, tmp_path, capsys):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(digits_run, a)
    shutil.copytree(digits_run, b)
    before = sorted(p.name for p in a.iterdir())
    assert compare.main([str(a), str(b), "--out", str(a), "--overwrite"]) == 2
    assert "is (or holds) the input" in capsys.readouterr().err
    assert sorted(p.name for p in a.iterdir()) == before and (a / "checkpoints/last.ckpt").is_file()
    assert compare.main([str(a / "x"), "--out", str(tmp_path), "--overwrite"]) == 2  # a folder holding an input
    assert a.is_dir()


def test_overwrite_never_empties_a_folder_hadainit_did_not_make(tmp_path, capsys):
    user = tmp_path / "experiment"
    before = _user_folder(user)
    assert train.main(["--out", str(user), "--overwrite", "--trainer.max_epochs", "1", *QUIET]) == 2
    assert "holds no hadainit output" in capsys.readouterr().err
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == before


def test_the_working_directory_is_never_emptied(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _user_folder(tmp_path)
    (tmp_path / ".hadainit-run").write_text("{}")  # even one hadainit wrote into
    before = sorted(before + [".hadainit-run"])
    for out in ("", ".", str(tmp_path)):
        assert train.main(["--out", out, "--overwrite", "--trainer.max_epochs", "1", *QUIET]) == 2, out
        err = capsys.readouterr().err
        assert "is empty (an unset shell variable?)" in err or "working directory" in err, err
        assert compare.main([str(tmp_path / "src"), "--out", out, "--overwrite"]) == 2
        capsys.readouterr()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_a_folder_in_use_by_another_command_is_refused(tmp_path, capsys):
    import socket

    from hadainit.experiments import outdir

    busy = tmp_path / "busy"
    busy.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process holds the lock: refused, the folder untouched
        (busy / outdir.LOCK).write_text(f"{sleeper.pid} {socket.gethostname()} 0\n")
        assert train.main(["--out", str(busy), "--trainer.max_epochs", "1", *QUIET]) == 2
        assert f"in use by another hadainit command (pid {sleeper.pid}" in capsys.readouterr().err
        assert compare.main([str(tmp_path / "nothing"), "--out", str(busy)]) == 2
        assert sorted(p.name for p in busy.iterdir()) == [outdir.LOCK]
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock once its process is gone is stale: taken over, and released at the end
    with outdir.prepare(busy, command="test") as folder:
        assert (busy / outdir.LOCK).read_text().split()[0] == str(__import__("os").getpid())
        with pytest.raises(FileExistsError, match="in use by another hadainit command"):
            outdir.prepare(busy, command="second", overwrite=True)
        assert (folder.path / outdir.MARKER).is_file()
    assert not (busy / outdir.LOCK).exists()


# ------------------------------------------- interrupts, resume, limits (issue 22, items 2, 4, 7, 11, 13, 14)
def test_ctrl_c_leaves_a_report_and_figures_and_resume_counts_the_epochs(tmp_path, monkeypatch, capsys):
    from hadainit.experiments.module import ClassifierModule

    def interrupt(self):
        if self.current_epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ClassifierModule, "on_train_epoch_end", interrupt, raising=False)
        assert train.main(["--out", str(out), "--trainer.max_epochs", "4", "--trainer.limit_val_batches", "1",
                           *QUIET]) == 130
    assert "interrupted in epoch 2" in capsys.readouterr().out
    assert "Interrupted (Ctrl-C)" in (out / "report.md").read_text()
    for name in ("curves.png", "nc_eval.png", "spectral_eval.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    # the checkpoint holds the epochs finished before the interrupt: its step count over the steps per epoch
    # (Lightning saves it after the module's on_train_epoch_end, so the interrupted epoch is not in it)
    steps_per_epoch = math.ceil(1438 / 128)  # the digits training split in batches of 128 (the default)
    saved = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    done = saved // steps_per_epoch
    assert train.main(["--out", str(out), "--trainer.max_epochs", "3", "--ckpt_path",
                       str(out / "checkpoints/last.ckpt"), *QUIET, *NO_FIGURES]) == 0
    noun = "epoch" if done == 1 else "epochs"
    assert f"resumed from a checkpoint after {done} {noun})" in (out / "report.md").read_text()
    # the README's resume example after a finished run: said in one line, not silently nothing
    assert train.main(["--out", str(out), "--trainer.max_epochs", "3", "--ckpt_path",
                       str(out / "checkpoints/last.ckpt"), *QUIET]) == 2
    assert "has trained 3 epochs already" in capsys.readouterr().err


def test_limit_train_batches_1_is_one_batch_and_max_steps_counts_the_fraction(tmp_path):
    one = tmp_path / "one"
    assert train.main(["--out", str(one), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
                       "--trainer.limit_val_batches", "1", *QUIET, *NO_FIGURES]) == 0
    assert json.loads((one / "report.json").read_text())["steps"] == 2  # one batch per epoch, not 100 %
    cut = tmp_path / "cut"
    batches = math.ceil(1438 / 128)  # the digits training split in batches of 128 (the default)
    steps = batches + batches // 2
    assert train.main(["--out", str(cut), "--trainer.max_epochs", "5", "--trainer.max_steps", str(steps),
                       "--trainer.limit_val_batches", "1", *QUIET, *NO_FIGURES]) == 0
    report = json.loads((cut / "report.json").read_text())
    assert report["epochs_trained"] == steps / batches and f"{steps / batches:.4g} epochs" in (cut / "report.md").read_text()


def test_disabling_checkpointing_works(tmp_path):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false",
                       "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", *QUIET,
                       *NO_FIGURES]) == 0
    assert (out / "report.md").is_file() and not (out / "checkpoints").exists()


def test_a_failed_resume_into_a_new_folder_leaves_nothing_behind(digits_run, tmp_path, capsys):
    new = tmp_path / "new"
    argv = ["--out", str(new), "--ckpt_path", str(digits_run / "checkpoints/last.ckpt"), "--trainer.max_epochs", "5",
            "--model.arch", "cnn", *QUIET]  # another network: the checkpoint's weights do not load
    assert train.main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not new.exists()  # no config.yaml or copied metrics.csv that compare would take for a run


def test_the_folder_of_a_failed_run_can_be_overwritten(tmp_path, monkeypatch, capsys):
    from hadainit.experiments.module import ClassifierModule

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ClassifierModule, "on_train_epoch_end", lambda self: (_ for _ in ()).throw(RuntimeError("boom")),
                  raising=False)
        assert train.main(["--out", str(out), "--trainer.max_epochs", "2", *SHORT, *QUIET, *NO_FIGURES]) == 2
    assert "boom" in capsys.readouterr().err and (out / "metrics.csv").is_file()
    assert train.main(["--out", str(out), "--overwrite", "--trainer.max_epochs", "1", *SHORT, *QUIET,
                       *NO_FIGURES]) == 0


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"not a checkpoint\n", "not a readable PyTorch"),
                                              (bytes(range(256)) * 4, "not a readable PyTorch")])
def test_a_bad_checkpoint_file_is_one_line(tmp_path, capsys, content, message):
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(content)
    assert train.main(["--out", str(tmp_path / "run"), "--ckpt_path", str(ckpt), *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_write_failures_and_an_out_under_a_file_are_one_line(tmp_path, monkeypatch, capsys):
    import errno

    afile = tmp_path / "file"
    afile.write_text("x")
    assert train.main(["--out", str(afile / "run"), *QUIET]) == 2
    assert "lies under" in capsys.readouterr().err
    assert compare.main([str(tmp_path), "--out", str(afile / "cmp")]) == 2
    assert "lies under" in capsys.readouterr().err

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "report.json"))

    monkeypatch.setattr(train, "write_run_report", full)
    assert train.main(["--out", str(tmp_path / "run"), "--trainer.max_epochs", "1", *SHORT, *QUIET, *NO_FIGURES]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is not None, reason="tensorboard installed")
def test_a_missing_logger_package_says_what_to_install(tmp_path, capsys):
    assert train.main(["--out", str(tmp_path / "run"), "--trainer.logger", "TensorBoardLogger", *QUIET]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def test_small_work_runs_one_thread_unless_told(tmp_path, monkeypatch, capsys):
    import lightning as L

    seen = []

    def fit(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(L.Trainer, "fit", fit)
    torch.set_num_threads(2)
    monkeypatch.delenv("HADAINIT_THREADS", raising=False)
    assert cli.main(["train", "--out", str(tmp_path / "a"), *QUIET]) == 2
    assert cli.main(["train", "--out", str(tmp_path / "b"), "--threads", "2", *QUIET]) == 2
    monkeypatch.setenv("HADAINIT_THREADS", "3")
    assert cli.main(["train", "--out", str(tmp_path / "c"), *QUIET]) == 2
    assert seen == [1, 2, 3] and torch.get_num_threads() == 2  # restored afterwards
    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "d"), "--threads", "0"]) == 2
    assert "--threads must be a positive int" in capsys.readouterr().err


# ------------------------------------------- the parser decides (issue 23): no argv scanning, no regex on dumps
def test_batch_limits_are_counts_as_ints_and_fractions_as_floats(tmp_path, monkeypatch):
    """jsonargparse tries the trainer's int-or-float options as int first: 1 is one batch, 1.0 all of them, on the
    command line and in a config file alike."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # as train.main leaves it for LightningCLI
    out = ["--out", str(tmp_path / "run"), *QUIET]
    run = train.cli([*out, "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1.0"])
    assert type(run.trainer.limit_train_batches) is int and run.trainer.limit_train_batches == 1
    assert type(run.trainer.limit_val_batches) is float and run.trainer.limit_val_batches == 1.0
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  limit_train_batches: 1\n  limit_val_batches: 0.5\n  val_check_interval: 3\n")
    run = train.cli([*out, "--config", str(config)])
    assert type(run.trainer.limit_train_batches) is int and run.trainer.limit_train_batches == 1
    assert run.trainer.limit_val_batches == 0.5 and type(run.trainer.val_check_interval) is int
    assert not (tmp_path / "run").exists()  # parsing and instantiating write nothing


def test_the_digits_are_the_parser_default_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    run = train.cli(["--out", str(tmp_path / "run"), "--data.batch_size", "32", *QUIET])  # init args of the default
    assert type(run.datamodule) is Digits and run.datamodule.batch_size == 32
    run = train.cli(["--out", str(tmp_path / "run"), "--data", "MNIST1D", *QUIET])
    assert type(run.datamodule) is MNIST1D
    with pytest.raises(SystemExit):
        train.main(["--print_config"])
    assert "class_path: hadainit.experiments.data.Digits" in capsys.readouterr().out


def test_a_missing_logger_package_is_found_in_the_parsed_config(tmp_path, capsys, monkeypatch):
    """Wherever the logger was chosen (a flag, an appended list, a config file); before its arguments are checked."""
    monkeypatch.setitem(train.LOGGER_PACKAGES, "CSVLogger", ("hadainit_no_such_package",))
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n")
    for flags in (["--trainer.logger", "CSVLogger"], ["--trainer.logger+", "lightning.pytorch.loggers.CSVLogger"],
                  ["--config", str(config)]):
        assert train.main(["--out", str(tmp_path / "run"), *flags, *QUIET]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert err == ("hadainit train: --trainer.logger CSVLogger needs the hadainit_no_such_package package: "
                       "pip install hadainit_no_such_package"), err


@pytest.mark.parametrize("flags, message", [
    (["--data.batch_size", "abc"], "--data.batch_size: got 'abc', expected int"),
    (["--trainer.limit_val_batches", "abc"], "--trainer.limit_val_batches: got 'abc', expected int or float or None"),
    (["--model.init", "xavier"], "--model.init: got 'xavier', expected one of 'hadamard', 'etf', 'default'"),
    (["--trainer.precision", "bogus"], "'bf16-mixed'"),
    (["--trainer.callbacks+", "Nope"], "expected list[Callback] or Callback or None"),
    (["--trainer.logger", "CSVLogger"], "--trainer.logger (CSVLogger): the following arguments are required: save_dir"),
    (["--data", "MNIST1D", "--data.nope", "3"], "--data.nope: not an option of the chosen data class"),
    (["--data.class_path", "Nope"], "--data Nope: unknown data module"),
    (["--data", "hadainit.experiments.data.Nope"], "has no attribute 'Nope'"),
    (["--config", "{tmp}/data.yaml"], "--data: "),
    (["--config", "{tmp}/model.yaml"], "Group 'model' does not accept option 'nope'"),
    (["--data.batch_size", "0"], "--data (Digits): batch size must be positive"),
    (["--nope", "1"], "unrecognized arguments: --nope 1"),
])
def test_parser_errors_are_one_line_from_the_chain(tmp_path, capsys, flags, message):
    (tmp_path / "data.yaml").write_text("data:\n  class_path: Nope\n")
    (tmp_path / "model.yaml").write_text("model:\n  nope: 1\n")
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert train.main(["--out", str(tmp_path / "run"), *flags, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hadainit train: ") and message in err, err
    assert "Parser key" not in err and "Does not validate" not in err and "Namespace(" not in err, err


@pytest.mark.parametrize("yaml_text, message", [
    ("trainer:\n  limit_train_batches: [1, 2]\n",
     "--trainer.limit_train_batches: got [1, 2], expected int or float or None"),
    ("trainer:\n  max_epochs: abc\n", "--trainer.max_epochs: got 'abc', expected int or None"),
    ("model:\n  init: nope\n", "--model.init: got 'nope', expected one of 'hadamard', 'etf', 'default'"),
    ("data: Nope\n", "--data Nope: unknown data module; choose one of Digits, MNIST1D, CIFAR"),
])
def test_a_config_files_bad_value_reads_as_on_the_command_line(tmp_path, capsys, yaml_text, message):
    """Was: jsonargparse's own wording for a value in a --config file ("Expected a <class 'int'>. Got value: ...",
    which also hid that a float is accepted); the value is looked up in the file, and the message is the
    command line's."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    assert train.main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hadainit train: {message}") and len(err.splitlines()) == 1, err
