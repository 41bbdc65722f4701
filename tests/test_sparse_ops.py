"""The sparse path's building blocks on their own: the fused output layer + multinomial likelihood,
its reused logits buffer, and the first layer stored as W^T (recbole_beta.model.sparse)."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_beta.data.user_items import SparseBatch
from recbole_beta.model import sparse
from recbole_beta.model.sparse import TransposedLinear, Workspace, linear_multinomial_nll


def sparse_batch(rows, cols, values, n_rows, n_items):
    rows = torch.as_tensor(rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return SparseBatch(crow, rows, torch.as_tensor(cols), values, n_items)


def reference_nll(linear, h, batch):
    """nn.Linear, then -sum_i x_ui log_softmax(z_u)_i over the dense x: what the model's dense path computes."""
    dense = batch.dense()
    return -(F.log_softmax(linear(h), 1) * dense).sum(1)


def small_case(dtype=torch.float64, seed=0, bias=True, n_items=7):
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(4, n_items, bias=bias).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n_items, 4, generator=generator))
        if bias:
            linear.bias.copy_(torch.randn(n_items, generator=generator))
    h = torch.randn(5, 4, dtype=dtype, generator=generator, requires_grad=True)
    # row 2 has no entries (its term is 0); values other than 1 exercise sum_i x_ui
    values = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0], dtype=dtype)
    batch = sparse_batch([0, 0, 1, 3, 3, 3, 4], [1, 4, 0, 2, 5, 6, 3], values, 5, n_items)
    upstream = torch.randn(5, dtype=dtype, generator=generator)
    return linear, h, batch, upstream


def test_the_fused_layer_and_likelihood_by_hand():
    # logits (0, ln 2, ln 3) from the bias alone -> softmax (1/6, 2/6, 3/6); x = (2, 0, 1)
    linear = nn.Linear(2, 3).double()
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([0.0, math.log(2), math.log(3)], dtype=torch.float64))
    batch = sparse_batch([0, 0], [0, 2], torch.tensor([2.0, 1.0], dtype=torch.float64), 1, 3)
    nll = linear_multinomial_nll(linear, torch.ones(1, 2, dtype=torch.float64), batch, Workspace())
    assert nll.item() == pytest.approx(-(2 * math.log(1 / 6) + math.log(1 / 2)), rel=1e-12)


@pytest.mark.parametrize("block", [3, 11, 1024, None])  # several column blocks (the last one short), or one
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_fused_layer_and_likelihood_equal_linear_then_log_softmax_with_gradients(block, bias, dtype, tolerance):
    linear, h, batch, upstream = small_case(dtype, bias=bias, n_items=11)
    inputs = [h, *linear.parameters()]
    nll = linear_multinomial_nll(linear, h, batch, Workspace(), cpu_column_block=block)
    fused = torch.autograd.grad((nll * upstream).sum(), inputs)
    expected = reference_nll(linear, h, batch)
    reference = torch.autograd.grad((expected * upstream).sum(), inputs)
    assert torch.allclose(nll, expected, rtol=tolerance, atol=tolerance)
    for got, want in zip(fused, reference):
        assert torch.allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("block", [3, 1024])
@pytest.mark.parametrize("bias", [True, False])
def test_under_autocast_the_fused_layer_is_autocasts_linear_then_a_float32_likelihood(block, bias):
    """enable_amp: the products in bfloat16, as autocast runs nn.Linear's (forward and backward), the
    logits' softmax, the likelihood and the float32 parameters' gradients in float32."""
    linear, h, batch, upstream = small_case(torch.float32, bias=bias, n_items=11)
    h = h.detach().bfloat16().requires_grad_()  # the decoder's hidden layer under autocast gives bfloat16
    inputs = [h, *linear.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = linear_multinomial_nll(linear, h, batch, Workspace(), cpu_column_block=block)
        fused = torch.autograd.grad((nll * upstream).sum(), inputs)
        logits = linear(h)
        expected = -(F.log_softmax(logits.float(), 1) * batch.dense()).sum(1)
        reference = torch.autograd.grad((expected * upstream).sum(), inputs)
    assert logits.dtype == torch.bfloat16 and nll.dtype == torch.float32
    assert [g.dtype for g in fused] == [torch.bfloat16] + [torch.float32] * (len(inputs) - 1)
    # the same bfloat16 products, then float32 (autocast's logits are rounded to bfloat16: ours are not)
    assert torch.allclose(nll, expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(fused, reference):
        assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    # and not float32's products
    assert not torch.allclose(nll, reference_nll(linear, h.float(), batch), rtol=1e-6, atol=0)


def test_only_what_needs_a_gradient_gets_one():
    linear, h, batch, upstream = small_case()
    linear.weight.requires_grad_(False)  # a frozen weight, and an input without gradient
    h = h.detach()
    nll = linear_multinomial_nll(linear, h, batch, Workspace())
    (bias_grad,) = torch.autograd.grad((nll * upstream).sum(), [linear.bias])
    (want,) = torch.autograd.grad((reference_nll(linear, h, batch) * upstream).sum(), [linear.bias])
    assert torch.allclose(bias_grad, want, rtol=1e-12, atol=1e-12)
    assert linear.weight.grad is None


def test_a_second_derivative_is_refused_not_wrong():
    linear, h, batch, _ = small_case()
    (grad_h,) = torch.autograd.grad(linear_multinomial_nll(linear, h, batch, Workspace()).sum(), h, create_graph=True)
    # the backward is not itself differentiable (it works in place): no graph through it, so the
    # second derivative fails loudly instead of coming out without the softmax's own derivative
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        grad_h.sum().backward()


def test_a_probability_below_float32s_range_keeps_its_exact_log():
    # softmax((0, -300))_1 = e^-300 underflows to 0 in float32: its log is taken as z - max - log(sum)
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([0.0, -300.0]))
    batch = sparse_batch([0], [1], torch.ones(1), 1, 2)
    nll = linear_multinomial_nll(linear, torch.ones(1, 1), batch, Workspace())
    assert nll.item() == pytest.approx(300.0, rel=1e-7)
    assert torch.allclose(nll, reference_nll(linear, torch.ones(1, 1), batch))


def test_float32_agrees_with_float64():
    linear, h, batch, upstream = small_case(torch.float32, seed=3)
    nll = linear_multinomial_nll(linear, h, batch, Workspace())
    assert torch.allclose(nll.double(), reference_nll(linear.double(), h.detach().double(), batch._replace(
        values=batch.values.double())), rtol=1e-6, atol=1e-6)


def test_the_logits_buffer_is_reused_only_once_its_graph_is_done():
    linear, h, batch, upstream = small_case()
    workspace = Workspace()
    first = linear_multinomial_nll(linear, h, batch, workspace)
    buffer = workspace._buffer
    # a second forward while the first graph awaits its backward gets its own buffer
    second = linear_multinomial_nll(linear, h, batch, workspace)
    assert workspace._buffer is buffer
    grads_first = torch.autograd.grad((first * upstream).sum(), [h, linear.weight])
    grads_second = torch.autograd.grad((second * upstream).sum(), [h, linear.weight])
    expected = torch.autograd.grad((reference_nll(linear, h, batch) * upstream).sum(), [h, linear.weight])
    for got_first, got_second, want in zip(grads_first, grads_second, expected):
        assert torch.allclose(got_first, want, rtol=1e-12, atol=1e-12)
        assert torch.allclose(got_second, want, rtol=1e-12, atol=1e-12)

    # after the backward, the next forward writes into the same storage
    third = linear_multinomial_nll(linear, h, batch, workspace)
    assert workspace._buffer.data_ptr() == buffer.data_ptr()
    # a graph freed without a backward gives the buffer back too
    del third
    owner_free = linear_multinomial_nll(linear, h, batch, workspace)
    assert workspace._buffer.data_ptr() == buffer.data_ptr()
    del owner_free
    # without gradients nothing is saved: the buffer is given back at once, its result still alive
    with torch.no_grad():
        kept = linear_multinomial_nll(linear, h, batch, workspace)
    assert workspace._owner is None
    fourth = linear_multinomial_nll(linear, h, batch, workspace)
    assert torch.allclose(fourth, reference_nll(linear, h, batch), rtol=1e-12, atol=1e-12)
    assert torch.allclose(kept, fourth.detach(), rtol=1e-12, atol=1e-12)
    # a copy or a pickle (of the model holding it) starts empty, even while a graph holds the buffer
    for other in (copy.deepcopy(workspace), pickle.loads(pickle.dumps(workspace))):
        assert other._buffer is None and other._owner is None


def test_a_smaller_batch_uses_the_front_of_the_buffer():
    linear, h, batch, upstream = small_case()
    workspace = Workspace()
    linear_multinomial_nll(linear, h, batch, workspace).sum().backward()
    buffer = workspace._buffer
    last = sparse_batch([0, 1, 1], [3, 0, 6], torch.ones(3, dtype=torch.float64), 2, 7)
    nll = linear_multinomial_nll(linear, h[:2], last, workspace)
    assert workspace._buffer is buffer
    assert torch.allclose(nll, reference_nll(linear, h[:2], last), rtol=1e-12, atol=1e-12)


def test_the_fused_backward_runs_once():
    linear, h, batch, _ = small_case()
    nll = linear_multinomial_nll(linear, h, batch, Workspace()).sum()
    nll.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once per forward"):
        nll.backward()


def test_transposed_linear_is_the_same_layer_with_linears_state_dict():
    torch.manual_seed(0)
    linear = nn.Linear(9, 4)
    layer = TransposedLinear.from_linear(linear)
    assert layer.weight_t.shape == (9, 4) and layer.weight_t.is_contiguous()
    assert torch.equal(layer.weight, linear.weight)

    x = torch.randn(3, 9)
    assert torch.allclose(layer(x), linear(x))
    # the sparse form: rows given as CSR parts with weights
    x = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0] * 9, [1.0] + [0.0] * 7 + [3.0]])
    rows, cols = x.nonzero(as_tuple=True)
    offsets = torch.tensor([0, 2, 2])
    assert torch.allclose(layer.sparse(offsets, cols, x[rows, cols]), linear(x), atol=1e-6)

    # checkpoints hold nn.Linear's keys and shapes, in both directions
    state = layer.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in linear.state_dict().items()}
    assert torch.equal(state["weight"], linear.weight)
    other = nn.Linear(9, 4)
    other.load_state_dict(state)
    assert torch.equal(other.weight, linear.weight)
    with torch.no_grad():
        other.weight.mul_(2)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer.weight, other.weight) and layer.weight_t.is_contiguous()
    layer.load_state_dict(linear.state_dict(), assign=True)  # takes the tensors it is given
    assert torch.equal(layer.weight, linear.weight) and layer.weight_t.is_contiguous()


# frozen: h and the weight need no gradient, only the bias
@pytest.mark.parametrize("bias,frozen", [(True, False), (False, False), (True, True)])
def test_under_autocast_the_backward_in_column_blocks_is_the_one_product_backward(bias, frozen, monkeypatch):
    """On the CPU the low-precision backward runs its products block by block (each block's gradient
    narrowed while in cache): the same gradients as the backward of one product (``cpu_column_block``
    None), up to bfloat16 rounding, with the last block short, and h's gradient summed over blocks."""
    calls = []
    blocked = sparse._low_precision_backward_in_blocks
    monkeypatch.setattr(sparse, "_low_precision_backward_in_blocks", lambda *a: calls.append(1) or blocked(*a))
    generator = torch.Generator().manual_seed(3)
    n_rows, hidden, n_items = 16, 24, 2600
    linear = nn.Linear(hidden, n_items, bias=bias)
    linear.weight.requires_grad_(not frozen)
    rows = torch.arange(n_rows).repeat_interleave(40)
    cols = torch.randint(0, n_items, (len(rows),), generator=generator)
    values = torch.rand(len(rows), generator=generator) + 0.5  # counts other than 1
    batch = sparse_batch(rows, cols, values, n_rows, n_items)
    h0 = torch.randn(n_rows, hidden, generator=generator).bfloat16()
    upstream = torch.rand(n_rows, generator=generator)
    grads = {}
    for block in (None, 1024):
        h = h0.clone().requires_grad_(not frozen)
        inputs = [x for x in (h, *linear.parameters()) if x.requires_grad]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = linear_multinomial_nll(linear, h, batch, Workspace(), cpu_column_block=block)
            grads[block] = torch.autograd.grad((nll * upstream).sum(), inputs)
    assert calls == [1]  # the blocks ran for block 1024 alone
    dtypes = [torch.float32] if frozen else [torch.bfloat16] + [torch.float32] * (len(inputs) - 1)
    assert [g.dtype for g in grads[1024]] == dtypes
    for blocked_grad, whole in zip(grads[1024], grads[None]):
        scale = whole.float().abs().max()
        assert scale > 0 and (blocked_grad.float() - whole.float()).abs().max() <= 2e-2 * scale


def test_under_autocast_a_row_whose_values_sum_to_zero_takes_the_one_product_backward():
    """The blocks divide by each row's sum of values; a row of signed values summing to 0 has the
    gradient g_u (softmax(z_u) * 0 - x_u) = -g_u x_u, which the one-product backward gives: no NaN."""
    linear, h, batch, upstream = small_case(torch.float32, n_items=11)
    values = batch.values.clone()
    values[3:6] = torch.tensor([1.0, -2.0, 1.0])  # row 3 sums to 0
    batch = batch._replace(values=values)
    h = h.detach().bfloat16()
    grads = {}
    for block in (None, 4):
        x = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = linear_multinomial_nll(linear, x, batch, Workspace(), cpu_column_block=block)
            grads[block] = torch.autograd.grad((nll * upstream).sum(), [x, *linear.parameters()])
    for blocked_grad, whole in zip(grads[4], grads[None]):
        scale = whole.float().abs().max()
        assert torch.isfinite(blocked_grad).all() and (blocked_grad.float() - whole.float()).abs().max() <= 2e-2 * scale
