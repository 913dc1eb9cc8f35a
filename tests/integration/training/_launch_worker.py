"""A torchrun worker for test_launch.py: each rank writes what the rank helpers say."""

import json
import sys
from pathlib import Path

from genalign.training.launch import is_main_process, rank, world_size

out = Path(sys.argv[1])
(out / f"rank{rank()}.json").write_text(json.dumps({"world_size": world_size()}))
if is_main_process():
    (out / "result.json").write_text(json.dumps({"written_by": rank()}))
