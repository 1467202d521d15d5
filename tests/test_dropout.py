"""mha's dropout: the rate, the scale, independence between elements, gradients, seeding."""

import pytest
import torch

from mha.model.dropout import LEVELS, Dropout, dropout

P = 0.1
SCALE = LEVELS / (LEVELS - round(P * LEVELS))


def test_drops_at_rate_p_and_scales_the_rest():
    x = torch.rand(1_000_003) + 0.5  # not a multiple of 4; no zeros of its own
    y = dropout(x, P)
    dropped = y.eq(0)
    assert abs(dropped.float().mean().item() - P) < 0.002  # 6 standard deviations
    torch.testing.assert_close(y[~dropped], x[~dropped] * SCALE)
    assert abs(dropout(torch.ones(1_000_000), P).mean().item() - 1) < 0.005


def test_neighbouring_elements_drop_independently():
    # the four 16-bit halves of one 64-bit draw must not move together
    dropped = dropout(torch.ones(4_000_000), P).eq(0).view(-1, 4).float()
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (dropped[:, a] * dropped[:, b]).mean().item()
        assert abs(both - P * P) < 0.001


def test_gradient_is_the_mask_times_the_scale():
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, P)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.ne(0).float() * SCALE)


def test_the_seed_decides_the_mask():
    x = torch.ones(1000)
    torch.manual_seed(3)
    first = dropout(x, P)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, P), first)
    assert not torch.equal(dropout(x, P), first)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_evaluation_and_p_zero_leave_the_input(p):
    x = torch.randn(10, 7)
    module = Dropout(p).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x


@pytest.mark.parametrize("p", [1.0, 0.999999])  # 0.999999 rounds to 2^16 / 2^16
def test_p_one_drops_everything(p):
    assert dropout(torch.ones(9), p).eq(0).all()
