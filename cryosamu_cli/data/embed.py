"""Structure embeddings: a pretrained encoder's residue features per chain (ESM-IF1 as in the
paper, or ProteinMPNN's encoder, :mod:`cryosamu_cli.data.proteinmpnn`), then the attention pooling of
eqs. 2–6 (§3.2) to a fixed ``800 × d`` (d = 512 for ESM-IF1, 128 for ProteinMPNN).

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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

EMBEDDING_LENGTH = 800
WEIGHT_TIE_TOLERANCE = 1e-5  # residue weights this close (relative to the largest) count as tied
ESM_IF1_DIM = 512
PROTEINMPNN_DIM = 128
# Encoder name → width d of its residue features (and of the stored embeddings).
STRUCT_ENCODERS = {"esm-if1": ESM_IF1_DIM, "proteinmpnn": PROTEINMPNN_DIM}
PROTEINMPNN_WEIGHTS = "proteinmpnn-v_48_020"  # its entry in the weights manifest


@dataclass(frozen=True)
class StructureEmbedder:
    """Model atoms → pooled ``EMBEDDING_LENGTH × dim`` embedding (numpy), with its encoder's
    name and width: what ``prepare-data`` stores per pair."""

    name: str
    dim: int
    embed: Callable[[object], np.ndarray]

    def __call__(self, atoms) -> np.ndarray:
        return self.embed(atoms)


def check_encoder(name: str) -> str:
    """``name`` if it is a known structure encoder.

    Raises:
        ConfigError: Unknown encoder.
    """
    from cryosamu_cli.errors import ConfigError

    if name not in STRUCT_ENCODERS:
        raise ConfigError(f"unknown structure encoder '{name}' (choose from "
                          f"{', '.join(STRUCT_ENCODERS)})")
    return name


def choose_encoder(encoder: str | None = None,
                   encoder_weights: str | os.PathLike | None = None) -> str:
    """The structure encoder to use: ``encoder`` when given; else the paper's ESM-IF1 when
    fair-esm's download of it is cached, ProteinMPNN when its weights are cached, and ESM-IF1
    (downloaded) otherwise.

    Raises:
        ConfigError: Unknown encoder, or weights given without saying whose they are.
    """
    from cryosamu_cli import weights
    from cryosamu_cli.errors import ConfigError

    if encoder is not None:
        return check_encoder(encoder)
    if encoder_weights is not None:
        raise ConfigError("--encoder-weights needs --struct-encoder esm-if1|proteinmpnn "
                          "(which encoder the file is for)")
    if _esm_if1_cached():
        return "esm-if1"
    if weights.local_copy(weights.load_manifest().encoder(PROTEINMPNN_WEIGHTS)) is not None:
        return "proteinmpnn"
    return "esm-if1"


def _esm_if1_cached() -> bool:
    """Whether fair-esm's download of ESM-IF1 is in torch hub's cache."""
    from pathlib import Path

    return (Path(torch.hub.get_dir()) / "checkpoints" / f"{ESM_IF1_NAME}.pt").is_file()


def structure_embedder(encoder: str,
                       encoder_weights: str | os.PathLike | None = None) -> StructureEmbedder:
    """The embedder of ``encoder`` (``esm-if1`` or ``proteinmpnn``), its network loaded once
    (``encoder_weights``: a local weights file, else the encoder's own download).

    Raises:
        ConfigError: Unknown encoder.
        CryosamuError: The weights cannot be had or read.
    """
    check_encoder(encoder)
    if encoder == "proteinmpnn":
        return proteinmpnn_embedder(encoder_weights)
    return esm_embedder(encoder_weights)


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


def residue_order(alpha: torch.Tensor) -> torch.Tensor:
    """Residue indices by descending weight ``alpha``; weights within ``WEIGHT_TIE_TOLERANCE``
    of the largest weight of each other count as tied and keep residue order, so that
    floating-point noise (another CPU's summation order, a rotated model) cannot swap rows."""
    level = torch.round(alpha / alpha.max() / WEIGHT_TIE_TOLERANCE)
    return torch.argsort(level, descending=True, stable=True)


def fixed_length(pooled: torch.Tensor, length: int = EMBEDDING_LENGTH) -> torch.Tensor:
    """Step 6: min-max normalise and resample ``R × d`` to ``length × d`` by residue weight
    (:func:`residue_order`)."""
    order = residue_order(attention_weights(pooled))
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


# --------------------------------------------------------------------------- ESM-IF1

ESM_IF1_NAME = "esm_if1_gvp4_t16_142M_UR50"
# Hyper-parameters of ESM-IF1 (GVP-Transformer, 142M), used only to build the architecture with
# random weights for tests; a real checkpoint always brings its own.
ESM_IF1_ARGS = dict(
    arch="vt_medium_gvp4_t16_esm_if1", encoder_embed_dim=512, decoder_embed_dim=512,
    encoder_ffn_embed_dim=2048, decoder_ffn_embed_dim=2048, encoder_attention_heads=8,
    decoder_attention_heads=8, encoder_layers=8, decoder_layers=8, gvp_num_encoder_layers=4,
    num_encoder_layers=4, node_hidden_dim_scalar=1024, node_hidden_dim_vector=256,
    edge_hidden_dim_scalar=32, edge_hidden_dim_vector=1, top_k_neighbors=30, dropout=0.1,
    attention_dropout=0.1, gvp_top_k_neighbors=30, gvp_node_hidden_dim_scalar=1024,
    gvp_node_hidden_dim_vector=256, gvp_edge_hidden_dim_scalar=32,
    gvp_edge_hidden_dim_vector=1, gvp_dropout=0.1)


def _provide_torch_scatter() -> None:
    """fair-esm imports ``torch_scatter``, which has no wheel for current torch: when it is
    missing, register a small stand-in built on ``torch_geometric.utils.scatter`` (the two
    functions ESM-IF1 uses; same results)."""
    import importlib.util
    import sys
    import types

    if "torch_scatter" in sys.modules or importlib.util.find_spec("torch_scatter") is not None:
        return
    from torch_geometric.utils import scatter as pyg_scatter

    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        dim = dim if dim >= 0 else src.dim() + dim
        result = pyg_scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
        return result if out is None else out.copy_(result)

    def scatter_add(src, index, dim=-1, out=None, dim_size=None):
        return scatter(src, index, dim, out, dim_size, reduce="sum")

    module = types.ModuleType("torch_scatter")
    module.scatter, module.scatter_add = scatter, scatter_add
    sys.modules["torch_scatter"] = module


def load_esm_if1(weights_path=None, random_weights: bool = False, seed: int = 0):
    """ESM-IF1 and its alphabet, in eval mode.

    Args:
        weights_path: A local ``esm_if1_gvp4_t16_142M_UR50.pt``; default: fair-esm's own
            loader, which downloads it on first use.
        random_weights: Build the architecture with random weights (tests; no download).
        seed: Seed for the random weights.

    Raises:
        CryosamuError: fair-esm (or its dependencies) is missing, or the weights cannot be had.
    """
    from cryosamu_cli.errors import CryosamuError

    try:
        _provide_torch_scatter()
        import esm
        import esm.inverse_folding  # noqa: F401
    except ImportError as exc:
        raise CryosamuError("structure embeddings need fair-esm, torch_geometric and "
                            "biotite<1: pip install 'cryosamu[struct]'") from exc
    if random_weights:
        from argparse import Namespace

        torch.manual_seed(seed)
        alphabet = esm.Alphabet.from_architecture("invariant_gvp")
        model = esm.inverse_folding.gvp_transformer.GVPTransformerModel(
            Namespace(**ESM_IF1_ARGS), alphabet)
        return model.eval(), alphabet
    try:
        if weights_path is not None:
            model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(weights_path))
        else:
            model, alphabet = esm.pretrained.esm_if1_gvp4_t16_142M_UR50()
    except Exception as exc:  # torch.hub raises URLError, HTTPError, RuntimeError, ...
        raise CryosamuError(f"cannot load {ESM_IF1_NAME} ({type(exc).__name__}); download it "
                            "where the internet is reachable and pass --esm-weights PATH") from exc
    return model.eval(), alphabet


def chain_backbones(atoms) -> dict[str, np.ndarray]:
    """N, CA, C coordinates ``(R, 3, 3)`` per chain, of standard amino acids with a complete
    backbone, in file order."""
    from cryosamu_cli.structure import STANDARD_AMINO_ACIDS

    wanted = {"N": 0, "CA": 1, "C": 2}
    per_residue: dict[int, dict[int, np.ndarray]] = {}
    for xyz, name, residue in zip(atoms.xyz, atoms.atom_name, atoms.residue_index):
        if name in wanted:
            per_residue.setdefault(int(residue), {}).setdefault(wanted[name], xyz)
    chains: dict[str, list] = {}
    for index, (chain, _, resname) in enumerate(atoms.residues):
        found = per_residue.get(index, {})
        if resname in STANDARD_AMINO_ACIDS and len(found) == 3:
            chains.setdefault(chain, []).append([found[0], found[1], found[2]])
    return {chain: np.array(coords, dtype=np.float32) for chain, coords in chains.items()}


@torch.inference_mode()
def embed_structure(atoms, model, alphabet, length: int = EMBEDDING_LENGTH) -> torch.Tensor:
    """ESM-IF1 encoder output per chain, pooled to ``length × 512`` (eqs. 2–6)."""
    from esm.inverse_folding.util import get_encoder_output

    backbones = chain_backbones(atoms)
    if not backbones:
        raise ValueError("no standard residue with a complete backbone")
    chains = [get_encoder_output(model, alphabet, coords) for coords in backbones.values()]
    return structure_embedding(chains, length)


def esm_embedder(weights_path=None) -> StructureEmbedder:
    """Model atoms → their pooled ESM-IF1 embedding, with the network loaded once
    (``weights_path``: a local checkpoint, else fair-esm's download)."""
    model, alphabet = load_esm_if1(weights_path)
    return StructureEmbedder("esm-if1", ESM_IF1_DIM,
                             lambda atoms: embed_structure(atoms, model, alphabet).numpy())


# --------------------------------------------------------------------------- ProteinMPNN

def proteinmpnn_embedder(weights_path=None) -> StructureEmbedder:
    """Model atoms → their pooled ProteinMPNN embedding (``800 × 128``), with the encoder
    loaded once (``weights_path``: a local ``v_48_020.pt``, else the manifest's download)."""
    from cryosamu_cli import weights
    from cryosamu_cli.data import proteinmpnn

    encoder = proteinmpnn.load_encoder(
        weights.resolve_encoder_weights(PROTEINMPNN_WEIGHTS, weights_path))
    return StructureEmbedder("proteinmpnn", PROTEINMPNN_DIM,
                             lambda atoms: embed_proteinmpnn(atoms, encoder).numpy())


def embed_proteinmpnn(atoms, encoder, length: int = EMBEDDING_LENGTH) -> torch.Tensor:
    """ProteinMPNN residue features of every chain (the complex encoded as one graph),
    pooled to ``length × 128`` (eqs. 2–6).

    Raises:
        ValueError: No residue with a complete N, CA, C, O backbone.
    """
    from cryosamu_cli.data.proteinmpnn import backbone_of

    chains = encoder.encode(backbone_of(atoms))
    return structure_embedding(list(chains.values()), length)
