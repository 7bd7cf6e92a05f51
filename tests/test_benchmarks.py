"""The benchmark harness on the CPU: byte accounting, saved-tensor accounting, the files a
``--quick`` run writes, failures reported instead of fatal, and clear errors for bad options."""

import csv
import json
import os

import pytest
import torch
from torch import nn

from benchmarks import cli, models
from benchmarks.core import UNITS, Unavailable
from benchmarks.measure import SavedTensors
from benchmarks.memory import BLOCK_PROVIDERS, interior_block
from benchmarks.providers import ACTIVATION_TABLE, PROVIDERS, moved_bytes
from rtdetr_fused import ACTIVATIONS


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    """The harness's CPU figures are our PyTorch path, not Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def run(tmp_path, *args: str, device: str = "cpu") -> dict:
    assert cli.main(["--device", device, "--out", str(tmp_path), *args]) == 0
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize(
    ("pass_name", "tensors", "param_touches"), [("forward", 2, 1), ("backward", 3, 2), ("forward+backward", 5, 3)]
)
def test_moved_bytes(pass_name, tensors, param_touches):
    assert moved_bytes(pass_name, 1000, 2) == tensors * 1000 * 2
    assert moved_bytes(pass_name, 1000, 4, param_bytes=64) == tensors * 4000 + param_touches * 64


def saved_by(module: nn.Module, x: torch.Tensor, exclude=()) -> tuple[SavedTensors, torch.Tensor]:
    with SavedTensors(exclude=[*module.parameters(), *exclude]) as saved:
        y = module(x)
    return saved, y


SAVES_OUTPUT = {"eager": {"relu"}, "rtdetr_fused": {"relu", "relu6", "leaky_relu"}}


@pytest.mark.parametrize("name", list(ACTIVATION_TABLE))
@pytest.mark.parametrize("provider", list(SAVES_OUTPUT))
def test_saved_bytes_per_activation(name, provider):
    """One input-sized tensor each (parameters excluded): the output where the derivative
    can be read off it, else the input."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    saved, y = saved_by(PROVIDERS[provider].build(ACTIVATION_TABLE[name], 4), x)
    assert saved.nbytes == x.numel() * x.element_size(), saved.storages
    assert saved.which(input=x, output=y) == ("output" if name in SAVES_OUTPUT[provider] else "input")


def test_interior_block_shares_the_output_with_the_next_conv():
    """Ours saves ReLU6's output, which the next conv saves anyway: one feature map less."""
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    feature = 2 * 8 * 6 * 6 * 4
    kept = {}
    for provider in ("eager", "rtdetr_fused"):
        block = interior_block(BLOCK_PROVIDERS[provider](ACTIVATION_TABLE["relu6"], 8), 8)
        saved, _ = saved_by(block, x, exclude=[*block.buffers(), x])
        kept[provider] = saved.nbytes / feature
    assert kept["eager"] == pytest.approx(3, abs=0.1)  # BN also saves per-channel statistics
    assert kept["rtdetr_fused"] == pytest.approx(2, abs=0.1)


def test_quick_cpu_run_writes_every_output(tmp_path):
    data = run(tmp_path, "--quick", "--activations", "silu,prelu")
    meta = data["meta"]
    assert meta["device_label"] == "CPU"
    for key in ("created", "git_commit", "git_dirty", "plan", "roofline", "wall_s", "command"):
        assert key in meta
    assert {"torch", "triton", "rtdetr_fused", "ultralytics"} <= set(meta["versions"])
    assert meta["roofline"] is None  # GPU only: on the CPU a memory copy is no ceiling for cached tensors
    assert "PReLU" in " ".join(data["notes"]) and "wrong" in " ".join(data["notes"])

    sections = data["sections"]
    assert set(sections) == {"host", "micro", "memory", "scaling", "blocks", "bn_act", "model", "training"}
    assert sections["training"]["status"] == "skipped" and "GPU" in sections["training"]["reason"]
    numeric = set()
    for name, section in sections.items():
        if name != "training":
            assert section["status"] == "ok" and section["rows"], name
        for row in section["rows"]:
            assert list(row) == section["fields"]
            assert row["device"] == "CPU"
            numeric |= {k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric <= set(data["units"]), numeric - set(data["units"])
    assert set(UNITS) == set(data["units"])
    model = {(r["activation"], r["provider"]): r["saved_bytes"] for r in sections["model"]["rows"]}
    for act in ("silu", "prelu"):  # fusing BatchNorm into the activation saves less than either alone
        assert (
            model[act, models.RECOMPUTE]
            < model[act, models.FUSE_BN]
            < model[act, "rtdetr_fused"]
            == model[act, "eager"]
        )
    micro = [r for r in sections["micro"]["rows"] if r["status"] == "ok"]
    assert {r["provider"] for r in micro} == {"rtdetr_fused", "eager", "formula"}
    for r in micro:  # float32, one PReLU weight per channel
        weight_bytes = 4 * int(r["shape"].split("x")[1]) if r["activation"] == "prelu" else 0
        assert r["moved_bytes"] == moved_bytes(r["pass"], r["numel"], 4, weight_bytes)
        assert r["time_ms"] > 0 and r["bandwidth_GBps"] > 0 and r["speedup_x"] > 0
        assert r["roofline_pct"] is None

    bn_act = sections["bn_act"]["rows"]  # fused BN+act against BatchNorm2d then the activation
    assert {(r["activation"], r["provider"]) for r in bn_act} == {
        (a, p) for a in ("silu", "prelu") for p in ("rtdetr_fused", "eager")
    }
    for r in bn_act:  # float32 maps: forward 3 maps, backward 5
        assert (
            r["status"] == "ok"
            and r["moved_bytes"] == {"forward": 3, "backward": 5, "forward+backward": 8}[r["pass"]] * 4 * r["numel"]
        )
        assert r["speedup_x"] > 0 and (r["provider"] != "rtdetr_fused" or r["speedup_x"] == 1)

    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(s["rows"]) for s in sections.values())
    assert {"section", "time_ms", "saved_bytes", "step_ms"} <= set(rows[0])

    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# rtdetr-fused benchmark: CPU")
    assert "GPU timings need a GPU" in summary
    for plot in ("speedup.png", "memory.png", "scaling.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plot in summary
    assert not (tmp_path / "roofline.png").exists()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton imported under the interpreter")
def test_host_section_fails_soft_without_compiled_kernels(tmp_path):
    """This process imported triton under its interpreter (conftest.py), where launches cannot
    be stubbed: every row that launches a kernel is an error (ReLU's on a small map with the
    policy on runs PyTorch's op) and the other sections run (tests/test_host.py runs the section
    as ``make bench`` does)."""
    data = run(tmp_path, "--quick", "--sections", "host,blocks", "--activations", "relu")
    rows = data["sections"]["host"]["rows"]
    assert data["sections"]["host"]["status"] == "ok" and len(rows) == 9
    failed = [r for r in rows if r["status"] == "error" and r["error"] and r["ours_us"] is None]
    assert [(r["kind"], r["policy"]) for r in rows if r not in failed] in ([], [("activation", "on")])
    assert {r["status"] for r in data["sections"]["blocks"]["rows"]} == {"ok"}


def test_failing_provider_is_reported_not_fatal(tmp_path, monkeypatch):
    def no_compile(*args, **kwargs):
        raise RuntimeError("torch.compile unavailable here")

    monkeypatch.setattr(torch, "compile", no_compile)
    data = run(
        tmp_path, "--quick", "--sections", "micro", "--activations", "silu", "--providers", "rtdetr_fused,compile"
    )
    rows = data["sections"]["micro"]["rows"]
    assert {r["status"] for r in rows if r["provider"] == "rtdetr_fused"} == {"ok"}
    failed = [r for r in rows if r["provider"] == "compile"]
    assert failed and all(r["status"] == "error" and "torch.compile unavailable" in r["error"] for r in failed)
    assert all(r["time_ms"] is None for r in failed)
    assert "torch.compile unavailable" in (tmp_path / "summary.md").read_text()


def test_missing_integration_skips_model_rows(tmp_path, monkeypatch):
    def missing():
        raise Unavailable("rtdetr_fused.integrations.ultralytics.replace_activations not importable (test)")

    monkeypatch.setattr(models, "replacer", missing)
    data = run(tmp_path, "--quick", "--sections", "model", "--activations", "relu6")
    rows = {r["provider"]: r for r in data["sections"]["model"]["rows"]}
    assert rows["stock"]["status"] == "ok" and rows["stock"]["saved_bytes"] > 0
    for provider in ("rtdetr_fused", models.FUSE_BN, models.RECOMPUTE, "eager"):
        assert rows[provider]["status"] == "skipped" and "not importable" in rows[provider]["error"]


def test_broken_section_is_reported(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("section exploded")

    monkeypatch.setitem(cli.RUNNERS, "host", broken)
    data = run(tmp_path, "--quick", "--sections", "host,blocks", "--activations", "relu")
    assert data["sections"]["host"]["status"] == "failed"
    assert "section exploded" in data["sections"]["host"]["reason"]
    assert data["sections"]["blocks"]["status"] == "ok"


def test_time_budget_skips_the_rest(tmp_path):
    data = run(tmp_path, "--quick", "--sections", "micro,scaling", "--activations", "relu", "--time-budget", "1e-9")
    rows = data["sections"]["micro"]["rows"] + data["sections"]["scaling"]["rows"]
    assert rows and all(r["status"] == "skipped" and "--time-budget" in r["error"] for r in rows)


def test_training_step_runs_on_the_cpu_when_asked(tmp_path):
    data = run(
        tmp_path,
        *("--sections", "training", "--models", "yolo11n", "--train-activations", "relu"),
        *("--imgsz", "64", "--train-batch", "2", "--train-warmup", "1", "--steps", "1"),
    )
    rows = {r["variant"]: r for r in data["sections"]["training"]["rows"]}
    for variant in ("stock", "rtdetr_fused:relu", "eager:relu"):
        assert rows[variant]["status"] == "ok" and rows[variant]["step_ms"] > 0, rows[variant]
    assert rows["eager:relu"]["speedup_x"] > 0
    assert rows["compile"]["status"] == "skipped"


def test_to_torch_nn_twin_has_torch_classes():
    model = nn.Sequential(ACTIVATIONS["silu"](), nn.Sequential(ACTIVATIONS["prelu"](3)))
    models.to_torch_nn(model)
    assert [type(m) for m in model.modules()][1:] == [nn.SiLU, nn.Sequential, nn.PReLU]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--activations", "elu"], "unknown value 'elu'"),
        (["--dtypes", "int8"], "unknown value 'int8'"),
        (["--providers", "tensorrt"], "unknown value 'tensorrt'"),
        (["--sections", "everything"], "unknown value 'everything'"),
        (["--shapes", "16x256"], "bad shape '16x256'"),
        (["--imgsz", "100"], "multiple of 32"),
        (["--time-budget", "-5"], "must be positive"),
        (["--activations", ""], "at least one value"),
        (["--rep-ms", "abc"], "invalid float value"),
        (["--timer", "cudagraph"], "needs a GPU"),
    ],
)
def test_bad_options_give_a_clear_error(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--device", "cpu", "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_smoke(tmp_path):
    """The GPU path end to end on a small grid: do_bench timings, a roofline, peaks."""
    data = run(
        tmp_path,
        *("--quick", "--activations", "silu,prelu", "--sections", "micro,blocks,host", "--dtypes", "bf16"),
        *("--shapes", "16x64x20x20,flat:16", "--providers", "rtdetr_fused,eager"),
        device="cuda",
    )
    assert data["meta"]["roofline"]["copy_GBps"] > 100
    micro = data["sections"]["micro"]["rows"]
    assert micro and all(r["status"] == "ok" and 0 < r["roofline_pct"] for r in micro)
    memory = data["sections"]["memory"]["rows"]
    assert all(r["peak_bytes"] > 0 for r in memory)
    assert {r["status"] for r in data["sections"]["blocks"]["rows"]} == {"ok"}
    host = data["sections"]["host"]["rows"]  # real launches, counted by torch.profiler
    assert host and all(r["status"] == "ok" and r["launches_by"] == "torch.profiler" for r in host)
    assert all(r["ours_launches"] >= 2 and r["torch_launches"] > 0 for r in host if r["policy"] == "off")
    assert data["meta"]["host"]["launches"] == "real"
    assert (tmp_path / "roofline.png").exists()


def test_report_wording_on_the_cpu(capsys):
    """What a CPU run's log says: tables at full width (no terminal), no peak promised where none was
    measured, and the size sweep's largest losing size named as such."""
    from benchmarks import report
    from benchmarks.core import Results

    results = Results({"device_label": "CPU", "plan": {"activations": ["mish", "relu"]}})
    for act, size, speedup in (("mish", 4, 1.03), ("mish", 16, 0.97), ("relu", 1, 0.9), ("relu", 4, 1.1)):
        results.add("scaling", activation=act, provider="eager", dtype="float32", size_bytes=size * 2**20,
                    speedup_x=speedup)  # fmt: skip
    for provider in ("rtdetr_fused", "eager"):
        results.add("memory", activation="relu", provider=provider, dtype="float32", shape="1x64x80x80",
                    layout="nchw", saved_x_input=1.0, saves="output")  # fmt: skip
    results.add("training", model="yolo11n", precision="fp32", batch=2, variant="stock", provider="stock", step_ms=9.0)
    found = report.findings(results)
    assert any("the largest size where ours is slower than eager: mish 16 MiB, relu 1 MiB." in f for f in found)
    assert not any("up to mish" in f for f in found)
    tables = {t.title.split(": ")[1].split(",")[0]: t for t in report.tables(results)}
    memory = tables["bytes saved for backward"]
    assert "peak" not in memory.title + " ".join(memory.headers)
    training = tables["training step (median)"]
    assert "peak" not in training.headers and len(training.rows[0]) == len(training.headers)

    console = report.stdout_console()  # pytest captures stdout: no terminal, as in a log
    assert not console.is_terminal and console.width == report.LOG_WIDTH
    report.print_tables(results, console)
    assert max(map(len, capsys.readouterr().out.splitlines())) > 80, "nothing cut at 80 columns"
