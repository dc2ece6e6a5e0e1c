"""Shared fixtures: seeded synthetic maps, a tiny checkpoint, the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Every map in ../shared/data that cryosamu can enhance (EMD-3001 has a non-orthogonal cell).
SHARED_MAPS = [
    "pairs/emd-5168/emd_5168.map",
    "pairs/emd-5168/emd_5168_monomer.mrc",
    "pairs/emd-5170/emd_5170.map",
    "pairs/emd-1997/1997.map",
    "pairs/emd-1461/emd_1461.mrc",
    "pairs/emd-1461/rotavirus_vp6-96o.mrc",
    "pairs/emd-2566/2566_3J6B_9.mrc",
    "pairs/emd-0093/emd_0093_MAP_m4A_cropped.mrc",
    "pairs/emd-5778/transmem.mrc",
    "pairs/emd-35448/35448_8ihl.mrc",
    "edge-cases/non_zero_origin_map.ccp4",
    "edge-cases/EMD-3197.map",
    "unpaired/emd_6824.mrc",
    "unpaired/emd_2513.mrc",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real EMDB data folder; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lies beside the checkout)")
    return SHARED_DATA


def smooth_volume(shape: tuple[int, int, int], seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A seeded, smooth, partly positive float32 volume."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (volume / volume.std()).astype(np.float32)


def write_mrc(path: Path, file_data: np.ndarray, *, voxel_size=(1.0, 1.0, 1.0),
              origin=(0.0, 0.0, 0.0), nstart=(0, 0, 0), axis_order=(1, 2, 3),
              cellb=(90.0, 90.0, 90.0)) -> Path:
    """Write ``file_data`` (file order: sections, rows, columns) with the given header fields."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(file_data.astype(np.float32))
        mrc.voxel_size = voxel_size
        mrc.header.origin = origin
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = nstart
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = axis_order
        mrc.header.cellb = cellb
        mrc.update_header_stats()
    return path


@pytest.fixture(scope="session")
def tiny_config():
    """A small U-Net configuration that runs a 64³ cube in well under a second: every kind of
    block once (one residual block per level, self-attention on the third level only, the
    bottleneck's cross-attention), so the suite's many enhances and training steps stay short."""
    from cryosamu_cli.model import UNetConfig

    return UNetConfig(base_channels=8, channel_mults=(1, 1, 2, 2), num_res_blocks=1,
                      attention_levels=(False, False, True, False), attention_heads=2,
                      attention_head_dim=8, cross_attention_heads=2, struct_dim=16)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A format-1 checkpoint of a seeded, untrained tiny network."""
    import torch

    from cryosamu_cli.model.unet import UNet3D
    from cryosamu_cli.weights import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    return save_checkpoint(path, UNet3D.from_config(tiny_config))


@pytest.fixture
def http_server():
    """A server on 127.0.0.1 answering from a mutable ``routes`` dict; yields (base_url, routes,
    hits) where ``hits`` counts requests per path. ``routes[path]`` is bytes (200), an int (that
    HTTP status), ``("cut", bytes)`` (announce the full length, send a third, close), or a
    function of the request count returning one of those."""
    import http.server
    import threading

    routes: dict = {}
    hits: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            hits[self.path] = hits.get(self.path, 0) + 1
            answer = routes.get(self.path, 404)
            if callable(answer):
                answer = answer(hits[self.path])
            if isinstance(answer, int):
                self.send_error(answer)
                return
            cut = isinstance(answer, tuple)
            body = answer[1] if cut else answer
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3] if cut else body)
            if cut:
                self.wfile.flush()
                self.connection.close()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes, hits
    server.shutdown()
