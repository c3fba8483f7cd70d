"""One rank of a torchrun launch: run the pipeline and write what this rank returned.

python -m torch.distributed.run --nproc_per_node=2 tests/ddp_rank_result.py OUT [overrides]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from modelcycle.config import assemble, compose_config
from modelcycle.pipeline import run_pipeline
from modelcycle.ranks import global_rank
from modelcycle.tracking import Tracker


def main(out: Path, overrides: list[str]) -> None:
    a = assemble(compose_config(overrides))
    tracker = Tracker(a.tracking, a.workspace)
    result = run_pipeline(a.task, a.pipeline, a.trainer, tracker, a.workspace, a.resolved)
    record = {
        "report_dir": str(result.report_dir),
        "run_id": result.run_id,
        "folds": [dataclasses.asdict(f) for f in result.report.folds],
        "reference": result.report.reference,
    }
    (out / f"rank{global_rank()}.json").write_text(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
