"""Radial power spectrum of a simulated map (prepare-data --simulate-from) next to a real one.

    python benchmarks/simulated_spectrum.py ../shared/data/unpaired/emd_6824.mrc \
        ../shared/data/structures/1akeA.pdb --png spectrum.png

Both maps are taken to 1 Å and normalised like training inputs; the spectra are printed at a
few resolutions (each scaled to its value at 20 Å) and plotted on a log scale.
"""

from __future__ import annotations

import argparse

import numpy as np

from cryosamu_cli import dataset, degrade, grid, mapio
from cryosamu_cli.structure import read_atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_map")
    parser.add_argument("model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    data, grid_info = mapio.read_map(args.real_map)
    reference = degrade.radial_power_spectrum(data, grid_info.voxel_size_zyx)
    real_1A = grid.resample_to_spacing(data, grid_info.voxel_size_zyx)
    real_1A = grid.normalise(real_1A, grid.normalisation_of(real_1A))
    atoms = dataset._heavy_atoms(read_atoms(args.model))
    simulated, _, _, params = degrade.simulated_pair(atoms, reference,
                                                     np.random.default_rng(args.seed))
    simulated = grid.normalise(simulated, grid.normalisation_of(simulated))
    curves = {"real": degrade.radial_power_spectrum(real_1A, (1.0, 1.0, 1.0)),
              "simulated": degrade.radial_power_spectrum(simulated, (1.0, 1.0, 1.0))}
    print(f"simulated: {params}")
    nyquist_real = 0.5 / max(grid_info.voxel_size_A)
    print(f"{'resolution (Å)':>15} {'real':>10} {'simulated':>10}")
    for resolution in (20, 12, 8, 6, 5, 4):
        values = [np.interp(1 / resolution, f, p) / np.interp(1 / 20, f, p)
                  for f, p in curves.values()]
        flag = "  (beyond the real map's Nyquist)" if 1 / resolution > nyquist_real else ""
        print(f"{resolution:>15} {values[0]:>10.3g} {values[1]:>10.3g}{flag}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for label, (f, p) in curves.items():
            ax.semilogy(f[1:], p[1:] / np.interp(1 / 20, f, p), label=label)
        ax.set(xlabel="spatial frequency (1/Å)", ylabel="power (scaled at 20 Å)")
        ax.legend()
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
