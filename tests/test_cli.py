"""The `mgiad` command line: every bad flag is refused in one line before
anything is read or trained; the output folder is checked up front; a failed checkpoint write leaves
no temporary file; metrics are strict JSON; `mgiad --help` lists the commands; matplotlib, tqdm and
torchvision are optional on the default path."""
import ast
import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from mgiad import checkpoints
from mgiad.cli import main
from mgiad.metrics import to_json

TINY = ["--model", "mgnet", "--widths", "4,8", "--smoothing-steps", "1,1", "--batch-size", "32",
        "--backend", "torch", "--device", "cpu", "--epochs", "1", "--max-steps-per-epoch", "2"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def _refused(argv, capsys, monkeypatch, command="train") -> str:
    """`mgiad COMMAND ARGV` must exit 2 with one line on stderr, without reaching training."""
    monkeypatch.setattr("mgiad.train.train", lambda args: pytest.fail("reached training"))
    with pytest.raises(SystemExit) as info:
        main([command, *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith(f"mgiad {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


BAD_FLAGS = {
    "batch-size-0": (["--batch-size", "0"], "batch_size must be an int of at least 1, got 0"),
    "batch-size-negative": (["--batch-size", "-5"], "batch_size must be an int of at least 1, got -5"),
    "batch-size-not-int": (["--batch-size", "1.5"], "expected an int, got '1.5'"),
    "lr-nan": (["--lr", "nan"], "lr must be a finite number in (0, inf), got nan"),
    "lr-inf": (["--lr", "inf"], "lr must be a finite number in (0, inf)"),
    "lr-zero": (["--lr", "0"], "lr must be a finite number in (0, inf)"),
    "lr-text": (["--lr", "fast"], "expected a number, got 'fast'"),
    "momentum-above-1": (["--momentum", "1.5"], "momentum must be a finite number in [0, 1)"),
    "momentum-nan": (["--momentum", "nan"], "momentum must be a finite number in [0, 1)"),
    "momentum-negative": (["--momentum", "-0.1"], "momentum must be a finite number in [0, 1)"),
    "weight-decay-negative": (["--weight-decay", "-1"], "weight_decay must be a finite number in [0, inf)"),
    "weight-decay-inf": (["--weight-decay", "inf"], "weight_decay must be a finite number in [0, inf)"),
    "epochs-0": (["--epochs", "0"], "epochs must be an int of at least 1, got 0"),
    "seed-negative": (["--seed", "-1"], "seed must be an int of at least 0 and at most 4294967295"),
    "seed-huge": (["--seed", str(2**64)], "seed must be an int of at least 0 and at most 4294967295"),
    "widths-not-multiples": (["--widths", "16,24", "--smoothing-steps", "1,1"],
                             "each level's width must be a multiple of the previous one"),
    "widths-zero": (["--widths", "0,4"], "widths must be a non-empty sequence of positive ints"),
    "widths-text": (["--widths", "16,x"], "expected comma-separated ints, got '16,x'"),
    "widths-empty": (["--widths", ""], "expected comma-separated ints, got ''"),
    "steps-zero": (["--smoothing-steps", "0,1,1"], "smoothing_steps must be a non-empty sequence of positive ints"),
    "steps-per-level": (["--smoothing-steps", "1,1"], "smoothing_steps must have one entry per level"),
    "group-size-odd": (["--group-size", "3"], "group_size=3 must be even and divide every grouped channel level"),
    "group-size-0": (["--group-size", "0"], "group_size must be an int of at least 1, got 0"),
    "channel-scale-0": (["--channel-scale", "0"], "channel_scale must be an int of at least 1, got 0"),
    "coarsest-0": (["--coarsest-channels", "0"], "coarsest_channels must be an int of at least 1, got 0"),
    "coarsest-too-large": (["--coarsest-channels", "32"], "coarsest_channels=32 is larger than the level width 16"),
    "post-smoothing-negative": (["--post-smoothing", "-1"], "post_smoothing must be an int of at least 0"),
    "degree": (["--model", "polymgnet", "--degree", "3"], "argument --degree: invalid choice: 3"),
    "max-steps-0": (["--max-steps-per-epoch", "0"], "max_steps_per_epoch must be an int of at least 1"),
    "threads-0": (["--threads", "0"], "threads must be an int of at least 1, got 0"),
    "threads-text": (["--threads", "all"], "expected an int, got 'all'"),
    "device-unknown": (["--device", "foo"], "expected cpu, cuda or cuda:N, got 'foo'"),
    "device-other-type": (["--device", "meta"], "expected cpu, cuda or cuda:N, got 'meta'"),
    "device-index": (["--device", "cuda:99"], "cuda:99"),
    "mgic-group-size": (["--model", "mgic-resnet56", "--group-size", "3"], "group_size=3 must be even"),
    "mgnet-group-size": (["--model", "mgnet", "--group-size", "48"], "group_size=48 must divide every width"),
    "polymgnet-odd-steps": (["--model", "polymgnet", "--smoothing-steps", "1,1,1"], "smoothing_steps must be even"),
    "resume-without-out": (["--resume"], "--resume needs --out"),
    "dataset-without-folder": (["--dataset", "cifar10"], "pass --data-dir"),
    "unknown-flag": (["--widht", "8"], "unrecognized arguments"),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flag_is_refused_in_one_line_before_training(name, capsys, monkeypatch):
    argv, message = BAD_FLAGS[name]
    assert message in _refused(argv, capsys, monkeypatch)


@NO_GPU
def test_cuda_without_a_gpu_is_refused(capsys, monkeypatch):
    assert "no CUDA GPU is available" in _refused(["--device", "cuda"], capsys, monkeypatch)
    assert "no CUDA GPU is available" in _refused(["x.pt", "--device", "cuda"], capsys, monkeypatch, "eval")


def test_batch_smaller_than_the_process_count_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "batch_size=2 must be at least the number of processes (4)" in _refused(
        ["--batch-size", "2"], capsys, monkeypatch)


def test_missing_optional_module_is_refused(capsys, monkeypatch):
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    assert "--autoaugment needs torchvision" in _refused(["--autoaugment"], capsys, monkeypatch)


def test_output_folder_is_checked_up_front(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file, not a folder" in _refused(["--out", str(a_file)], capsys, monkeypatch)
    assert f"cannot be created: {a_file} is a file, not a folder" in _refused(
        ["--out", str(a_file / "sub" / "run")], capsys, monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the probe fail as it would for a user
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        assert "is not writable (Permission denied)" in _refused(["--out", str(locked)], capsys, monkeypatch)
    finally:
        locked.chmod(0o700)


def _failing_save(obj, fh):
    fh.write(b"half a checkpoint")
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")  # torch on a full disk


def test_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the previous checkpoint")
    monkeypatch.setattr(checkpoints.torch, "save", _failing_save)
    with pytest.raises(checkpoints.CheckpointError, match="cannot write .*checkpoint.pt .*file write failed"):
        checkpoints.save_atomic({"model": {}}, str(path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"] and path.read_bytes() == b"the previous checkpoint"


def test_failed_checkpoint_write_in_training_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.torch, "save", _failing_save)
    with pytest.raises(SystemExit, match=r"^mgiad train: error: cannot write .*best\.pt") as info:
        main(["train", "--out", str(tmp_path), *TINY])
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def _strict_json(line: str) -> dict:
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_metrics_are_strict_json_when_the_loss_is_not_finite(tmp_path, capsys):
    assert to_json({"loss": float("nan"), "acc": 0.5, "lr": float("inf")}) == '{"loss": null, "acc": 0.5, "lr": null}'
    main(["train", "--out", str(tmp_path), *TINY, "--lr", "1e30"])  # finite, accepted, and it diverges
    (row,) = [_strict_json(line) for line in open(tmp_path / "metrics.jsonl")]
    assert row["train_loss"] is None and row["test_loss"] is None
    out, err = capsys.readouterr()
    _strict_json(out.splitlines()[0])
    assert "the training loss is not finite" in err


def test_help_lists_the_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "eval", "plot"):
        assert f"    {command} " in out, out
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2 and "unknown command 'fit'" in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5, "params": 10}\n')
    assert "plotting needs matplotlib" in _refused([str(tmp_path)], capsys, monkeypatch, "plot")


def test_default_path_needs_only_the_install_requires(tmp_path):
    """`pip install -e .` alone (no matplotlib, tqdm, torchvision, Pillow): `mgiad train` trains on digits,
    skips curves.png with a one-line note, and exits 0; scikit-learn, which digits needs, is required."""
    setup = ast.parse(open("setup.py").read())
    requires = next(kw.value for node in ast.walk(setup) if isinstance(node, ast.Call)
                    for kw in node.keywords if kw.arg == "install_requires")
    assert {ast.literal_eval(e).split(">")[0] for e in requires.elts} >= {"torch", "numpy", "scikit-learn"}
    code = ("import sys\nfor m in ('matplotlib', 'tqdm', 'torchvision', 'PIL'): sys.modules[m] = None\n"
            "from mgiad.cli import main\nmain(sys.argv[1:])")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--out", str(tmp_path), "--epochs", "1",
                           "--max-steps-per-epoch", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "curves.png skipped: matplotlib is not installed" in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("final test accuracy ")
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "checkpoint.pt", "metrics.jsonl"]


@pytest.mark.skipif(not os.path.isdir("/proc/self") or os.path.exists("/proc/mgiad-run"), reason="needs Linux's /proc")
def test_an_out_that_cannot_be_created_is_refused_with_the_real_reason(tmp_path, capsys, monkeypatch):
    """procfs answers mkdir with "No such file or directory" though /proc exists: the message names /proc and its
    file system instead; read-only and permission failures are told of the folder that refuses."""
    from mgiad.cli import creation_failure

    err = _refused(["--out", "/proc/mgiad-run/sub"], capsys, monkeypatch)
    assert "--out /proc/mgiad-run/sub cannot be created: /proc takes no new folders (a proc file system)" in err, err
    assert "No such file" not in err
    assert creation_failure(str(tmp_path / "a" / "b"), OSError(errno.EROFS, "Read-only file system")) == \
        f"{tmp_path} is on a read-only file system"
    assert creation_failure(str(tmp_path / "a"), OSError(errno.EACCES, "Permission denied")) == \
        f"{tmp_path} does not let this user create folders (permission denied)"
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert creation_failure(str(tmp_path / "link" / "run"), OSError(errno.ENOENT, "No such file or directory")) == \
        f"{tmp_path / 'link'} is a broken link, not a folder"


def test_eval_of_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    picture = tmp_path / "curves.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as info:
        main(["eval", str(picture)])
    message = str(info.value)
    assert message.startswith(f"mgiad eval: error: {picture} is not a readable checkpoint ("), message
    assert "\n" not in message and "delete" not in message, message


def test_threads_flag_and_default(tmp_path, capsys, monkeypatch):
    """--threads sets torch's thread count for the run, restored after it; the default is OMP_NUM_THREADS when
    set, else half the CPUs this process may use; --help gives the measurement behind it."""
    from mgiad.cli import default_threads

    seen = []

    def fake_train(args):
        seen.append(torch.get_num_threads())
        return {"history": [{"test_acc": 0.5}], "best_acc": 0.5}
    monkeypatch.setattr("mgiad.train.train", fake_train)
    before = torch.get_num_threads()
    main(["train", "--out", str(tmp_path), "--threads", "3"])
    assert seen == [3] and torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert default_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_threads() == 1
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "7-15 s with 1 and 30-94 s with 2 beside other jobs" in " ".join(capsys.readouterr().out.split())


def test_plot_prints_the_full_path_and_curves_have_whole_epoch_ticks(tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    from mgiad.plots import plot_curves

    rows = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "train_acc": 0.3 * e, "test_acc": 0.25 * e,
             "params": 10} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    main(["plot", ".", "--out", "tradeoff.png"])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'tradeoff.png'} (1 runs)\n"
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "curves.png"))
    for ax in figures[0].axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
