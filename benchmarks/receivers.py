"""`run.py bench weights`' pool: a receiver process, one rank of a weight group, as a generator's
engine worker would be, minus the engine: it joins the group at the rank it is given, receives each
version's packed buckets keeping only the bucket at hand (so eight fit a small machine), and meets
the sender at a barrier after each (so the sender's clock stops when every receiver has it).

    python -m benchmarks.receivers '<GlooInit as JSON>'

Each line on stdin is a version's `GlooUpdate` as JSON; the process ends at end of input.
"""

from __future__ import annotations

import json
import sys

from pipeline.collective import WeightGroup
from pipeline.weight_wire import BucketBuffers, GlooInit, GlooUpdate, receive


def main(init_json: str) -> None:
    init = GlooInit(**json.loads(init_json))
    group = WeightGroup(init.master_address, init.master_port, init.rank_offset, init.world_size, init.timeout_s,
                        init.key)
    buffers = BucketBuffers(init.bucket_bytes)
    for line in sys.stdin:
        receive(group, GlooUpdate(**json.loads(line)), buffers, lambda tensors: None)
        group.pg.barrier().wait()


if __name__ == "__main__":
    main(sys.argv[1])
