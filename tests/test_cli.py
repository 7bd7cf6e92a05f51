"""The ``rtdetr-fused`` command as a user runs it (a subprocess in an empty folder): its help, its one-line
errors with exit status 2 and nothing written; where runs go; the line each run logs."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("ultralytics")

import rtdetr_fused.integrations.ultralytics as U  # noqa: E402
from rtdetr_fused import ACTIVATIONS  # noqa: E402
from rtdetr_fused.cli import main  # noqa: E402


def user_env(config_dir) -> dict[str, str]:
    """A user's shell: not under pytest (Ultralytics sends runs elsewhere there), no network, the PyTorch path
    on the CPU, and a fresh Ultralytics settings file (its defaults, not this machine's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {**env, "YOLO_OFFLINE": "1", "TRITON_INTERPRET": "0", "YOLO_CONFIG_DIR": str(config_dir)}


def cli(cwd, *args: str, prelude: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m rtdetr_fused ARGS`` in ``cwd``; ``prelude``: Python run first in the same process."""
    cwd.mkdir(parents=True, exist_ok=True)
    command = ["-m", "rtdetr_fused"] if not prelude else ["-c", f"{prelude}\nfrom rtdetr_fused.cli import main\nmain()"]
    env = user_env(cwd.parent / f"{cwd.name}-config")
    return subprocess.run(
        [sys.executable, *command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_shows_examples_and_every_choice(tmp_path):
    top = cli(tmp_path / "cwd", "--help")
    assert top.returncode == 0 and "``" not in top.stdout
    assert "examples:" in top.stdout and "rtdetr-fused train model=rtdetr-l.yaml" in top.stdout
    train = cli(tmp_path / "cwd", "train", "--help")
    assert train.returncode == 0
    text = " ".join(train.stdout.split())  # the wrapping aside
    for name, cls in ACTIVATIONS.items():
        assert f"{name} {cls.__bases__[0].__name__}(" in text, name
    assert "comma list of " + ", ".join(U.FUSED) in text
    for word in ("all, or", "fuse_bn=True", "fuse_bn=recompute", "bitmask=", "num_parameters=", "examples:"):
        assert word in text, word
    assert "LeakyReLU(negative_slope=0.01, inplace=False, bitmask=False)" in text
    assert "PReLU(num_parameters=1, init=0.25)" in text, "device= and dtype= are not ours: device= is Ultralytics'"
    assert not list((tmp_path / "cwd").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "model=yolo11n.yaml", "act=relu", "negative_slope=0.1"],
            "negative_slope is an argument of act=leaky_relu, not of act=relu, which takes inplace, bitmask",
        ),
        (["info", "model=nope.yaml"], "model=nope.yaml: 'nope.yaml' does not exist"),
        (["train", "model=yolo11n.yaml", "epoch=3"], "epoch is not a train argument"),
        (["train", "model=yolo11n.yaml", "act=elu"], "act=elu is not an activation; choose from silu, mish"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    proc = cli(tmp_path / "cwd", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"rtdetr-fused {args[0]}: error: ")
    assert not list((tmp_path / "cwd").iterdir()), "nothing written"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["targets=Tanh"], "targets ['Tanh'] name no activation type; use 'all' or names from ['SiLU'"),
        (["fuse_bn=maybe"], "fuse_bn must be True, False or 'recompute', got 'maybe'"),
        (["epochs=abc"], "'epochs' must be an int"),
        (["act=mish", "epohcs=3"], "did you mean epochs?"),
        (["act=prelu", "approximate=tanh"], "approximate is an argument of act=gelu, not of act=prelu"),
    ],
)
def test_more_errors_in_process(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "model=yolo11n.yaml", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_log_line_counts_rtdetr_and_yolo(pytorch_path):
    from ultralytics import RTDETR, YOLO

    config = U.FusedActivations("mish", fuse_bn=True)
    with config.building():
        RTDETR("rtdetr-l.yaml")
    assert config.summaries == [
        "rtdetr-fused: act=mish targets=SiLU: swapped 24 sites (24 nn.SiLU -> rtdetr_fused.Mish); kept 67 nn.ReLU, "
        "1 nn.GELU (targets=all swaps them too); fuse_bn=True: 72 blocks fused (41 Conv, 24 DWConv, 6 HGBlock, "
        "1 MaxPool2d)"
    ]
    config = U.FusedActivations("relu", targets="all")
    with config.building():
        YOLO("yolo11n.yaml")
    assert config.summaries == [
        "rtdetr-fused: act=relu targets=all: swapped 77 sites (77 nn.SiLU -> rtdetr_fused.ReLU); fuse_bn off "
        "(fuse_bn=True fuses each Conv block's BatchNorm with its activation)"
    ]


def test_runs_dir_only_replaces_a_default_borrowed_from_a_checkout(monkeypatch, tmp_path):
    import ultralytics.utils

    monkeypatch.chdir(tmp_path)
    root = ultralytics.utils.ROOT

    class Settings(dict):
        defaults: dict

    def use(git_root, runs_dir, default):
        s = Settings(runs_dir=runs_dir)
        s.defaults = {"runs_dir": default}
        monkeypatch.setattr(ultralytics.utils, "SETTINGS", s)
        monkeypatch.setattr(ultralytics.utils, "GIT", SimpleNamespace(root=git_root))

    use(root.parents[4], str(root.parents[4] / "runs"), str(root.parents[4] / "runs"))  # a .venv in a checkout
    assert U.runs_dir() == tmp_path / "runs"
    use(root.parents[4], "/data/my-runs", str(root.parents[4] / "runs"))  # the user's own setting
    assert U.runs_dir() is None
    use(root.parent, str(root.parent / "runs"), str(root.parent / "runs"))  # Ultralytics' own checkout
    assert U.runs_dir() is None
    use(None, "runs", "runs")  # a pip install: ./runs already
    assert U.runs_dir() is None

    class Model:  # what train() asks of an Ultralytics Model
        task, callbacks = "detect", {"on_pretrain_routine_end": []}

        def add_callback(self, event, callback):
            self.callbacks[event].append(callback)

        def _smart_load(self, key):
            from ultralytics.models.yolo.detect import DetectionTrainer

            return DetectionTrainer

        def train(self, trainer, **args):
            self.args = args

    use(root.parents[4], str(root.parents[4] / "runs"), str(root.parents[4] / "runs"))
    projects = {}
    for args in ({}, {"project": "exp"}, {"project": "/abs/exp", "name": "a"}, {"resume": True}):
        model = U.train(Model(), **args)
        projects[str(args)] = model.args.get("project")
    assert projects == {
        "{}": str(tmp_path / "runs" / "detect"),
        "{'project': 'exp'}": str(tmp_path / "runs" / "detect" / "exp"),
        "{'project': '/abs/exp', 'name': 'a'}": "/abs/exp",
        "{'resume': True}": None,  # a resumed run goes back to its own folder
    }


def test_setup_says_what_it_installs():
    """``make setup`` (under ``make bench`` and ``make test``) announces each install and its size, and lets pip
    show progress: the same commands otherwise."""
    from pathlib import Path

    root = Path(U.__file__).parents[3]
    proc = subprocess.run(
        ["make", "-n", "-B", ".venv/bin/.installed"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    installs = [line for line in proc.stdout.splitlines() if " install " in line]
    assert len(installs) == 2 and not any(" -q" in line for line in installs)
    assert '"torch==2.14.1" "torchvision==0.29.1"' in installs[0] and '-e ".[dev,ultralytics]"' in installs[1]
    said = [line for line in proc.stdout.splitlines() if line.startswith('echo "== ')]
    assert len(said) == 3 and "GB on disk" in said[1] and "CUDA build" in said[0]
