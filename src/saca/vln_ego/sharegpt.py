"""Export VLN-Ego to LLaMA-Factory's "sharegpt" layout.

Writes ``images/{episode_id}/{frame:04d}.{jpg|png}`` once per trajectory (the
encoded bytes are copied, not re-encoded), ``{name}.json`` with one record per
sample (``conversations`` with ``from: human/gpt``, ``images``, ``system``), and
a ``dataset_info.json`` entry so LLaMA-Factory can train on it directly.
"""

from __future__ import annotations

from pathlib import Path

from saca.io import atomic_dir, write_json
from saca.prompt import SYSTEM_MESSAGE, build_prompt
from saca.vln_ego.store import VlnEgoDataset


def export_sharegpt(split_dir: str | Path, out_dir: str | Path, name: str) -> int:
    ds = VlnEgoDataset(split_dir, cache_trajectories=1)
    ds.check_frames()  # a missing or truncated shard fails before anything is written
    with atomic_dir(out_dir) as tmp:
        written: set[str] = set()
        records = []
        for s in ds:
            ep = s["episode_id"]
            if ep not in written:
                frames = ds.trajectory(s)
                ext = "png" if frames and frames[0][:4] == b"\x89PNG" else "jpg"
                d = tmp / "images" / ep
                d.mkdir(parents=True, exist_ok=True)
                for i, data in enumerate(frames):
                    (d / f"{i:04d}.{ext}").write_bytes(data)
                written.add(ep)
            ext = "png" if (tmp / "images" / ep / "0000.png").exists() else "jpg"
            idx = list(s["history"]) + [int(s["step"])]
            records.append(
                {
                    "conversations": [
                        {"from": "human", "value": build_prompt(s["instruction"], len(s["history"]), s["turn_angle"], len(s["actions"]))},
                        {"from": "gpt", "value": s["answer"]},
                    ],
                    "images": [f"images/{ep}/{i:04d}.{ext}" for i in idx],
                    "system": SYSTEM_MESSAGE,
                }
            )
        write_json(tmp / f"{name}.json", records)
        write_json(
            tmp / "dataset_info.json",
            {
                name: {
                    "file_name": f"{name}.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "images": "images", "system": "system"},
                    "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
                }
            },
        )
    return len(records)
