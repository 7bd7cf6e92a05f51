"""Training through the Ultralytics trainer with fused activations, on a dataset the test writes itself.

One run of yolo11n (PReLU at every site) is interrupted after its first epoch and resumed through the
CLI; the tests then check its checkpoints, their conversion (loaded under ULTRALYTICS_SAFE_LOAD=1 in a
fresh process), a pretrained start, and the trainer rebuilt as Ultralytics' DDP workers rebuild it.
"""

import contextlib
import csv
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("ultralytics")

import rtdetr_fused.integrations.ultralytics as U  # noqa: E402
from rtdetr_fused.cli import main  # noqa: E402

IMGSZ = 64
TRAIN_ARGS = dict(imgsz=IMGSZ, batch=4, workers=0, plots=False, amp=False, device="cpu", seed=0)
CLI_ARGS = [f"{k}={v}" for k, v in TRAIN_ARGS.items()]
PRELU_SITES = {"rtdetr_fused.PReLU": 77}


class _Interrupt(Exception):
    pass


def _stop_after_first_save(trainer) -> None:
    raise _Interrupt


def _write_dataset(root) -> str:
    """Four 64x64 images per split, each with a red and a blue box, and their YOLO labels."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            img, lines = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8), []
            for cls, color in enumerate([(0, 0, 255), (255, 0, 0)]):
                x, y = rng.integers(0, 40, 2)
                w, h = rng.integers(12, 24, 2)
                img[y : y + h, x : x + w] = color
                lines.append(f"{cls} {(x + w / 2) / IMGSZ} {(y + h / 2) / IMGSZ} {w / IMGSZ} {h / IMGSZ}")
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return str(data)


@contextlib.contextmanager
def _offline_pytorch_path():
    """PyTorch ops on CPU (the interpreter is far too slow for a detector), no font download."""
    import ultralytics.data.utils

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        mp.setattr(ultralytics.data.utils, "check_font", lambda *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch PReLU run: Python API, interrupted after epoch 1, then resumed with the CLI."""
    root = tmp_path_factory.mktemp("ultralytics")
    data = _write_dataset(root / "data")
    project = root / "runs"
    with _offline_pytorch_path():
        model = U.load_model("yolo11n.yaml")
        model.add_callback("on_model_save", _stop_after_first_save)
        with pytest.raises(_Interrupt):
            U.train(model, "prelu", data=data, epochs=2, project=str(project), name="run", **TRAIN_ARGS)
        weights = project / "run" / "weights"
        interrupted = torch.load(weights / "last.pt", weights_only=False)
        assert interrupted["epoch"] == 0 and interrupted["optimizer"] is not None
        assert main(["train", f"model={weights / 'last.pt'}", "resume=True", "act=prelu", *CLI_ARGS]) == 0
    return {"data": data, "root": root, "weights": weights, "interrupted": interrupted}


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.float().eval()(x)[0]


def test_training_is_finite_and_trains_our_activations(run):
    with open(run["weights"].parent / "results.csv") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    assert [int(r["epoch"]) for r in rows] == [1, 2], "epoch 2 comes from the resumed run"
    losses = torch.tensor([float(v) for r in rows for k, v in r.items() if k.startswith("train/")])
    assert losses.numel() == 6 and torch.isfinite(losses).all()
    interrupted = run["interrupted"]["ema"]
    assert U.activation_sites(interrupted) == PRELU_SITES
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run["weights"] / name, weights_only=False)
        model = ckpt["ema"] or ckpt["model"]
        assert U.activation_sites(model) == PRELU_SITES
        prelu = [m.weight for m in model.modules() if type(m).__name__ == "PReLU"]
        assert len(prelu) == 77 and any((w.float() != 0.25).any() for w in prelu), "PReLU weights trained"


def test_checkpoints_reload(run):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    for name in ("last.pt", "best.pt"):
        model, _ = load_checkpoint(run["weights"] / name)
        assert U.activation_sites(model) == PRELU_SITES
        assert torch.isfinite(_outputs(model)).all()
    with _offline_pytorch_path():
        results = YOLO(run["weights"] / "best.pt").predict(run["data"].replace("data.yaml", "images/val"))
    assert len(results) == 4


def test_convert_loads_under_safe_load_with_same_outputs(run, tmp_path):
    from ultralytics.nn.tasks import load_checkpoint

    best, plain, back = run["weights"] / "best.pt", tmp_path / "plain.pt", tmp_path / "fused.pt"
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    assert main(["convert", str(best), str(plain)]) == 0
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest, "the input is never modified"
    want = _outputs(load_checkpoint(best)[0])
    script = textwrap.dedent(f"""
        import sys, torch
        from ultralytics.nn.tasks import load_checkpoint
        model, _ = load_checkpoint({str(plain)!r})
        x = torch.rand(1, 3, {IMGSZ}, {IMGSZ}, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.save(model.float().eval()(x)[0], {str(tmp_path / "out.pt")!r})
        print(sorted({{type(m).__module__ for m in model.modules()}}), "rtdetr_fused" in sys.modules)
    """)
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.nn.modules.activation" in proc.stdout and "rtdetr_fused" not in proc.stdout.split("]")[0]
    assert proc.stdout.strip().endswith("False"), "loaded without importing this package"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want)

    assert main(["convert", str(plain), str(back), "--to", "fused"]) == 0
    model, _ = load_checkpoint(back)
    assert U.activation_sites(model) == PRELU_SITES
    torch.testing.assert_close(_outputs(model), want)


def _fused_trainer(data: str, project, act: str = "prelu", **overrides):
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import callbacks

    cbs = callbacks.get_default_callbacks()
    cbs["on_pretrain_routine_end"].append(U.FusedActivations(act, targets="all"))
    args = dict(model="yolo11n.yaml", data=data, project=str(project), name="t", **overrides)
    return U.fused_trainer(DetectionTrainer)(overrides={**TRAIN_ARGS, **args}, _callbacks=cbs)


def test_pretrained_start_gets_activations_and_weights(run, tmp_path):
    from ultralytics.nn.tasks import load_checkpoint

    plain = tmp_path / "plain.pt"
    U.convert(run["weights"] / "best.pt", plain)
    weights, _ = load_checkpoint(plain)  # torch.nn.PReLU: a checkpoint trained elsewhere
    with _offline_pytorch_path():
        model = _fused_trainer(run["data"], tmp_path).get_model(cfg="yolo11n.yaml", weights=weights, verbose=False)
    assert U.activation_sites(model) == PRELU_SITES
    got, want = model.state_dict(), weights.state_dict()
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want if k.endswith("act.weight"))


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def test_ddp_worker_rebuilds_the_fused_trainer(run, tmp_path):
    """What Ultralytics' DDP launch (utils/dist.py generate_ddp_file) pickles and each worker runs, up to the
    model build: the trainer class by name, its arguments and callbacks, and the model (a YAML path here)."""
    with _offline_pytorch_path():
        trainer = _fused_trainer(run["data"], tmp_path, act="mish")
    # Ultralytics pickles with cloudpickle (not installed here), which also takes the lambdas some of its own
    # integration callbacks are; ours pickle by reference with plain pickle, so those are left out.
    callbacks = {event: [cb for cb in cbs if _picklable(cb)] for event, cbs in trainer.callbacks.items()}
    state = {"trainer": type(trainer), "args": vars(trainer.args), "model": trainer.model, "callbacks": callbacks}
    torch.save(state, tmp_path / "ddp.pt")
    worker = textwrap.dedent(f"""
        import json
        from ultralytics.utils import DEFAULT_CFG_DICT
        from ultralytics.utils.patches import torch_load
        from rtdetr_fused.integrations.ultralytics import activation_sites

        state = torch_load({str(tmp_path / "ddp.pt")!r}, map_location="cpu")
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")
        trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
        trainer.model = state["model"]
        trainer.setup_model()
        print(json.dumps([type(trainer).__qualname__, activation_sites(trainer.model)]))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", worker], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, sites = json.loads(proc.stdout.strip().splitlines()[-1])
    assert name == "FusedDetectionTrainer" and sites == {"rtdetr_fused.Mish": 77}


def test_convert_rejects_what_is_not_an_ultralytics_checkpoint(tmp_path, capsys):
    state_dict, garbage, out = tmp_path / "sd.pt", tmp_path / "garbage.pt", tmp_path / "out.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, state_dict)
    garbage.write_bytes(b"not a checkpoint")
    for src in (state_dict, garbage):
        before = src.read_bytes()
        with pytest.raises(SystemExit) as exc:
            main(["convert", str(src), str(out)])
        assert exc.value.code == 2
        assert "is not an Ultralytics checkpoint" in capsys.readouterr().err
        assert src.read_bytes() == before and not out.exists() and not list(tmp_path.glob(".out.pt*"))
    with pytest.raises(SystemExit):
        main(["convert", str(state_dict), str(state_dict)])
    assert "never modifies its input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "missing.pt"), str(out)])
    assert "not found" in capsys.readouterr().err


def test_fuse_bn_recompute_through_the_cli_into_dot_runs(run, tmp_path):
    """One epoch from the command, run as a user runs it in a folder of their own, with fuse_bn=recompute: the
    run lands in ./runs/detect/train (not in the checkout Ultralytics' settings point to) and logs the swap
    line; the trainer's EMA copy, checkpoint and validation (under no_grad) take the fused forwards; the losses
    are finite."""
    from test_cli import cli

    from rtdetr_fused.integrations.fuse_bn import FusedConvForward

    checkout_runs = Path(U.__file__).parents[3] / "runs"
    before = sorted(checkout_runs.rglob("*")) if checkout_runs.exists() else None
    no_font = "import ultralytics.data.utils as u\nu.check_font = lambda *args, **kwargs: None  # no download"
    args = ["train", "model=yolo11n.yaml", f"data={run['data']}", "epochs=1", "fuse_bn=recompute", *CLI_ARGS]
    proc = cli(tmp_path / "elsewhere", *args, prelude=no_font, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = "rtdetr-fused: act=silu targets=SiLU: swapped 77 sites (77 nn.SiLU -> rtdetr_fused.SiLU); fuse_bn=recompute"
    assert line in proc.stdout + proc.stderr
    assert (sorted(checkout_runs.rglob("*")) if checkout_runs.exists() else None) == before, "nothing in the checkout"
    save_dir = tmp_path / "elsewhere" / "runs" / "detect" / "train"
    with open(save_dir / "results.csv") as f:
        row = {k.strip(): v for k, v in next(csv.DictReader(f)).items()}
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in row.items() if k.startswith("train/"))
    ckpt = torch.load(save_dir / "weights" / "last.pt", weights_only=False)
    model = ckpt["ema"] or ckpt["model"]  # the last epoch's checkpoint keeps the EMA as its model
    forwards = [vars(m)["forward"] for m in model.modules() if isinstance(vars(m).get("forward"), FusedConvForward)]
    assert len(forwards) > 80 and all(f.recompute for f in forwards)
