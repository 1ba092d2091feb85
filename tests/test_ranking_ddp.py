"""VM-NET's ranking loss over the global batch: 2 processes train exactly as one.

Each process holds half of a batch of pairs produced by a shared linear encoder. With the
ranking loss computed on local anchors against the gathered global batch, the mean of the
ranks' losses must equal the one-process loss on the concatenated batch, and the encoder
gradients averaged the way DDP averages them must equal the one-process gradients.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses.ranking import global_inter_modal_ranking_loss, inter_modal_ranking_loss

N, D_IN, D = 12, 10, 6
Q, MARGIN = 5, 0.4


def _data():
    g = torch.Generator().manual_seed(0)
    return {
        "x_music": torch.randn(N, D_IN, generator=g), "x_video": torch.randn(N, D_IN, generator=g),
        "w_music": torch.randn(D_IN, D, generator=g), "w_video": torch.randn(D_IN, D, generator=g),
    }


def _loss_and_grads(data, rows, loss_fn):
    w_m = data["w_music"].clone().requires_grad_(True)
    w_v = data["w_video"].clone().requires_grad_(True)
    music = F.normalize(data["x_music"][rows] @ w_m, dim=1)
    video = F.normalize(data["x_video"][rows] @ w_v, dim=1)
    l_mv, l_vm = loss_fn(music, video, Q, MARGIN)
    total = 3 * l_mv + l_vm
    total.backward()
    return total.detach(), w_m.grad, w_v.grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = slice(rank * N // world, (rank + 1) * N // world)
        loss, g_m, g_v = _loss_and_grads(data, rows, global_inter_modal_ranking_loss)
        for g in (g_m, g_v):  # what DDP does to parameter gradients
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g /= world
        out[rank] = (loss, g_m, g_v)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_concatenated_batch():
    data = _data()
    want_loss, want_m, want_v = _loss_and_grads(data, slice(0, N), inter_modal_ranking_loss)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), data, out), nprocs=2, join=True)
        got = dict(out)
    torch.testing.assert_close((got[0][0] + got[1][0]) / 2, want_loss, atol=1e-6, rtol=1e-5)
    for rank in (0, 1):
        torch.testing.assert_close(got[rank][1], want_m, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[rank][2], want_v, atol=1e-6, rtol=1e-5)


def test_one_process_is_the_plain_loss():
    g = torch.Generator().manual_seed(1)
    m = F.normalize(torch.randn(9, 4, generator=g), dim=1)
    v = F.normalize(torch.randn(9, 4, generator=g), dim=1)
    for a, b in zip(global_inter_modal_ranking_loss(m, v, 4, 0.2),
                    inter_modal_ranking_loss(m, v, 4, 0.2)):
        torch.testing.assert_close(a, b)
