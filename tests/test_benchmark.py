"""``cryosamu benchmark``: timing report fields, quality report, plots."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import mrcfile
import pytest
from typer.testing import CliRunner

from cryosamu_cli.benchmark import quality
from cryosamu_cli.benchmark import report as benchmark_report
from cryosamu_cli.benchmark import timing as benchmark_timing
from cryosamu_cli.cli.app import app

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMING_FIELDS = {"name", "shape_zyx", "voxels", "volume_A3", "device", "batch_size", "precision",
                 "repeats", "cubes_total", "cubes_run", "cubes_skipped", "seconds_median",
                 "seconds_min", "seconds_max", "stage_seconds", "seconds_per_cube",
                 "voxels_per_s", "gflop_per_cube", "gflops_achieved", "peak_rss_MiB",
                 "peak_gpu_MiB", "precision_reason"}


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_timing_report_has_every_field(tmp_path, tiny_checkpoint):
    out = tmp_path / "timing.json"
    result = runner.invoke(app, ["benchmark", "time", "--sizes", "40,60", "--weights",
                                 str(tiny_checkpoint), "--device", "cpu", "--precision", "fp32", "--repeats", "2",
                                 "--warmup", "1", "--json", str(out), "--csv",
                                 str(tmp_path / "t.csv"), "--plot", str(tmp_path / "fig5.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len(report["records"]) == 2
    for record in report["records"]:
        assert set(record) == TIMING_FIELDS
        assert set(record["stage_seconds"]) == set(benchmark_timing.STAGES)
        assert record["repeats"] == 2 and record["precision"] == "fp32"
        assert record["precision_reason"] == "fp32: asked for"
        assert record["seconds_min"] <= record["seconds_median"] <= record["seconds_max"]
        assert record["cubes_run"] + record["cubes_skipped"] == record["cubes_total"]
        assert record["gflop_per_cube"] > 0 and record["gflops_achieved"] > 0
        assert record["peak_rss_MiB"] > 50 and record["peak_gpu_MiB"] is None
        assert sum(record["stage_seconds"].values()) <= record["seconds_median"] * 1.5
    assert report["records"][1]["voxels"] == 60 ** 3
    assert (tmp_path / "t.csv").read_text().count("\n") == 3
    _assert_png(tmp_path / "fig5.png")
    # results on stdout, progress on stderr; 17 columns do not fit 80, so one block per map
    # with whole numbers on their own lines
    assert "synthetic_60.mrc: run 3/3" in result.stderr and "seconds_median" not in result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    medians = [line for line in lines if line.startswith("  seconds_median: ")]
    assert [float(line.split(": ")[1]) for line in medians] == pytest.approx(
        [r["seconds_median"] for r in report["records"]], rel=1e-3)


def test_flop_count_scales_with_the_cube(tiny_config):
    from cryosamu_cli.model.unet import UNet3D

    model = UNet3D.from_config(tiny_config).eval()
    small, large = (benchmark_timing.flops_per_cube(model, n, "cpu") for n in (16, 32))
    # convolutions dominate: 8x the voxels -> about 8x the operations
    assert 7.0 < large / small < 9.5


@pytest.fixture
def pairs_csv(shared_data, tmp_path):
    folder = shared_data / "pairs" / "emd-5168"
    path = tmp_path / "pairs.csv"
    path.write_text("name,map,model,resolution,role,copy_map\n"
                    f"mono,{folder}/emd_5168_monomer.mrc,{folder}/3MFP.pdb,6.6,eval,"
                    f"{folder}/emd_5168_monomer.mrc\n"
                    f"nores,{folder}/emd_5168_monomer.mrc,{folder}/3MFP.pdb,,eval,\n"
                    f"other,{folder}/emd_5168_monomer.mrc,{folder}/3MFP.pdb,6.6,train,\n")
    return path


def test_quality_report_tables_json_and_plots(tmp_path, pairs_csv, tiny_checkpoint):
    out, plots = tmp_path / "q.json", tmp_path / "plots"
    result = runner.invoke(app, ["benchmark", "quality", str(pairs_csv), "--role", "eval",
                                 "--weights", str(tiny_checkpoint), "--json", str(out),
                                 "--csv", str(tmp_path / "q.csv"), "--plots", str(plots),
                                 "--full-band", "--bare", "--work-dir", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    pairs = {p["name"]: p for p in report["pairs"]}
    assert set(pairs) == {"mono", "nores"}
    assert pairs["nores"]["skipped"] == "no resolution given"
    maps = pairs["mono"]["maps"]
    assert set(maps) == {"deposited", "deposited_truncated", "cryosamu", "cryosamu_full_band",
                         "cryosamu_bare", "b_sharpened", "copy"}
    for scores in maps.values():
        assert {"cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05", "rscc"} <= set(scores)
        assert len(scores["rscc"]) == 369
    assert maps["deposited"]["cc_mask"] == pytest.approx(0.617, abs=0.01)  # cctbx: 0.617
    assert maps["copy"]["cc_box"] == maps["deposited"]["cc_box"]
    # the deposited map truncated at 6.6 Å (cctbx on the same file: CC_mask 0.670)
    assert maps["deposited_truncated"]["cc_mask"] == pytest.approx(0.670, abs=0.01)
    labels = {}
    for label in ("cryosamu", "cryosamu_full_band", "cryosamu_bare"):
        with mrcfile.open(tmp_path / "maps" / f"mono_{label}.mrc") as mrc:
            labels[label] = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode()
    assert "res 6.60 A (--resolution)" in labels["cryosamu"]
    assert "full band" in labels["cryosamu_full_band"]
    # the bare command's own choice: an estimate, or (this crop shows none) the default
    assert "--resolution" not in labels["cryosamu_bare"]
    assert "(estimated)" in labels["cryosamu_bare"] or "(not estimable)" in labels["cryosamu_bare"]
    for name in ("mono_fsc.png", "mono_rscc.png", "metrics_boxplot.png"):
        _assert_png(plots / name)


def test_one_map_and_its_model_score_as_their_csv_row(tmp_path, shared_data, tiny_checkpoint):
    folder = shared_data / "pairs" / "emd-5168"
    argv = ["benchmark", "quality", str(folder / "emd_5168_monomer.mrc"),
            str(folder / "3MFP.pdb"), "--weights", str(tiny_checkpoint), "--no-sharpen",
            "--work-dir", str(tmp_path / "maps")]
    one = runner.invoke(app, [*argv, "--resolution", "6.6", "--json", str(tmp_path / "one.json")])
    assert one.exit_code == 0, one.output
    (pair,) = json.loads((tmp_path / "one.json").read_text())["pairs"]
    assert pair["name"] == "emd_5168_monomer" and pair["resolution_A"] == 6.6
    assert pair["maps"]["deposited"]["cc_mask"] == pytest.approx(0.617, abs=0.01)  # cctbx 0.617
    assert "emd_5168_monomer" in one.stdout and "cc_mask" in one.stdout  # the results
    assert "scored" in one.stderr and "cc_mask" not in one.stderr  # the progress bar
    for extra, message in ((["--resolution", "0"], "--resolution R"), ([], "--resolution R")):
        refused = runner.invoke(app, [*argv, *extra])
        assert refused.exit_code == 1 and message in refused.stderr
    three = runner.invoke(app, [*argv[:4], str(folder / "3MFP.pdb"), "--resolution", "6.6"])
    assert three.exit_code == 1 and "got 3 files" in three.stderr


def test_quality_input_errors(tmp_path):
    missing = runner.invoke(app, ["benchmark", "quality", str(tmp_path / "none.csv")])
    assert missing.exit_code == 1 and "not found" in missing.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["benchmark", "quality", str(bad)])
    assert result.exit_code == 1 and "'map', 'model'" in result.stderr
    result = runner.invoke(app, ["benchmark", "time"])
    assert result.exit_code == 1 and "--sizes" in result.stderr


def test_work_dir_maps_are_reused_only_when_made_the_same_way(tmp_path, pairs_csv,
                                                              tiny_checkpoint, tiny_config):
    """A rerun with other weights enhances again instead of scoring the old maps."""
    import torch

    from cryosamu_cli.benchmark.quality import quality_report
    from cryosamu_cli.data.pairs import read_pairs
    from cryosamu_cli.model.unet import UNet3D
    from cryosamu_cli.weights import save_checkpoint

    torch.manual_seed(11)
    other = save_checkpoint(tmp_path / "other.pt", UNet3D.from_config(tiny_config))
    pairs = [p for p in read_pairs(pairs_csv) if p.name == "other"]
    work = tmp_path / "maps"
    enhanced = work / "other_cryosamu.mrc"

    def run(weights) -> tuple[float, int]:
        report = quality_report(pairs=pairs, weights=weights, device="cpu", work_dir=work,
                                sharpen=False)
        return report[0].maps["cryosamu"]["cc_mask"], enhanced.stat().st_mtime_ns

    first_cc, first_time = run(tiny_checkpoint)
    again_cc, again_time = run(tiny_checkpoint)
    assert (again_cc, again_time) == (first_cc, first_time)  # reused: the same weights
    other_cc, other_time = run(other)
    assert other_time != first_time and other_cc != first_cc  # enhanced again


def test_plots_without_matplotlib_fail_before_the_work_and_name_the_extra(tmp_path, pairs_csv,
                                                                         monkeypatch):
    """The hint keeps its extra ([plots] is not read as markup); nothing is scored or made."""
    import sys

    from cryosamu_cli.benchmark import quality, timing

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    worked = []
    monkeypatch.setattr(quality, "quality_report", lambda **kw: worked.append(kw))
    monkeypatch.setattr(timing, "time_enhance", lambda **kw: worked.append(kw))
    plots = tmp_path / "plots"
    result = runner.invoke(app, ["benchmark", "quality", str(pairs_csv), "--plots", str(plots)])
    assert result.exit_code == 1
    assert "pip install 'cryosamu[plots]'" in result.stderr
    result = runner.invoke(app, ["benchmark", "time", "--sizes", "32", "--plot",
                                 str(tmp_path / "t.png")])
    assert result.exit_code == 1 and "'cryosamu[plots]'" in result.stderr
    assert not worked and not plots.exists()


def _record(volume_A3: float, seconds: float) -> benchmark_timing.TimingRecord:
    return benchmark_timing.TimingRecord(
        name="m", shape_zyx=(1, 1, 1), voxels=1, volume_A3=volume_A3, device="cpu",
        batch_size=1, precision="fp32", repeats=1, cubes_total=1, cubes_run=1, cubes_skipped=0,
        seconds_median=seconds, seconds_min=seconds, seconds_max=seconds, stage_seconds={},
        seconds_per_cube=1.0, voxels_per_s=1.0, gflop_per_cube=1.0, gflops_achieved=1.0,
        peak_rss_MiB=1.0, peak_gpu_MiB=None)


def test_plots_state_their_units_keep_their_labels_and_colours_and_stop_at_nyquist():
    # 2 s per 10⁶ Å³ + 1 s: the legend states the slope in the axis's unit
    figure = benchmark_report.time_figure([_record(1e6, 3.0), _record(3e6, 7.0)])
    (legend,) = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == "2 s per 10⁶ Å³ + 1 s"
    renderer = figure.canvas.get_renderer()
    label_box = figure.axes[0].xaxis.label.get_window_extent(renderer)
    assert label_box.y0 > -3  # the x label inside the figure (without tight_layout: -16 px)
    curve = [{"frequency_per_A": f, "fsc": 1 - f} for f in np.linspace(0, 0.5, 11)]
    scores = {"fsc": curve, "fsc05": 4.0, "rscc": []}
    pairs = [quality.PairQuality("a", 4.0, {"deposited": scores, "cryosamu": scores},
                                 nyquist_per_A=0.25),
             quality.PairQuality("b", 4.0, {"cryosamu": scores, "zz_extra": scores})]
    colours = benchmark_report.map_colours(pairs)
    assert len(set(colours.values())) == 3  # one colour per kind of map, whatever the pair
    fsc = benchmark_report.fsc_figure(pairs[0], colours)
    lines = {line.get_label().split(" (")[0]: line for line in fsc.axes[0].get_lines()
             if line.get_label().startswith(("cryosamu", "deposited"))}
    assert lines["cryosamu"].get_color() == colours["cryosamu"]
    assert max(lines["cryosamu"].get_xdata()) <= 0.25 and fsc.axes[0].get_xlim()[1] == 0.25
