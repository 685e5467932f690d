"""Two-layer character LSTM for War and Peace, after DeepOBS's ``tolstoi_char_rnn``.

DeepOBS wraps each of its two ``LSTMCell(128)`` in a ``DropoutWrapper`` with input and
output keep probability 0.8 (training only), so between the layers dropout acts twice. The
LSTM state lives in the model, like DeepOBS's non-trainable state variables: each forward
pass starts from the stored state and stores its final state, detached (truncated
backpropagation through time at batch boundaries); ``reset_state`` zeroes it.

TF's ``LSTMCell`` has one bias per gate and adds a constant ``forget_bias=1.0`` to the
forget gate; PyTorch's LSTM has two biases per gate. Here ``bias_hh`` is frozen at zero and
``bias_ih`` starts at 1.0 on the forget gate: the same function, the same gradients and a
single trainable bias, as in TF (two trainable biases would double its effective step).

Several networks at once (``problems.batched``): vmap has no batching rule for
``aten::lstm``, so ``forward_masked`` is ``forward_from``'s training pass with the LSTM
written out as matmuls (``lstm_layer``) and its four dropout masks given, drawn beforehand
by ``dropout_masks`` exactly as ``forward_from``'s ``nn.Dropout`` calls draw them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import glorot_uniform_


class CharRNN(nn.Module):
    """embedding 83x128 -> dropout -> LSTM 128 -> dropout -> dropout -> LSTM 128 -> dropout
    -> dense 128x83; 284,499 trainable parameters."""

    def __init__(self, vocab_size: int = 83, hidden: int = 128, keep_prob: float = 0.8):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm1 = nn.LSTM(hidden, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(1.0 - keep_prob)
        self.dense = nn.Linear(hidden, vocab_size)
        self.state: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
        # TF's default initialiser for every variable here is glorot_uniform, computed on its
        # own shapes: embedding (83, 128), LSTM kernel (256, 512) for [x, h] -> 4 gates,
        # softmax_w (128, 83) and even softmax_b (83,).
        glorot_uniform_(self.embedding.weight)
        lstm_bound = (6.0 / (2 * hidden + 4 * hidden)) ** 0.5
        for lstm in (self.lstm1, self.lstm2):
            nn.init.uniform_(lstm.weight_ih_l0, -lstm_bound, lstm_bound)
            nn.init.uniform_(lstm.weight_hh_l0, -lstm_bound, lstm_bound)
            nn.init.zeros_(lstm.bias_ih_l0)
            lstm.bias_ih_l0.data[hidden : 2 * hidden] = 1.0  # gates (i, f, g, o): forget bias
            nn.init.zeros_(lstm.bias_hh_l0)
            lstm.bias_hh_l0.requires_grad_(False)
        glorot_uniform_(self.dense.weight)
        glorot_uniform_(self.dense.bias)

    def reset_state(self) -> None:
        """Forget the carried LSTM state: the next batch starts from zeros."""
        self.state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Character ids (B, T) to logits (B, T, V); carries the state to the next call."""
        state = self.state
        if state is not None and state[0][0].shape[1] != x.shape[0]:
            state = None  # a different number of streams: start afresh
        logits, new_state = self.forward_from(x, state)
        self.state = tuple((a.detach(), b.detach()) for a, b in new_state)
        return logits

    def zero_state(self, batch_size: int, like: torch.Tensor):
        """The state a fresh batch of ``batch_size`` streams starts from (zeros)."""
        zeros = lambda lstm: like.new_zeros(1, batch_size, lstm.hidden_size)  # noqa: E731
        return tuple((zeros(lstm), zeros(lstm)) for lstm in (self.lstm1, self.lstm2))

    def forward_from(self, x: torch.Tensor, state=None):
        """The pure forward pass: (logits, final state) from ids (B, T) and a state or None.

        Touches no attribute, so ``torch.func`` can map it over the examples of a batch.
        """
        h = self.dropout(self.embedding(x))  # (B, T, H)
        h, s1 = self.lstm1(h, None if state is None else state[0])
        h, s2 = self.lstm2(self.dropout(self.dropout(h)), None if state is None else state[1])
        return self.dense(self.dropout(h)), (s1, s2)  # (B, T, V)

    def forward_masked(self, x: torch.Tensor, state, masks) -> tuple:
        """``forward_from`` in training mode with explicit LSTM maths and the given dropout
        masks (four (B, T, H) tensors in ``forward_from``'s order; see ``dropout_masks``).

        ``state`` is not None (zeros for a fresh batch). Every op has a vmap batching rule:
        one member's forward pass when K members are mapped over.
        """
        m1, m2, m3, m4 = masks
        h = self.embedding(x) * m1
        h, s1 = lstm_layer(self.lstm1, h, state[0])
        h, s2 = lstm_layer(self.lstm2, (h * m2) * m3, state[1])
        return self.dense(h * m4), (s1, s2)

    def dropout_masks(self, ones: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The four masks ``forward_from`` would draw now from the global RNG, as tensors.

        Each is the same dropout op on ones laid out as the tensor it would drop (``ones``:
        ``torch.ones_like`` of ``dropout_layouts``; dropout leaves its input as it is), so
        it consumes the same random numbers and yields the same factors on the same
        elements: ``h * mask`` equals ``self.dropout(h)`` bit for bit.
        """
        return [F.dropout(t, self.dropout.p, training=True) for t in ones]

    def dropout_layouts(self, batch: int, steps: int, dtype, device) -> tuple[torch.Tensor, ...]:
        """Tensors with the shapes and strides of the four inputs of ``forward_from``'s
        dropouts on this device: which random number lands on which element follows the
        memory layout (and nn.LSTM's batch_first output is a transposed view on the CPU and
        under cuDNN). Found by running the ops once; the global random state is untouched.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        cuda = [device.index] if device.type == "cuda" else []
        hidden = self.lstm1.hidden_size
        with torch.random.fork_rng(devices=cuda):
            lstm = nn.LSTM(hidden, hidden, batch_first=True, device="meta", dtype=dtype)
            lstm = lstm.to_empty(device=device)
            with torch.no_grad():
                for w in lstm.parameters():
                    w.zero_()
            weight = torch.zeros(2, hidden, dtype=dtype, device=device, requires_grad=True)
            ids = torch.zeros(batch, steps, dtype=torch.long, device=device)
            embedded = F.embedding(ids, weight)
            out, _ = lstm(F.dropout(embedded, 0.5, training=True))
            dropped = F.dropout(out, 0.5, training=True)
        return embedded, out, dropped, out


def lstm_layer(lstm: nn.LSTM, x: torch.Tensor, state) -> tuple:
    """One layer of ``nn.LSTM`` (batch_first, gates i, f, g, o) as explicit matmuls.

    The same function as ``lstm(x, state)`` up to rounding; ``state`` is ((1, B, H), (1, B, H))
    and so is the returned final state. The input projection of all steps is one matmul, as
    PyTorch's CPU LSTM does; ``bias_hh`` (frozen at zero here) is folded into it.
    """
    xw = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # (B, T, 4H)
    w_hh = lstm.weight_hh_l0.t()
    h, c = state[0][0], state[1][0]
    outputs = []
    for xw_t in xw.unbind(dim=1):  # one backward node; indexing xw[:, t] would make T
        gates = xw_t + h @ w_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h.unsqueeze(0), c.unsqueeze(0))
