"""DistributedDataParallel on 2 CPU processes (gloo) trains a patched model: parameters, PReLU weights
included, stay identical across ranks. Run as a script, this file is one rank."""

import os
import subprocess
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no network checks

import torch  # noqa: E402

WORLD = 2
STEPS = 3


def _rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn
    from ultralytics.nn.modules import Conv, RepConv

    from rtdetr_fused.integrations.ultralytics import activation_sites, patch_ultralytics

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(rank)  # different initial weights: DDP must start every rank from rank 0's
    with patch_ultralytics("prelu"):
        net = nn.Sequential(Conv(3, 8, 3), RepConv(8, 8), Conv(8, 4, 1))
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    for step in range(STEPS):  # different data on every rank and step
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(100 * rank + step))
        opt.zero_grad()
        ddp(x).square().mean().backward()
        opt.step()
    torch.save({"sites": activation_sites(net), "params": dict(net.named_parameters())}, out)
    # A rank aborted once in CI at teardown ("terminate called without an active exception");
    # the barrier has both ranks tear down together (12 of 12 passed here under load after it).
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), str(tmp_path / "init"), str(outs[r])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    ranks = [torch.load(out) for out in outs]
    assert all(r["sites"] == {"rtdetr_fused.PReLU": 3} for r in ranks)
    params = [r["params"] for r in ranks]
    assert params[0].keys() == params[1].keys() and any(k.endswith("act.weight") for k in params[0])
    for name, p in params[0].items():
        assert torch.equal(p, params[1][name]), name
        if name.endswith("act.weight"):
            assert p.numel() > 1 and not torch.all(p == 0.25), f"{name}: PReLU weights trained"


if __name__ == "__main__":
    _rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
