"""Map–model scores computed by cctbx, run as ``python -m cryosamu_cli.benchmark.cctbx_backend MAP MODEL
RESOLUTION``; prints one JSON line. Kept free of torch (see ``benchmark.cctbx_scores``)."""

from __future__ import annotations

import json
import sys


def cctbx_scores(map_path: str, model_path: str, resolution_A: float) -> dict:
    """CC_box, CC_mask, CC_volume, CC_peaks and per-residue CC from ``map_model_cc``, and the
    unmasked map–model FSC and its 0.5 crossing from ``mtriage``."""
    import mmtbx.maps.map_model_cc as mmcc
    from iotbx.data_manager import DataManager
    from mmtbx.maps import mtriage

    manager = DataManager()
    manager.process_real_map_file(map_path)
    manager.process_model_file(model_path)
    mmm = manager.get_map_model_manager(map_files=map_path, model_file=model_path)
    map_data, symmetry = mmm.map_manager().map_data(), mmm.map_manager().crystal_symmetry()
    params = mmcc.master_params().extract().map_model_cc
    params.resolution = resolution_A
    task = mmcc.map_model_cc(map_data=map_data, pdb_hierarchy=mmm.model().get_hierarchy(),
                             crystal_symmetry=symmetry, params=params)
    task.validate()
    task.run()
    cc = task.get_results()
    triage_params = mtriage.master_params().extract()
    triage_params.resolution = resolution_A
    triage_params.mask_maps = False
    triage_params.include_curves = True
    triage = mtriage.mtriage(map_data=map_data, crystal_symmetry=symmetry,
                             xray_structure=mmm.model().get_xray_structure(),
                             params=triage_params).get_results().unmasked
    curve = triage.fsc_curve_model
    return {"cc_box": round(cc.cc_box, 4), "cc_mask": round(cc.cc_mask, 4),
            "cc_volume": round(cc.cc_volume, 4), "cc_peaks": round(cc.cc_peaks, 4),
            "fsc05": round(triage.d_fsc_model_05, 3),
            "fsc": [{"frequency_per_A": round(float(f), 6), "resolution_A": round(1 / f, 3),
                     "fsc": round(float(c), 5)} for f, c in zip(curve.d_inv, curve.fsc)],
            "atom_radius": cc.atom_radius,
            "rscc": [{"chain": r.chain_id, "seqid": (r.resseq + r.icode).strip(),
                      "resname": r.resname, "cc": round(r.cc, 4)} for r in cc.cc_per_residue]}


def main() -> None:
    """Entry point: print the scores of ``MAP MODEL RESOLUTION`` as one JSON line."""
    try:
        map_path, model_path, resolution = sys.argv[1:4]
        print(json.dumps(cctbx_scores(map_path, model_path, float(resolution))))
    except ImportError:
        sys.exit("the cctbx backend needs cctbx: pip install cctbx-base")
    except Exception as exc:  # cctbx raises Sorry, AssertionError, RuntimeError, ...
        message = str(exc).strip().splitlines()
        sys.exit(message[0] if message else type(exc).__name__)


if __name__ == "__main__":
    main()
