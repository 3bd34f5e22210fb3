"""Reads back what the real wandb wrote offline: the records of a run's `.wandb` file.

wandb keeps no reader of its own for this file (wandb-core, in Go, writes it), so the tests read it
here: LevelDB's log format (32 KiB blocks; a 7-byte header per record piece: crc32, length, type)
behind a 7-byte file header (":W&B", magic 0xBEE1, version 0), each record a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run_id: str = ""
    config: dict = field(default_factory=dict)
    history: list[tuple[int, dict]] = field(default_factory=list)  # (step, {key: JSON text})


def _pieces(data: bytes):
    if data[:4] != b":W&B" or struct.unpack("<HB", data[4:7]) != (0xBEE1, 0):
        raise ValueError("not a wandb transaction log")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero fill at the end of a block
            pos += room
            continue
        body = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        elif kind == LAST:
            yield parts + body


def read_run(path: Path) -> OfflineRun:
    """The run id, config and history (step by step) of one offline run folder or `.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    if path.is_dir():
        (path,) = path.glob("*.wandb")
    run = OfflineRun()
    for body in _pieces(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(body)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id = rec.run.run_id
            run.config.update({i.key: i.value_json for i in rec.run.config.update})
        elif kind == "history":
            run.history.append((rec.history.step.num,
                                {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}))
    return run
