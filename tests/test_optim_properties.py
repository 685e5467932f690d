"""Property tests: arbitrary gradient sequences, every implementation against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_db import ENGINE, IMPLS

from dissecting_adam.optim.reference import ReferenceOptimizer

CLASSES = ENGINE  # every engine method of the registry

# Gradients over many orders of magnitude, exact zeros and repeated values included.
magnitudes = st.sampled_from([0.0, 1e-30, 1e-8, 1e-3, 1.0, 3.0, 1e4, 1e15])
gradients = st.lists(
    st.lists(st.tuples(magnitudes, st.sampled_from([-1.0, 1.0])), min_size=3, max_size=3),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", CLASSES)
@settings(max_examples=40, deadline=None)
@given(seq=gradients, beta=st.sampled_from([0.5, 0.9, 0.999]))
def test_any_gradient_sequence_matches_reference(method, impl, seq, beta):
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = CLASSES[method]([p], lr=0.1, beta=beta, **IMPLS[impl])
    ref = ReferenceOptimizer([q], method, lr=0.1, beta=beta)
    for row in seq:
        g = torch.tensor([m * s for m, s in row], dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-300)
