"""The sparse input path's kernels: the first layer on sparse rows, the output layer fused with the likelihood.

:class:`TransposedLinear` is the encoder's first layer for sparse rows; :func:`linear_multinomial_nll`
the decoder's output layer and the reconstruction term in one, which writes no batch x items tensor
per step (:class:`Workspace`: the one buffer it reuses). Their batches are
:class:`~recbole_beta.data.user_items.SparseBatch` rows of the users' history; the path that composes
them into the model's is :mod:`recbole_beta.model.sparse_input`.
"""

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sparse_nll(log_probs, rows, values, n_rows):
    """-sum_i x_ui log p_ui of each row from the non-zeros' log-probabilities, and sum_i x_ui."""
    total = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    return torch.zeros_like(total).index_add_(0, rows, log_probs * values).neg_(), total


def _logits_grad_(probs, grad, total, rows, cols, values):
    """The logits' gradient g_u * (softmax(z_u) * sum_i x_ui - x_u), written over ``probs``."""
    probs.mul_((grad * total).unsqueeze(1))
    return probs.index_put_((rows, cols), -(grad[rows] * values), accumulate=True)


def _spend(ctx, name):
    """A backward that turns its forward's batch x items tensor into the gradient runs once."""
    if ctx.spent:
        raise RuntimeError(f"{name}'s backward runs once per forward (it reuses its buffer): no retain_graph")
    ctx.spent = True


class _MultinomialNLL(torch.autograd.Function):
    """-sum_i x_ui log softmax(z_u)_i for every row u, with x sparse.

    The forward writes one batch x items tensor, the log-probabilities, and reads only the
    non-zeros' entries of it; the backward turns that same tensor, in place, into the gradient
    g_u * (softmax(z_u) * sum_i x_ui - x_u). So it runs once per forward (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, logits, rows, cols, values):
        log_probs = torch.log_softmax(logits, dim=1)
        nll, total = _sparse_nll(log_probs[rows, cols], rows, values, logits.shape[0])
        ctx.save_for_backward(log_probs, rows, cols, values, total)
        ctx.spent = False
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        _spend(ctx, "multinomial_nll")
        log_probs, rows, cols, values, total = ctx.saved_tensors
        return _logits_grad_(log_probs.exp_(), grad, total, rows, cols, values), None, None, None


def multinomial_nll(logits, rows, cols, values):
    """Per-row multinomial negative log-likelihood of the sparse counts (rows, cols, values) under
    ``softmax(logits)``: what ``-(F.log_softmax(logits, 1) * x).sum(1)`` gives for the dense x.

    Computed in float32 at least, whatever autocast gives the logits (``enable_amp``), as autocast
    computes ``log_softmax`` in float32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _MultinomialNLL.apply(logits.to(dtype), rows, cols, values.to(dtype))


class Workspace:
    """One reusable batch x items buffer for :func:`linear_multinomial_nll` (and for the scores of
    full ranking, :func:`linear_into_workspace`).

    A fresh 165 MB tensor per training step (ML-20M's 2,048 x 20,108 logits) costs the CPU about
    40 ms of page faults, as much as the softmax over it; reusing one buffer avoids them. The
    buffer is lent to one graph at a time: until that graph's backward has run (or the graph is
    freed), a second forward gets a fresh tensor, so no saved values are overwritten.
    """

    def __init__(self):
        self._buffer, self._owner = None, None

    def _lent_to(self):
        """The graph's context the buffer is lent to, or None."""
        return None if self._owner is None else self._owner()

    def take(self, owner, n_rows, n_cols, dtype, device):
        """An n_rows x n_cols view of the buffer, lent to ``owner`` (a graph's context) until
        :meth:`give_back`; ``owner`` None: the caller keeps no graph, and the next ``take`` may
        overwrite what it wrote."""
        if self._lent_to() is not None:
            return torch.empty(n_rows, n_cols, dtype=dtype, device=device)
        size = n_rows * n_cols
        buffer = self._buffer
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != device:
            self._buffer = buffer = torch.empty(size, dtype=dtype, device=device)
        self._owner = None if owner is None else weakref.ref(owner)
        return buffer[:size].view(n_rows, n_cols)

    def give_back(self, owner):
        if self._lent_to() is owner:
            self._owner = None

    def clear(self):
        """Drop the buffer (a graph still holding it keeps its own reference)."""
        self._buffer, self._owner = None, None

    def __getstate__(self):
        # a copy or a pickle of the model starts with no buffer (and no weak reference, which
        # pickle refuses)
        return {"_buffer": None, "_owner": None}


def _linear_into(out, h, weight, bias, block):
    """out = h W^T + b, written into ``out``, in blocks of ``block`` output columns (None: one
    product; the output layer takes blocks on the CPU alone): MKL ran the decoder's (2,048 x 600) x
    (600 x 20,108) product at ~176 GFLOP/s in one call and at ~200 (the backward's two products'
    rate) in blocks of 512 to 1,024 columns, on a 2-core CPU (the key ``sparse_cpu_column_block``
    sets it). Each block is the same dot products, so the values are those of one call up to
    rounding. ``h`` and ``weight`` in a lower precision than ``out`` (autocast's): each block is
    computed in theirs and written into ``out`` in its own."""
    block = out.shape[1] if block is None else block
    same = h.dtype == out.dtype
    # the low-precision product of each block, in one buffer: a fresh one per block costs its page faults
    low = None if same else torch.empty(h.shape[0], min(block, out.shape[1]), dtype=h.dtype, device=h.device)
    for start in range(0, out.shape[1], block):
        part = slice(start, start + block)
        if same and bias is None:
            torch.mm(h, weight[part].t(), out=out[:, part])
        elif same:
            torch.addmm(bias[part], h, weight[part].t(), out=out[:, part])
        else:
            product = torch.mm(h, weight[part].t(), out=low[:, : out[:, part].shape[1]])
            out[:, part].copy_(product)
            if bias is not None:
                out[:, part] += bias[part]


class LowPrecisionCopy:
    """A parameter's copy in a lower precision, made again only when the parameter changed.

    autocast casts a layer's float32 weight afresh on every call outside one autocast region; full
    ranking scores batch after batch with the same weights, so the copy is kept, keyed by the
    parameter's storage and in-place version (``load_state_dict`` and most in-place updates move
    it). torch's fused Adam does not move the version: its owner drops the copy when training
    resumes (``SparseInput.train``)."""

    def __init__(self):
        self._key, self._copy = None, None

    def of(self, tensor, dtype):
        if tensor is None or tensor.dtype == dtype:
            return tensor
        key = (tensor.data_ptr(), tensor._version, tensor.shape, dtype)
        if key != self._key:
            self._key, self._copy = key, tensor.detach().to(dtype)
        return self._copy

    def __getstate__(self):
        return {"_key": None, "_copy": None}


def linear_into_workspace(linear, h, workspace, copies):
    """``linear(h)`` (no gradient), written into ``workspace``'s buffer, lent to nobody: the next
    ``take`` overwrites it. Under autocast the product runs as autocast runs ``nn.Linear``'s, in its
    dtype, with the weight and bias cast once (``copies``: two :class:`LowPrecisionCopy` kept by the
    caller) rather than on every call.

    On the CPU the result is a (rows x out_features) view of an item-major buffer, (h W^T)^T =
    W h^T + b: the CPU runs the product faster in that layout (MKL, and oneDNN with AMX, measured
    at ML-20M's (208 x 600)(600 x 20,108): about 1.2x in float32, 3x in bfloat16), and the
    collector's top-k reads it as it lies (:func:`recbole_beta.collector.topk_indices`). Elsewhere
    it is row-major, as ``nn.Linear`` writes it."""
    device = h.device.type
    weight, bias = linear.weight, linear.bias
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    if dtype != weight.dtype:
        weight, bias = copies[0].of(weight, dtype), copies[1].of(bias, dtype)
    h = h.to(dtype)
    with torch.autocast(device_type=device, enabled=False):
        if device != "cpu":
            out = workspace.take(None, h.shape[0], weight.shape[0], dtype, h.device)
            return torch.mm(h, weight.t(), out=out) if bias is None else torch.addmm(bias, h, weight.t(), out=out)
        out = workspace.take(None, weight.shape[0], h.shape[0], dtype, h.device)
        if bias is None:
            torch.mm(weight, h.t(), out=out)
        else:
            torch.addmm(bias.unsqueeze(1), weight, h.t(), out=out)
        return out.t()


class _LinearMultinomialNLL(torch.autograd.Function):
    """-sum_i x_ui log softmax(h_u W^T + b)_i for every row u: the decoder's output layer and the
    reconstruction term in one, so the batch x items logits are written once, into a reused buffer
    that the softmax then overwrites in place and the backward turns, in place, into the logits'
    gradient. The products are those of ``nn.Linear`` and its backward.

    ``product_dtype`` (autocast's, under ``enable_amp``): the three products run in it, as autocast
    runs ``nn.Linear``'s, while the logits, the softmax, the likelihood and the gradients of the
    float32 weight and bias stay float32; on the CPU its backward runs in column blocks
    (:func:`_low_precision_backward_in_blocks`).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, rows, cols, values, workspace, cpu_column_block, keep, product_dtype):
        dtype = torch.promote_types(h.dtype, torch.float32)  # the logits': float32 at least
        logits = workspace.take(ctx, h.shape[0], weight.shape[0], dtype, h.device)
        low = product_dtype is not None
        h_low, weight_low = (h.to(product_dtype), weight.to(product_dtype)) if low else (h, weight)
        # column blocks on the CPU alone (elsewhere one product), for the forward's and the backward's products
        block = cpu_column_block if h.device.type == "cpu" else None
        _linear_into(logits, h_low, weight_low, bias, block)
        picked = logits[rows, cols]
        top = logits.amax(1)
        probs = torch.ops.aten._softmax.out(logits, 1, False, out=logits)  # in place, row by row
        # log softmax(z)_i = z_i - max(z) - log(sum exp(z - max(z))), as log_softmax computes it; the
        # sum is 1 / (the largest probability), that of max(z), as exp(0) = 1
        log_sum = probs.amax(1).log_().neg_()
        nll, total = _sparse_nll(picked - top[rows] - log_sum[rows], rows, values, h.shape[0])
        if keep and any(ctx.needs_input_grad):  # keep: gradients were on (inside, they never are)
            ctx.save_for_backward(h_low, weight_low, probs, rows, cols, values, total)
            ctx.workspace, ctx.spent = workspace, False
            ctx.dtypes, ctx.block = (h.dtype, weight.dtype), block
        else:
            workspace.give_back(ctx)
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        _spend(ctx, "linear_multinomial_nll")
        h, weight, probs, rows, cols, values, total = ctx.saved_tensors
        need_h, need_weight, need_bias = ctx.needs_input_grad[:3]
        # the blocks divide by each row's sum of values: a row whose values sum to 0 (signed values;
        # counts and RecBole's 1s never do) takes the one-product backward
        if ctx.block is not None and h.dtype != probs.dtype and bool((total[rows] != 0).all()):
            grad_h, grad_weight, grad_bias = _low_precision_backward_in_blocks(
                probs, grad, total, rows, cols, values, h, weight, ctx.block, need_h, need_weight, need_bias)
        else:
            grad_logits = _logits_grad_(probs, grad, total, rows, cols, values)
            grad_bias = grad_logits.sum(0) if need_bias else None
            product = grad_logits.to(h.dtype)  # a copy in autocast's dtype; else grad_logits itself
            grad_h = product @ weight if need_h else None
            grad_weight = product.t() @ h if need_weight else None
        h_dtype, weight_dtype = ctx.dtypes
        ctx.workspace.give_back(ctx)
        grad_h = None if grad_h is None else grad_h.to(h_dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight_dtype)
        return grad_h, grad_weight, grad_bias, None, None, None, None, None, None, None


def _low_precision_backward_in_blocks(probs, grad, total, rows, cols, values, h, weight, block, need_h, need_weight,
                                      need_bias):
    """The gradients of h, W and b from the float32 ``probs`` (overwritten), the products in the dtype
    of ``h`` and ``weight`` (autocast's) and in blocks of ``block`` output columns (items), on the CPU.

    Each block's logits gradient is narrowed to the products' dtype while in cache and both products
    of the block follow, where one product over every item would read a narrowed copy of the whole
    batch x items gradient. Measured at ML-20M's (2,048 x 600)(600 x 20,108) on AMX: the weight's
    gradient ran at ~1.4x the rate of one product (``h^T G`` of each block, which oneDNN runs faster
    than ``G^T h``), the input's at ~1.2x, and no batch x items copy is made. The values are those
    of one product up to the low precision's rounding: the input's gradient is summed over the blocks
    in float32. Every row with non-zeros must have a non-zero sum of values (it is divided by).
    Returns (grad_h, grad_weight, grad_bias), float32, None where not needed.
    """
    scale = grad * total
    # g_u (softmax(z_u) sum_i x_ui - x_u) = scale_u (p_u - x_u / sum_i x_ui): the non-zeros' part on
    # the probabilities first, so a block's gradient is one product with scale (rows with no
    # non-zero have none to divide by)
    probs.index_put_((rows, cols), -(values / total[rows]), accumulate=True)
    grad_bias = torch.mv(probs.t(), scale) if need_bias else None
    n_rows, n_items = probs.shape
    low = torch.empty(n_rows, min(block, n_items), dtype=h.dtype, device=h.device)
    grad_h = torch.zeros(h.shape, dtype=probs.dtype, device=h.device) if need_h else None
    grad_weight = torch.empty(weight.shape, dtype=probs.dtype, device=h.device) if need_weight else None
    h_t = h.t().contiguous() if need_weight else None
    scale = scale.unsqueeze(1)
    for start in range(0, n_items if need_h or need_weight else 0, block):
        part = slice(start, start + block)
        narrow = low[:, : probs[:, part].shape[1]]
        narrow.copy_(probs[:, part].mul_(scale))
        if need_h:
            grad_h += torch.mm(narrow, weight[part])
        if need_weight:
            grad_weight[part] = torch.mm(h_t, narrow).t()
    return grad_h, grad_weight, grad_bias


def linear_multinomial_nll(linear, h, batch, workspace, cpu_column_block=None):
    """``multinomial_nll(linear(h), batch.rows, batch.cols, batch.values)``, the same numbers without
    a second batch x items tensor: see :class:`_LinearMultinomialNLL`. ``batch``: a
    :class:`~recbole_beta.data.user_items.SparseBatch`; ``workspace``: the :class:`Workspace` the
    logits are written into; ``cpu_column_block``: output columns per matrix product on the CPU
    (None: one product; see :func:`_linear_into`). Under autocast the products run in autocast's
    dtype, the rest in float32; weights held in a half-precision dtype take the plain composition."""
    device = h.device.type
    if linear.weight.dtype not in (torch.float32, torch.float64):
        return multinomial_nll(linear(h), batch.rows, batch.cols, batch.values)
    product_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if product_dtype is None:
        h = h.to(linear.weight.dtype)
    values = batch.values.to(torch.promote_types(h.dtype, torch.float32))
    with torch.autocast(device_type=device, enabled=False):
        return _LinearMultinomialNLL.apply(h, linear.weight, linear.bias, batch.rows, batch.cols, values, workspace,
                                           cpu_column_block, torch.is_grad_enabled(), product_dtype)


class TransposedLinear(nn.Module):
    """``nn.Linear`` (y = x W^T + b) holding W^T as its parameter, for the sparse path's first layer.

    A sparse batch's first layer sums, for each row, the rows of W^T at its non-zeros
    (``F.embedding_bag``); with W^T stored contiguously neither the forward nor the backward
    copies the (items x hidden) weight. (torch's CSR x dense product copies the strided W^T on
    every call and is several times slower; a weight kept as a transposed view of W^T would slow
    the fused Adam step, which copies non-contiguous parameters.) State dicts hold ``weight`` as
    ``nn.Linear``'s, so checkpoints move between this layer and RecBole's.
    """

    #: parameters held transposed, for whoever must map state kept per parameter (optimizer
    #: moments in checkpoints, recbole_beta.trainer) between this layer and nn.Linear
    transposed_parameters = ("weight_t",)

    def __init__(self, weight, bias):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight_t = nn.Parameter(weight.detach().t().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_state_dict_post_hook(_save_as_linear)
        self.register_load_state_dict_pre_hook(_load_from_linear)

    @classmethod
    def from_linear(cls, linear):
        """The same layer (same values) as the ``nn.Linear`` ``linear``."""
        return cls(linear.weight, linear.bias)

    @property
    def weight(self):
        """W (out x in), a view of the parameter."""
        return self.weight_t.t()

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def sparse(self, offsets, cols, values):
        """The layer on a sparse batch given as CSR parts: row r has the non-zeros
        ``cols[offsets[r]:offsets[r + 1]]`` with ``values`` at the same positions."""
        out = F.embedding_bag(cols, self.weight_t, offsets, per_sample_weights=values, mode="sum")
        return out + self.bias if self.bias is not None else out

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _save_as_linear(module, state_dict, prefix, local_metadata):
    state_dict[prefix + "weight"] = state_dict.pop(prefix + "weight_t").t()


def _load_from_linear(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    if prefix + "weight" in state_dict:
        # contiguous, also where load_state_dict(assign=True) takes the tensor as it is
        state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t().contiguous()
