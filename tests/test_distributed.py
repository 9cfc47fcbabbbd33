"""torchext.nn modules under DistributedDataParallel: 2 processes (gloo, this machine), each on half
of the batch, end at the parameters of single-process training on the whole batch.

DDP averages the gradients of the ranks. With a mean loss on each rank's half, the average of the
two halves' gradients is exactly the gradient of the mean loss on the whole batch, so plain SGD
on both sides follows the same trajectory up to summation order (float64: allclose, tight).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchext

WORLD = 2
STEPS = 30
LR = 3e-3  # larger steps diverge (x**3 reaches 31 on [-pi, pi])
N = 2000  # the tutorial's sin(x) data, split in two halves of 1000


class Model(torch.nn.Module):
    """Every torchext module: a cubic, the affine P3 model, and a ReLU'd P3 term."""

    def __init__(self):
        super().__init__()
        self.cubic = torchext.nn.Cubic(a=0.1, b=0.2, c=0.0, d=-0.05, dtype=torch.float64)
        self.affine = torchext.nn.AffineLegendreP3(dtype=torch.float64)
        self.p3 = torchext.nn.LegendreP3()
        self.relu = torchext.nn.ReLU()

    def forward(self, x):
        return self.cubic(x) + self.affine(x) + 0.01 * self.relu(self.p3(0.3 * x))


def _data():
    x, y = torchext.reference.sin_data(N, dtype=torch.float64)
    return x, y


def _train(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(Model())
        x, y = _data()
        half = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        _train(model, x[half], y[half])
        params = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    single = Model()
    x, y = _data()
    losses = _train(single, x, y)
    assert losses[-1] < losses[0] / 2, f"training made no progress: {losses[0]} -> {losses[-1]}"
    expected = single.state_dict()

    assert set(ranks[0]) == set(expected) == {f"{m}.{p}" for m in ("cubic", "affine")
                                              for p in "abcd"}
    for name, value in expected.items():
        # The ranks hold bitwise the same parameters (DDP broadcasts the same averaged gradient).
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        # And they are those of single-process training, up to summation order.
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-12, atol=1e-12, msg=name)
        # The parameters moved: the comparison is not of initial values.
        assert not torch.equal(value, Model().state_dict()[name]), name
