"""ProteinMPNN's structure encoder (Dauparas et al., Science 2022): backbone → per-residue
features, our own implementation, loading the published weights by tensor name.

The graph: every residue is a node joined to its ``k`` nearest residues by Cα distance (itself
included; ``k`` = the checkpoint's ``num_edges``, 48 for ``v_48_020``). Edge features:

* Gaussian radial basis functions (16 centres from 2 to 22 Å, width 1.25 Å) of the distances
  between the 25 ordered atom pairs of :data:`ATOM_PAIRS` over N, Cα, C, O and a virtual Cβ
  placed from N, Cα and C with the ideal-geometry coefficients of :data:`VIRTUAL_CB`;
* the relative position ``i − j`` (residue numbers, clipped to ±32) as a one-hot of 65 classes,
  with a 66th class for residues of different chains, through a 66 → 16 linear layer;

concatenated (416), projected to 128 without bias, layer-normalised, then projected again
(``W_e``). Nodes start at zero. Each of the three encoder layers updates the nodes from messages
``W3 ∘ GELU ∘ W2 ∘ GELU ∘ W1 [h_i, e_ij, h_j]`` summed over the neighbours and divided by 30,
with a residual connection and layer norm, a position-wise feed-forward block (128 → 512 → 128,
residual, layer norm), then updates the edges by the same kind of message (``W11``–``W13``),
residual, layer norm. The 128-wide node states after the last layer are the residue features.
The sequence decoder of the published network is not used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryosamu_cli.errors import WeightsError

FEATURE_DIM = 128
ENCODER_LAYERS = 3
BACKBONE_ATOMS = ("N", "CA", "C", "O")
RBF_RANGE_A = (2.0, 22.0)
RBF_COUNT = 16
MAX_RELATIVE_OFFSET = 32
POSITIONAL_DIM = 16
MESSAGE_SCALE = 30.0
DISTANCE_EPS = 1e-6
# Cβ = a·(b × c) + b·b + c·c + Cα with b = Cα − N, c = C − Cα (ideal tetrahedral geometry).
VIRTUAL_CB = (-0.58273431, 0.56802827, -0.54067466)
# Ordered (from, to) atom pairs of the distance features; the order is the published weights'.
ATOM_PAIRS = (("CA", "CA"), ("N", "N"), ("C", "C"), ("O", "O"), ("CB", "CB"),
              ("CA", "N"), ("CA", "C"), ("CA", "O"), ("CA", "CB"), ("N", "C"), ("N", "O"),
              ("N", "CB"), ("CB", "C"), ("CB", "O"), ("O", "C"), ("N", "CA"), ("C", "CA"),
              ("O", "CA"), ("CB", "CA"), ("C", "N"), ("O", "N"), ("CB", "N"), ("C", "CB"),
              ("O", "CB"), ("C", "O"))
# Prefixes of the published state dict that belong to the encoder (the decoder is left out).
ENCODER_PREFIXES = ("features.", "W_e.", "encoder_layers.")


@dataclass(frozen=True)
class Backbone:
    """The residues an encoder sees: standard amino acids with N, Cα, C and O all present.

    Attributes:
        xyz: ``(R, 4, 3)`` coordinates of N, Cα, C, O in Å.
        residue_number: ``(R,)`` author residue numbers (insertion codes dropped).
        chain_index: ``(R,)`` index into ``chains``.
        chains: Chain names, in file order.
    """

    xyz: np.ndarray
    residue_number: np.ndarray
    chain_index: np.ndarray
    chains: tuple[str, ...]


def backbone_of(atoms) -> Backbone:
    """The complete N–Cα–C–O backbones of ``atoms`` (a :class:`cryosamu_cli.structure.Atoms`).

    Raises:
        ValueError: No standard residue has a complete backbone.
    """
    from cryosamu_cli.structure import STANDARD_AMINO_ACIDS

    slot = {name: i for i, name in enumerate(BACKBONE_ATOMS)}
    found: dict[int, dict[int, np.ndarray]] = {}
    for xyz, name, residue in zip(atoms.xyz, atoms.atom_name, atoms.residue_index):
        if name in slot:
            found.setdefault(int(residue), {}).setdefault(slot[name], xyz)
    coords, numbers, chain_of, chains = [], [], [], {}
    for index, (chain, seqid, resname) in enumerate(atoms.residues):
        atoms_found = found.get(index, {})
        if resname not in STANDARD_AMINO_ACIDS or len(atoms_found) != len(BACKBONE_ATOMS):
            continue
        coords.append([atoms_found[i] for i in range(len(BACKBONE_ATOMS))])
        numbers.append(_residue_number(seqid))
        chain_of.append(chains.setdefault(chain, len(chains)))
    if not coords:
        raise ValueError("no standard residue with a complete N, CA, C, O backbone")
    return Backbone(np.asarray(coords, dtype=np.float32), np.asarray(numbers, dtype=np.int64),
                    np.asarray(chain_of, dtype=np.int64), tuple(chains))


def _residue_number(seqid: str) -> int:
    """``'42'``, ``'42A'``, ``'-3'`` → 42, 42, −3."""
    match = re.match(r"-?\d+", seqid.strip())
    return int(match.group()) if match else 0


class _FeedForward(nn.Module):
    """Position-wise 128 → 512 → 128 with GELU (tensor names ``W_in``, ``W_out``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.W_in = nn.Linear(width, 4 * width)
        self.W_out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(nn.functional.gelu(self.W_in(x)))


class EncoderLayer(nn.Module):
    """One message-passing layer: node update from neighbour messages, feed-forward, edge
    update (tensor names as published: ``W1``–``W3``, ``W11``–``W13``, ``norm1``–``norm3``,
    ``dense``)."""

    def __init__(self, width: int = FEATURE_DIM) -> None:
        super().__init__()
        self.W1, self.W2, self.W3 = (nn.Linear(3 * width, width), nn.Linear(width, width),
                                     nn.Linear(width, width))
        self.W11, self.W12, self.W13 = (nn.Linear(3 * width, width), nn.Linear(width, width),
                                        nn.Linear(width, width))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.dense = _FeedForward(width)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor,
                neighbours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``nodes`` (R, w), ``edges`` (R, k, w), ``neighbours`` (R, k) → updated both."""
        messages = self._messages(nodes, edges, neighbours, self.W1, self.W2, self.W3)
        nodes = self.norm1(nodes + messages.sum(dim=1) / MESSAGE_SCALE)
        nodes = self.norm2(nodes + self.dense(nodes))
        edge_messages = self._messages(nodes, edges, neighbours, self.W11, self.W12, self.W13)
        return nodes, self.norm3(edges + edge_messages)

    @staticmethod
    def _messages(nodes, edges, neighbours, first, second, third) -> torch.Tensor:
        """``third(gelu(second(gelu(first([h_i, e_ij, h_j])))))`` for every edge."""
        own = nodes.unsqueeze(1).expand(-1, neighbours.shape[1], -1)
        stacked = torch.cat([own, edges, nodes[neighbours]], dim=-1)
        gelu = nn.functional.gelu
        return third(gelu(second(gelu(first(stacked)))))


class _PositionalEncoding(nn.Module):
    """Relative residue position (or "another chain") → 16 features (tensor name ``linear``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * MAX_RELATIVE_OFFSET + 2, POSITIONAL_DIM)

    def forward(self, offset: torch.Tensor, same_chain: torch.Tensor) -> torch.Tensor:
        classes = torch.where(same_chain,
                              offset.clamp(-MAX_RELATIVE_OFFSET, MAX_RELATIVE_OFFSET)
                              + MAX_RELATIVE_OFFSET,
                              torch.full_like(offset, 2 * MAX_RELATIVE_OFFSET + 1))
        one_hot = nn.functional.one_hot(classes, 2 * MAX_RELATIVE_OFFSET + 2)
        return self.linear(one_hot.to(self.linear.weight.dtype))


class _EdgeFeatures(nn.Module):
    """Distances and relative positions of each edge → 128 features (``features.*``)."""

    def __init__(self, width: int = FEATURE_DIM) -> None:
        super().__init__()
        self.embeddings = _PositionalEncoding()
        self.edge_embedding = nn.Linear(POSITIONAL_DIM + RBF_COUNT * len(ATOM_PAIRS), width,
                                        bias=False)
        self.norm_edges = nn.LayerNorm(width)

    def forward(self, xyz, residue_number, chain_index, neighbours) -> torch.Tensor:
        positions = atom_positions(xyz)
        distances = [edge_distances(positions[a], positions[b], neighbours)
                     for a, b in ATOM_PAIRS]
        rbf = torch.cat([radial_basis(d) for d in distances], dim=-1)
        offset = residue_number.unsqueeze(1) - residue_number[neighbours]
        same_chain = chain_index.unsqueeze(1) == chain_index[neighbours]
        features = torch.cat([self.embeddings(offset, same_chain), rbf], dim=-1)
        return self.norm_edges(self.edge_embedding(features))


def atom_positions(xyz: torch.Tensor) -> dict[str, torch.Tensor]:
    """N, CA, C, O of ``xyz`` (R, 4, 3) and the virtual CB, each (R, 3)."""
    n, ca, c, o = xyz.unbind(dim=1)
    b, c_vec = ca - n, c - ca
    a = torch.linalg.cross(b, c_vec, dim=-1)
    cb = VIRTUAL_CB[0] * a + VIRTUAL_CB[1] * b + VIRTUAL_CB[2] * c_vec + ca
    return {"N": n, "CA": ca, "C": c, "O": o, "CB": cb}


def nearest_neighbours(ca: torch.Tensor, k: int, rows_per_block: int = 2048) -> torch.Tensor:
    """Indices (R, min(k, R)) of each residue's ``k`` nearest Cα (itself first), by blocks of
    rows so that no R × R matrix is held."""
    count = min(k, ca.shape[0])
    blocks = []
    for start in range(0, ca.shape[0], rows_per_block):
        rows = ca[start:start + rows_per_block]
        squared = ((rows.unsqueeze(1) - ca.unsqueeze(0)) ** 2).sum(dim=-1)
        blocks.append(torch.topk(torch.sqrt(squared + DISTANCE_EPS), count, dim=-1,
                                 largest=False).indices)
    return torch.cat(blocks)


def edge_distances(start: torch.Tensor, end: torch.Tensor,
                   neighbours: torch.Tensor) -> torch.Tensor:
    """``|start_i − end_j|`` (R, k) for each residue ``i`` and each of its neighbours ``j``."""
    return torch.sqrt(((start.unsqueeze(1) - end[neighbours]) ** 2).sum(dim=-1) + DISTANCE_EPS)


def radial_basis(distances: torch.Tensor) -> torch.Tensor:
    """Gaussians ``exp(−((d − μ)/σ)²)`` at 16 centres μ from 2 to 22 Å, σ = 20/16 Å."""
    low, high = RBF_RANGE_A
    centres = torch.linspace(low, high, RBF_COUNT, dtype=distances.dtype,
                             device=distances.device)
    width = (high - low) / RBF_COUNT
    return torch.exp(-(((distances.unsqueeze(-1) - centres) / width) ** 2))


class ProteinMPNNEncoder(nn.Module):
    """Backbone → ``R × 128`` residue features (see the module docstring)."""

    def __init__(self, neighbours: int = 48, layers: int = ENCODER_LAYERS,
                 width: int = FEATURE_DIM) -> None:
        super().__init__()
        self.neighbours = neighbours
        self.features = _EdgeFeatures(width)
        self.W_e = nn.Linear(width, width)
        self.encoder_layers = nn.ModuleList(EncoderLayer(width) for _ in range(layers))

    def forward(self, xyz: torch.Tensor, residue_number: torch.Tensor,
                chain_index: torch.Tensor) -> torch.Tensor:
        """``xyz`` (R, 4, 3) N/CA/C/O, residue numbers and chain indices (R,) → (R, width)."""
        neighbours = nearest_neighbours(xyz[:, 1], self.neighbours)
        edges = self.W_e(self.features(xyz, residue_number, chain_index, neighbours))
        nodes = edges.new_zeros(xyz.shape[0], edges.shape[-1])
        for layer in self.encoder_layers:
            nodes, edges = layer(nodes, edges, neighbours)
        return nodes

    @torch.inference_mode()
    def encode(self, backbone: Backbone) -> dict[str, torch.Tensor]:
        """Residue features of every chain of ``backbone`` (the whole complex is one graph, so
        a residue sees its neighbours in other chains), as ``{chain: (R_chain, width)}``."""
        dtype = self.W_e.weight.dtype
        nodes = self(torch.from_numpy(backbone.xyz).to(dtype),
                     torch.from_numpy(backbone.residue_number),
                     torch.from_numpy(backbone.chain_index))
        chain_index = torch.from_numpy(backbone.chain_index)
        return {name: nodes[chain_index == i] for i, name in enumerate(backbone.chains)}


def load_encoder(path: str | os.PathLike) -> ProteinMPNNEncoder:
    """The encoder with the published weights of ``path`` (e.g. ``v_48_020.pt``), in eval mode.

    Raises:
        WeightsError: The file is missing, not a ProteinMPNN checkpoint, truncated, or its
            encoder tensors do not have the published names and shapes.
    """
    state, neighbours = _read_checkpoint(Path(path))
    encoder = ProteinMPNNEncoder(neighbours=neighbours)
    wanted = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    try:
        encoder.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: not ProteinMPNN's encoder weights "
                           f"({str(exc).splitlines()[0]})") from exc
    return encoder.eval()


def _read_checkpoint(path: Path) -> tuple[dict, int]:
    """``model_state_dict`` and ``num_edges`` of a ProteinMPNN file (``weights_only=True``)."""
    import pickle

    if not path.is_file():
        raise WeightsError(f"ProteinMPNN weights not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable ProteinMPNN checkpoint (torch.load with "
                           f"weights_only=True failed: {type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_state_dict"),
                                                          dict):
        raise WeightsError(f"{path} is not a ProteinMPNN checkpoint (no 'model_state_dict')")
    return checkpoint["model_state_dict"], int(checkpoint.get("num_edges", 48))
