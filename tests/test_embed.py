"""Attention pooling of structure embeddings (eqs. 2–6) on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from cryosamu_cli.data import embed


def test_chain_weights_by_hand():
    # two chains, d = 2, R = 2 (chain B padded with a zero row)
    chain_a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    chain_b = torch.tensor([[0.0, 2.0]])
    pooled = embed.pool_chains([chain_a, chain_b])
    # E_chain: A = (1, 0), B = (0, 2)/2 = (0, 1); S = [[1, 0], [0, 1]]
    # column softmax: W = [[e, 1], [1, e]] / (e + 1); w_i = mean over j = 1/2 for both
    w = 0.5
    expected = torch.tensor([[w * 1.0, w * 2.0], [w * 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(pooled, expected)


def test_chain_weights_favour_the_chain_similar_to_the_others():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.9, 0.1]])
    c = torch.tensor([[0.0, 1.0]])
    weights = embed.attention_weights(torch.cat([a, b, c]).double())
    s = torch.tensor([[1.0, 0.9, 0.0], [0.9, 0.82, 0.1], [0.0, 0.1, 1.0]], dtype=torch.float64)
    expected = torch.softmax(s, dim=0).mean(dim=1)
    assert torch.allclose(weights, expected)
    assert weights.sum() == pytest.approx(1.0)


def test_short_embeddings_are_sorted_and_repeated():
    pooled = torch.tensor([[0.0, 0.0], [3.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    out = embed.fixed_length(pooled, length=7)
    # by hand: S = [[0, 0, 0], [0, 10, 4], [0, 4, 2]]; column softmax, mean over columns:
    # alpha ≈ (0.116, 0.733, 0.151), so the rows go 1, 2, 0 and repeat
    normalised = pooled / 3.0  # min 0, max 3
    expected = normalised[[1, 2, 0, 1, 2, 0, 1]].float()
    assert out.shape == (7, 2) and torch.equal(out, expected)
    assert out.min() >= 0 and out.max() <= 1


def test_residue_order_breaks_near_ties_by_residue_index():
    # residues 1, 2, 3 differ by float noise (1e-9 of 0.3): tied, kept in residue order,
    # whichever of them the noise makes largest
    for noise in (1e-9, -1e-9):
        alpha = torch.tensor([0.2, 0.3, 0.3 + noise, 0.3 - noise, 0.1], dtype=torch.float64)
        assert embed.residue_order(alpha).tolist() == [1, 2, 3, 0, 4]
    # a real difference (1e-3 of the largest) still orders by weight
    alpha = torch.tensor([0.2, 0.3, 0.3003, 0.1], dtype=torch.float64)
    assert embed.residue_order(alpha).tolist() == [2, 1, 0, 3]


def test_long_embeddings_keep_the_top_weighted_residues():
    torch.manual_seed(0)
    pooled = torch.randn(50, 8, dtype=torch.float64)
    out = embed.fixed_length(pooled, length=20)
    alpha = embed.attention_weights(pooled)
    top = torch.argsort(alpha, descending=True)[:20]
    span = pooled.max() - pooled.min()
    assert torch.allclose(out, ((pooled[top] - pooled.min()) / span).float())


def test_structure_embedding_has_the_paper_shape_and_is_deterministic():
    torch.manual_seed(1)
    chains = [torch.randn(n, embed.ESM_IF1_DIM) * 0.05 for n in (120, 300, 95)]
    first = embed.structure_embedding(chains)
    again = embed.structure_embedding([c.clone() for c in chains])
    assert first.shape == (800, 512) and first.dtype == torch.float32
    assert torch.equal(first, again)
