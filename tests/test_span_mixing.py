"""Span mixing as pure functions (models.span_mixing), each against a loop or hand reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.saliency import gradient_saliency, normalise_mass
from models.span_mixing import (
    MixPlan,
    content_stats,
    length_share,
    mixed_positions,
    mixing_targets,
    music_to_video_targets,
    random_cycle,
    saliency_mix_plan,
    saliency_share,
    source_positions,
    span_mix,
    window_means,
    window_start,
)


def plan(partner, start, length, source=None) -> MixPlan:
    t = [torch.tensor(x, dtype=torch.long) for x in (partner, start, length)]
    return MixPlan(*t, None if source is None else torch.tensor(source, dtype=torch.long))


def lengths_mask(lengths, t) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


# ----- window choice ------------------------------------------------------------------------


def loop_window(sal, valid, length, highest):
    """Brute force: every start whose window lies on valid frames; the earliest of the best
    (equal up to 1e-6 relative: float rounding of window sums)."""
    means = {s: sum(sal[s:s + length]) / length for s in range(len(sal) - length + 1)
             if length >= 1 and all(valid[s:s + length])}
    if not means:
        return 0
    best = max(means.values()) if highest else min(means.values())
    return min(s for s, m in means.items() if abs(m - best) <= 1e-6 * (1 + abs(best)))


def test_window_choice_on_hand_made_saliency():
    sal = torch.tensor([[0.1, 0.9, 0.8, 0.0, 0.2, 0.0],   # best pair at 1, worst at 3 (0.1)
                        [0.5, 0.5, 0.5, 0.5, 9.0, 9.0],   # frames 4, 5 are padding
                        [0.3, 0.3, 0.1, 0.1, 0.3, 0.3]])  # ties: earliest start wins
    mask = lengths_mask([6, 4, 6], 6)
    length = torch.tensor([2, 2, 2])
    assert window_start(sal, mask, length, highest=True).tolist() == [1, 0, 0]
    assert window_start(sal, mask, length, highest=False).tolist() == [3, 0, 2]
    means = window_means(sal, mask, length)
    torch.testing.assert_close(means[0, :5], torch.tensor([0.5, 0.85, 0.4, 0.1, 0.1]))
    assert means[0, 5].isnan() and means[1, 3:].isnan().all()


def test_window_choice_matches_a_loop_reference_on_random_saliency():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        b, t = 7, 9
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        mask = torch.arange(t)[None, :] < lengths[:, None]
        mask[0, 3] = False  # a hole: no window may cover it
        sal = torch.rand(b, t, generator=g).round(decimals=1)  # many ties
        length = torch.randint(0, 5, (b,), generator=g)
        for highest in (True, False):
            got = window_start(sal, mask, length, highest).tolist()
            want = [loop_window(sal[i].tolist(), mask[i].tolist(), int(length[i]), highest)
                    for i in range(b)]
            assert got == want


def test_saliency_plan_pastes_bs_best_window_over_as_worst():
    sal = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0],
                        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = lengths_mask([10, 10, 3], 10)
    partner = torch.tensor([1, 2, 0])
    p = saliency_mix_plan(sal, mask, window_frac=0.2, prob=1.0, partner=partner)
    # windows: round(0.2 * 10) = 2 for rows 0 and 1; row 2 (3 frames): round(0.6) = 1
    assert p.length.tolist() == [2, 2, 1]
    assert p.start.tolist() == [0, 0, 0]          # A's least salient (ties: earliest)
    assert p.source_start.tolist() == [6, 0, 2]   # B's most salient windows
    single = saliency_mix_plan(sal[:1], mask[:1], 0.2)
    assert single.length.tolist() == [0]          # nobody to mix with
    one_frame = saliency_mix_plan(sal, lengths_mask([10, 1, 10], 10), 0.2, partner=partner)
    assert one_frame.length[1] == 0               # T_A = 1: nothing of A would survive


def test_random_cycle_is_a_single_cycle():
    g = torch.Generator().manual_seed(3)
    for b in (2, 5, 32):
        p = random_cycle(b, g)
        assert sorted(p.tolist()) == list(range(b))
        seen, i = set(), 0
        while i not in seen:
            seen.add(i)
            i = int(p[i])
        assert len(seen) == b
    assert random_cycle(1).tolist() == [0]


# ----- applying a plan ------------------------------------------------------------------------


def loop_mix(video, mask, p):
    out, rep = video.clone(), torch.zeros_like(mask)
    src = p.start if p.source_start is None else p.source_start
    t_count = video.shape[1]
    for i in range(video.shape[0]):
        j = int(p.partner[i])
        for k in range(int(p.length[i])):
            t, u = int(p.start[i]) + k, int(src[i]) + k
            if t < t_count and u < t_count and mask[j, u]:
                out[i, t], rep[i, t] = video[j, u], True
    return out, rep


def test_unaligned_windows_match_a_loop_reference():
    g = torch.Generator().manual_seed(1)
    mask = lengths_mask([6, 3, 6, 1, 5], 6)
    video = torch.randn(5, 6, 4, generator=g)
    p = plan([1, 2, 0, 4, 3], [4, 0, 1, 0, 0], [2, 3, 3, 1, 4], [0, 1, 3, 2, 0])
    mixed, mixed_mask = span_mix(video, mask, *p)
    want, rep = loop_mix(video, mask, p)
    torch.testing.assert_close(mixed, want, rtol=0, atol=0)
    assert torch.equal(mixed_positions(mask, *p), rep)
    assert torch.equal(mixed_mask, mask | rep)
    # B's frames that went into A: row 0 takes B frames 0, 1; row 1 takes B frames 1..3 of a
    # 6-frame B; row 4 takes the single frame of B = row 3
    pasted = source_positions(mask, *p)
    assert pasted[0].nonzero().flatten().tolist() == [0, 1]
    assert pasted[1].nonzero().flatten().tolist() == [1, 2, 3]
    assert pasted[4].nonzero().flatten().tolist() == [0]
    assert int(pasted.sum()) == int(rep.sum())


# ----- label weights and targets ------------------------------------------------------------


def test_length_share_is_window_over_length():
    mask = lengths_mask([10, 4, 5], 10)
    p = plan([1, 2, 0], [3, 1, 0], [1, 2, 0], [0, 2, 0])
    rep = mixed_positions(mask, *p)
    torch.testing.assert_close(length_share(rep, mask), torch.tensor([0.1, 0.5, 0.0]))


def test_saliency_share_is_bs_part_of_the_clean_mass():
    sal = torch.tensor([[1.0, 1.0, 2.0, 0.0],
                        [0.0, 3.0, 1.0, 0.0],
                        [4.0, 4.0, 4.0, 4.0]])
    mask = lengths_mask([4, 3, 2], 4)
    p = plan([1, 0, 0], [3, 0, 0], [1, 1, 0], [1, 2, 0])
    w = saliency_share(sal, mask, *p)
    # row 0: A's mass [.25, .25, .5, 0], window at 3 (mass 0) replaced by B's frame 1 (3/4):
    # w = .75 / (.75 + 1.0); row 1: A = [0, .75, .25], frame 0 (mass 0) <- A0's frame 2 (.5)
    mass = normalise_mass(sal, mask)
    torch.testing.assert_close(mass[0], torch.tensor([0.25, 0.25, 0.5, 0.0]))
    torch.testing.assert_close(w, torch.tensor([0.75 / 1.75, 0.5 / 1.5, 0.0]))


def test_targets_in_both_directions_by_hand():
    share = torch.tensor([0.25, 0.5, 0.0, 0.1])
    partner = torch.tensor([1, 2, 0, 0])
    v2m = mixing_targets(share, partner, offset=2, n_global=7)
    want = torch.zeros(4, 7)
    want[0, 2], want[0, 3] = 0.75, 0.25
    want[1, 3], want[1, 4] = 0.5, 0.5
    want[2, 4] = 1.0
    want[3, 5], want[3, 2] = 0.9, 0.1
    torch.testing.assert_close(v2m, want)
    m2v = music_to_video_targets(v2m, offset=2)
    # song 0 is in video 0 (.75) and video 3 (.1); song 1 in videos 0 (.25) and 1 (.5); song 2
    # in videos 1 (.5) and 2 (1.0); song 3 only in video 3 (.9)
    want_m = torch.zeros(4, 7)
    want_m[0, 2], want_m[0, 5] = 0.75 / 0.85, 0.1 / 0.85
    want_m[1, 2], want_m[1, 3] = 0.25 / 0.75, 0.5 / 0.75
    want_m[2, 3], want_m[2, 4] = 0.5 / 1.5, 1.0 / 1.5
    want_m[3, 5] = 1.0
    torch.testing.assert_close(m2v, want_m)
    # a song no video holds keeps its own video
    alone = music_to_video_targets(mixing_targets(torch.tensor([1.0, 0.0]),
                                                  torch.tensor([1, 1])))
    torch.testing.assert_close(alone, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


# ----- saliency from gradients ----------------------------------------------------------------


def test_gradient_saliency_is_the_rms_of_the_input_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g).requires_grad_()
    w = torch.randn(4, generator=g, requires_grad=True)
    mask = lengths_mask([3, 2], 3)
    loss = ((x * w).sum(-1) ** 2).sum()
    sal = gradient_saliency(loss, x, mask)
    # d/dx (x.w)^2 = 2 (x.w) w, RMS over dims = 2 |x.w| ||w|| / 2
    dot = (x * w).sum(-1).detach()
    want = 2 * dot.abs() * w.detach().pow(2).mean().sqrt() * mask
    torch.testing.assert_close(sal, want)
    assert w.grad is None  # no parameter gradient was accumulated
    loss.backward()  # the graph is kept for training
    assert w.grad is not None


# ----- measuring ------------------------------------------------------------------------------


def test_content_stats_on_planted_salient_frames():
    mask = lengths_mask([6, 6, 6], 6)
    salient = torch.tensor([[0, 0, 1, 1, 0, 0],
                            [1, 1, 0, 0, 0, 0],
                            [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    # row 0 pastes B=1's frames 0,1 (salient) over its frames 2,3 (all of A's salient frames);
    # row 1 pastes B=2's frames 3,4 (none salient) over frames 4,5; row 2 pastes B=0's
    # frame 3 (salient) over frame 0
    p = plan([1, 2, 0], [2, 4, 0], [2, 2, 1], [0, 3, 3])
    b_content, a_survives = content_stats(salient, mask, p)
    assert b_content.tolist() == [True, False, True]
    assert a_survives.tolist() == [False, True, True]
    np.testing.assert_array_equal(
        content_stats(salient, mask, plan([1, 2, 0], [2, 4, 0], [0, 0, 0]))[0].numpy(),
        [False, False, False])


@pytest.mark.parametrize("frac", [0.1, 0.3])
def test_saliency_plans_on_random_batches_keep_windows_inside_valid_frames(frac):
    torch.manual_seed(0)
    lengths = torch.tensor([16, 9, 3, 2, 16, 12, 1, 16])
    mask = torch.arange(16)[None, :] < lengths[:, None]
    sal = torch.rand(8, 16) * mask
    p = saliency_mix_plan(sal, mask, frac)
    on = p.length > 0
    la, lb = lengths, lengths[p.partner]
    assert (p.start[on] + p.length[on] <= la[on]).all()
    assert (p.source_start[on] + p.length[on] <= lb[on]).all()
    assert (p.length[on] < la[on]).all() and not on[lengths < 2].any()
    mixed, mixed_mask = span_mix(torch.randn(8, 16, 2), mask, *p)
    assert torch.equal(mixed_mask, mask)
