"""Structure embeddings: ESM-IF1 per chain, then the attention pooling of eqs. 2–6 (§3.2).

Pooling, for ``C`` chains zero-padded to ``R`` residues, ``E ∈ R^{C×R×d}``:

1. chain embeddings ``E_chain = (1/R) Σ_j E[:, j, :]`` (eq. 2, padding included as written);
2. similarities ``S = E_chain E_chainᵀ`` (eq. 3);
3. a column-wise softmax ``W_ij = exp(S_ij) / Σ_k exp(S_kj)`` (eq. 4; the text says
   column-wise, and a row-wise softmax would make every chain weight 1/C);
4. chain weights ``w_i = (1/C) Σ_j W_ij`` (eq. 5) and ``E_pooled = Σ_i w_i E[i]`` (eq. 6);
5. residue weights ``α`` by the same steps on the rows of ``E_pooled``;
6. min-max normalisation of ``E_pooled`` to [0, 1], then a fixed length ``L``: the top-``L``
   residues by ``α`` (``R > L``), or all residues sorted by ``α`` and repeated ``⌈L/R⌉`` times,
   cut to ``L`` (``R ≤ L``). Residues are ordered by decreasing ``α`` either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

EMBEDDING_LENGTH = 800
EMBEDDING_DIM = 512


def attention_weights(rows: torch.Tensor) -> torch.Tensor:
    """Weights of eqs. 3–5 for the rows of ``rows`` (n × d): mean over columns of the
    column-wise softmax of the row similarity matrix."""
    similarity = rows @ rows.T
    return torch.softmax(similarity, dim=0).mean(dim=1)


def pool_chains(chains: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eqs. 2–6: chain embeddings (each ``R_c × d``) → one ``R × d`` pooled embedding."""
    if not chains:
        raise ValueError("no chain embeddings to pool")
    length = max(c.shape[0] for c in chains)
    padded = torch.zeros(len(chains), length, chains[0].shape[1], dtype=torch.float64)
    for i, chain in enumerate(chains):
        padded[i, : chain.shape[0]] = chain.to(torch.float64)
    chain_means = padded.mean(dim=1)
    weights = attention_weights(chain_means)
    return torch.einsum("c,crd->rd", weights, padded)


def fixed_length(pooled: torch.Tensor, length: int = EMBEDDING_LENGTH) -> torch.Tensor:
    """Step 6: min-max normalise and resample ``R × d`` to ``length × d`` by residue weight."""
    alpha = attention_weights(pooled)
    order = torch.argsort(alpha, descending=True, stable=True)
    span = pooled.max() - pooled.min()
    normalised = (pooled - pooled.min()) / span if span > 0 else torch.zeros_like(pooled)
    if pooled.shape[0] >= length:
        chosen = order[:length]
    else:
        chosen = order.repeat(math.ceil(length / pooled.shape[0]))[:length]
    return normalised[chosen].to(torch.float32)


def structure_embedding(chains: Sequence[torch.Tensor],
                        length: int = EMBEDDING_LENGTH) -> torch.Tensor:
    """Per-chain embeddings → the fixed ``length × d`` representation used as keys/values."""
    return fixed_length(pool_chains(chains), length)
