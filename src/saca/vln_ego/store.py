"""VLN-Ego storage: frames once per trajectory in sharded Parquet files, samples in one Parquet table.

Layout of ``results/{dataset}/vln_ego/{split}/``::

    frames/shard-00000.parquet   columns episode_id (str), frame (int32), image (binary, encoded)
                                 one row group per trajectory, rows in frame order
    samples.parquet              one row per (trajectory, step): see SAMPLE_COLUMNS
    manifest.json                counts, settings, format version

A sample points at its frames by ``shard`` (path relative to the split
directory) and ``row_group``; frame ``i`` of the trajectory is row ``i`` of
that row group. At the paper's scale (1.8 M samples, ~20 k trajectories) this
is a few hundred shard files instead of millions of loose JPEGs, and reading a
sample's frames decodes one row group.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saca import SacaError

FORMAT_VERSION = 1

FRAME_SCHEMA = pa.schema([("episode_id", pa.string()), ("frame", pa.int32()), ("image", pa.binary())])
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("episode_id", pa.string()),
        ("scene_id", pa.string()),
        ("instruction", pa.string()),
        ("step", pa.int32()),
        ("num_frames", pa.int32()),
        ("history", pa.list_(pa.int32())),
        ("actions", pa.list_(pa.int8())),
        ("answer", pa.string()),
        ("turn_angle", pa.float32()),
        ("shard", pa.string()),
        ("row_group", pa.int32()),
    ]
)
SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 frame. Pillow's encoders are deterministic: same pixels, same bytes."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
    elif fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        raise SacaError(f"unknown image format '{fmt}' (jpeg or png)")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


class FrameShardWriter:
    """Writes trajectories into ``frames/shard-NNNNN.parquet``, ``per_shard`` trajectories a shard."""

    def __init__(self, split_dir: Path, per_shard: int):
        self.split_dir = Path(split_dir)
        (self.split_dir / "frames").mkdir(parents=True, exist_ok=True)
        self.per_shard = max(1, int(per_shard))
        self._shard = -1
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0

    def add(self, episode_id: str, encoded_frames: Sequence[bytes]) -> tuple[str, int]:
        """Append one trajectory; returns ``(shard relative path, row_group)``."""
        if self._writer is None or self._in_shard >= self.per_shard:
            self._roll()
        table = pa.table(
            {
                "episode_id": [str(episode_id)] * len(encoded_frames),
                "frame": list(range(len(encoded_frames))),
                "image": list(encoded_frames),
            },
            schema=FRAME_SCHEMA,
        )
        self._writer.write_table(table, row_group_size=max(1, len(encoded_frames)))
        rg = self._in_shard
        self._in_shard += 1
        return self._rel, rg

    def _roll(self) -> None:
        self.close()
        self._shard += 1
        self._rel = f"frames/shard-{self._shard:05d}.parquet"
        self._writer = pq.ParquetWriter(
            self.split_dir / self._rel, FRAME_SCHEMA, compression="none", write_statistics=False
        )
        self._in_shard = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_samples(split_dir: Path, rows: Iterable[dict]) -> int:
    rows = list(rows)
    cols = {name: [r[name] for r in rows] for name in SAMPLE_COLUMNS}
    table = pa.table(cols, schema=SAMPLE_SCHEMA)
    pq.write_table(table, Path(split_dir) / "samples.parquet", compression="zstd", write_statistics=False)
    return len(rows)


class VlnEgoDataset:
    """Random access to VLN-Ego samples and their frames.

    ``dataset[i]`` is a sample dict (keys :data:`SAMPLE_COLUMNS`);
    ``frames(sample, indices)`` decodes frames of the sample's trajectory, with a
    small LRU cache of decoded trajectories. A sample whose frame shard is
    missing or unreadable raises SacaError naming the sample and the shard.
    """

    def __init__(self, split_dir: str | os.PathLike, cache_trajectories: int = 8):
        self.split_dir = Path(split_dir)
        path = self.split_dir / "samples.parquet"
        if not path.exists():
            raise SacaError(f"{path}: VLN-Ego samples file does not exist")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise SacaError(f"{path}: unreadable VLN-Ego samples file ({err})") from err
        missing = [c for c in SAMPLE_COLUMNS if c not in table.column_names]
        if missing:
            raise SacaError(f"{path}: missing columns {missing}")
        self._rows = table.to_pylist()
        self._cache: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self._cache_size = cache_trajectories

    def check_frames(self) -> None:
        """Check that every frame shard the samples point at exists and holds their row groups.

        Reads the Parquet footers only (no frames), so a run that would need a missing or
        truncated shard fails before it starts, naming the first sample that points at it.
        """
        first: dict[str, dict] = {}
        max_rg: dict[str, int] = {}
        for s in self._rows:
            first.setdefault(s["shard"], s)
            max_rg[s["shard"]] = max(max_rg.get(s["shard"], -1), int(s["row_group"]))
        for shard, s in first.items():
            path = self.split_dir / shard
            if not path.is_file():
                raise SacaError(f"VLN-Ego sample {s['sample_id']}: frame shard {path} does not exist")
            try:
                n = pq.ParquetFile(path).metadata.num_row_groups
            except (pa.ArrowInvalid, OSError) as err:
                raise SacaError(f"VLN-Ego sample {s['sample_id']}: unreadable frame shard {path} ({err})") from err
            if max_rg[shard] >= n:
                bad = next(r for r in self._rows if r["shard"] == shard and int(r["row_group"]) >= n)
                raise SacaError(
                    f"VLN-Ego sample {bad['sample_id']}: frame shard {path} has {n} row groups, the sample "
                    f"points at row group {bad['row_group']}"
                )

    def trajectory(self, sample: dict) -> list[bytes]:
        """The encoded frames of the sample's trajectory (SacaError naming the sample and shard if unreadable)."""
        return list(self._trajectory(sample))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict:
        return self._rows[i]

    def __iter__(self):
        return iter(self._rows)

    def _trajectory(self, sample: dict) -> list[bytes]:
        key = (sample["shard"], int(sample["row_group"]))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.split_dir / sample["shard"]
        if not path.exists():
            raise SacaError(f"VLN-Ego sample {sample['sample_id']}: frame shard {path} does not exist")
        try:
            rg = pq.ParquetFile(path).read_row_group(key[1], columns=["episode_id", "image"])
        except (pa.ArrowInvalid, OSError, IndexError) as err:
            raise SacaError(f"VLN-Ego sample {sample['sample_id']}: cannot read row group {key[1]} of {path} ({err})") from err
        ids = rg.column("episode_id").to_pylist()
        if not ids or ids[0] != sample["episode_id"]:
            raise SacaError(
                f"VLN-Ego sample {sample['sample_id']}: row group {key[1]} of {path} holds episode "
                f"{ids[0] if ids else None!r}, not {sample['episode_id']!r}"
            )
        frames = rg.column("image").to_pylist()
        self._cache[key] = frames
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frames

    def frames(self, sample: dict, indices: Sequence[int]) -> list[np.ndarray]:
        traj = self._trajectory(sample)
        out = []
        for i in indices:
            if not 0 <= i < len(traj):
                raise SacaError(f"VLN-Ego sample {sample['sample_id']}: frame {i} outside its {len(traj)} frames")
            out.append(decode_image(traj[i]))
        return out

    def images(self, sample: dict) -> list[np.ndarray]:
        """History frames then the current frame, as the prompt shows them."""
        return self.frames(sample, list(sample["history"]) + [int(sample["step"])])
