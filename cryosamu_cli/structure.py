"""Atomic models (PDB / mmCIF, optionally gzipped) through gemmi."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryosamu_cli.errors import CryosamuError


class StructureError(CryosamuError):
    """A model file is missing, unreadable or holds no atoms."""


@dataclass(frozen=True)
class Atoms:
    """The atoms of the first model, as flat arrays.

    Attributes:
        xyz: ``(M, 3)`` Cartesian coordinates in Å.
        element: ``(M,)`` element symbols, upper case (``'C'``, ``'SE'``).
        atomic_number: ``(M,)`` atomic numbers.
        b_iso: ``(M,)`` isotropic B-factors in Å².
        occupancy: ``(M,)`` occupancies.
        atom_name: ``(M,)`` atom names (``'CA'``).
        residue_index: ``(M,)`` index into ``residues`` of each atom's residue.
        residues: ``(chain, seqid, name)`` of every residue, in file order.
    """

    xyz: np.ndarray
    element: np.ndarray
    atomic_number: np.ndarray
    b_iso: np.ndarray
    occupancy: np.ndarray
    atom_name: np.ndarray
    residue_index: np.ndarray
    residues: tuple[tuple[str, str, str], ...]

    def __len__(self) -> int:
        return len(self.xyz)


def read_atoms(path: str | os.PathLike) -> Atoms:
    """Read every atom of the first model of a PDB or mmCIF file (alternate conformers kept).

    Raises:
        StructureError: Missing or unreadable file, or a model without atoms.
    """
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"model file not found: {path}")
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise StructureError(f"cannot read model {path}: {exc}") from exc
    if len(structure) == 0:
        raise StructureError(f"model {path} holds no atoms")
    return _atoms_of(structure[0], path)


def _atoms_of(model, path: Path) -> Atoms:
    """Flatten one gemmi model."""
    xyz, element, number, b_iso, occupancy, names, residue_index, residues = ([] for _ in range(8))
    for chain in model:
        for residue in chain:
            residues.append((chain.name, str(residue.seqid).strip(), residue.name))
            for atom in residue:
                xyz.append(atom.pos.tolist())
                element.append(atom.element.name.upper())
                number.append(atom.element.atomic_number)
                b_iso.append(atom.b_iso)
                occupancy.append(atom.occ)
                names.append(atom.name)
                residue_index.append(len(residues) - 1)
    if not xyz:
        raise StructureError(f"model {path} holds no atoms")
    return Atoms(np.array(xyz, float), np.array(element), np.array(number, int),
                 np.array(b_iso, float), np.array(occupancy, float), np.array(names),
                 np.array(residue_index, int), tuple(residues))


STANDARD_AMINO_ACIDS = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL MSE".split())
NUCLEOTIDES = frozenset("A C G U I DA DC DG DT DI N DN".split())
BACKBONE = frozenset(("N", "CA", "C", "O", "OXT"))


def protein_filters(atoms: Atoms) -> dict[str, bool]:
    """The structure filters of §3.1, each True when passed.

    ``protein_only``: no nucleotide residues; ``has_side_chains``: at least half of the
    non-glycine amino acids carry an atom beyond the backbone; ``no_unknown_residues``: no
    residue is ``UNK``; ``has_protein``: at least one standard amino acid.
    """
    names = [name for _, _, name in atoms.residues]
    amino = [i for i, n in enumerate(names) if n in STANDARD_AMINO_ACIDS]
    with_side_chain = set(atoms.residue_index[~np.isin(atoms.atom_name, list(BACKBONE))])
    checkable = [i for i in amino if names[i] != "GLY"]
    side_chain_fraction = (sum(i in with_side_chain for i in checkable) / len(checkable)
                           if checkable else 0.0)
    return {
        "has_protein": bool(amino),
        "protein_only": not any(n in NUCLEOTIDES for n in names),
        "has_side_chains": side_chain_fraction >= 0.5,
        "no_unknown_residues": "UNK" not in names,
    }


ONE_LETTER = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E",
              "GLY": "G", "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F",
              "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "MSE": "M"}


def chain_sequences(atoms: Atoms) -> dict[str, str]:
    """One-letter sequence of the standard amino acids of each chain, in file order."""
    sequences: dict[str, list[str]] = {}
    for chain, _, name in atoms.residues:
        if name in ONE_LETTER:
            sequences.setdefault(chain, []).append(ONE_LETTER[name])
    return {chain: "".join(letters) for chain, letters in sequences.items()}


def sequence_identity(first: str, second: str) -> float:
    """Identity of the optimal global alignment (BLOSUM62, gaps -10/-1, free end gaps) over
    the shorter sequence, computed with biotite.

    Raises:
        CryosamuError: biotite is not installed.
    """
    try:
        import biotite.sequence as bseq
        import biotite.sequence.align as balign
    except ImportError as exc:
        raise CryosamuError("sequence deduplication needs biotite: pip install "
                            "'cryosamu[struct]'") from exc
    if not first or not second:
        return 0.0
    matrix = balign.SubstitutionMatrix.std_protein_matrix()
    alignment = balign.align_optimal(bseq.ProteinSequence(first), bseq.ProteinSequence(second),
                                     matrix, gap_penalty=(-10, -1), terminal_penalty=False,
                                     max_number=1)[0]
    return float(balign.get_sequence_identity(alignment, mode="shortest"))


def max_chain_identity(first: dict[str, str], second: dict[str, str]) -> float:
    """The highest identity between any chain of one model and any chain of the other
    (identical sequences are compared once)."""
    best = 0.0
    for a in set(first.values()):
        for b in set(second.values()):
            best = max(best, 1.0 if a == b else sequence_identity(a, b))
    return best
