"""Map quality and seconds of ``enhance --cube-size C --core-size K`` on the validation maps.

The networks are fine-tuned on 48³ crops while ``enhance`` tiles 64³ cubes; GroupNorm's
statistics and the linear attention's average run over the whole cube, so the cube size
changes what the network computes. Each map of ``compare_weights.py`` (the ``val`` pairs of a
split CSV in its six degradations; never ``eval`` pairs) is enhanced as ``enhance --resolution R
--band-limit global`` does at each cube / core pair and scored by CC_box / CC_mask against its
model map; means over the first three kinds (15 maps), all maps and per kind, and the network's
seconds.

    python benchmarks/cube_size.py training/pairs-v2.csv                  # ~25 min, 2 cores
    python benchmarks/cube_size.py training/pairs-v2.csv --sizes 64/50,96/80 --weights runs/x/best.pt
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from compare_weights import DEGRADATIONS, EARLIER_KINDS, validation_predictor

from cryosamu_cli.data.pairs import read_pairs
from cryosamu_cli.enhance.tiling import CORE_SIZE, CUBE_SIZE
from cryosamu_cli.training import validation

DEFAULT_SIZES = f"48/34,{CUBE_SIZE}/{CORE_SIZE},96/80"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_csv")
    parser.add_argument("--weights", action="append", default=None,
                        help="checkpoint or model name (repeatable; default: the shipped model)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="cube/core pairs, comma-separated")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    sizes = [parse_size(text) for text in args.sizes.split(",")]
    pairs = [p for p in read_pairs(args.split_csv) if p.split == "val"]
    maps = validation.validation_maps(pairs, DEGRADATIONS)
    predictors = {w: validation_predictor(w, args.precision) for w in args.weights or [None]}
    rows: dict[tuple, list[tuple[str, dict]]] = defaultdict(list)
    seconds: dict[tuple, float] = defaultdict(float)
    for vmap in maps:
        for weights, predict in predictors.items():
            for cube_size, core_size in sizes:
                key = (weights or "shipped", cube_size, core_size)
                start = time.perf_counter()
                output = validation.enhanced_like_enhance(predict, vmap, cube_size=cube_size,
                                                          core_size=core_size)
                seconds[key] += time.perf_counter() - start
                scores = vmap.scores(output)
                rows[key].append((validation.kind_of(vmap.name), scores))
                print(f"  {vmap.name:26s} {key[0]:32s} {cube_size}/{core_size}  "
                      f"cc_box {scores['cc_box']:.3f}  cc_mask {scores['cc_mask']:.3f}", flush=True)
    print_table(rows, seconds)


def parse_size(text: str) -> tuple[int, int]:
    """``"64/50"`` as ``(64, 50)``."""
    cube, core = text.split("/")
    return int(cube), int(core)


def print_table(rows: dict[tuple, list[tuple[str, dict]]], seconds: dict[tuple, float]) -> None:
    """One markdown row per weights and cube / core: the means and the network's seconds."""
    kinds = validation.VALIDATION_KINDS
    print("\n| weights | cube / core | CC_box / CC_mask, first three kinds | all | CC_mask: "
          + " / ".join(kinds) + " | seconds |\n|---|---|---|---|---|---|")
    for key, scored in rows.items():
        first = validation.mean_scores([s for kind, s in scored if kind in EARLIER_KINDS])
        every = validation.mean_scores([s for _, s in scored])
        by_kind = [validation.mean_scores([s for k, s in scored if k == kind])["cc_mask"]
                   for kind in kinds]
        print(f"| {key[0]} | {key[1]} / {key[2]} | {first['cc_box']:.3f} / {first['cc_mask']:.3f} "
              f"| {every['cc_box']:.3f} / {every['cc_mask']:.3f} | "
              + " / ".join(f"{v:.3f}" for v in by_kind) + f" | {seconds[key]:.0f} |")


if __name__ == "__main__":
    main()
