"""`ddfp status` from what run directories hold: the progress file a training rewrites, the job
marker of a submission, nothing else."""

import json
import subprocess
import sys

from pipeline.status import find_runs, status_table
from pipeline.train.fit import fit
from tests.helpers.smoke import paths, tiny_cfg


def test_status_reads_progress_and_job_markers(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    fit(tiny_cfg(**{"train.max_iters": 12, "run.log_every": 4}), paths(tiny_data, runs / "8" / "ddfp"), progress=False)
    progress = json.loads((runs / "8" / "ddfp" / "progress.json").read_text())
    assert (progress["iteration"], progress["total"], progress["val_epoch"]) == (12, 12, 1)
    queued = runs / "16" / "supervised"  # submitted, not started: only the marker
    queued.mkdir(parents=True)
    (queued / "slurm_job.json").write_text(json.dumps({"job_id": "987654_1", "split": "16", "method": "supervised",
                                                        "seed": 0, "log": "/logs/987654_1_0_log.err"}))
    assert find_runs([runs]) == [queued, runs / "8" / "ddfp"]
    lines = status_table(find_runs([runs]), tmp_path).splitlines()
    assert lines[0].split()[:5] == ["run", "split", "method", "seed", "state"]
    ddfp = lines[2].split()
    assert ddfp[:5] == ["runs/8/ddfp", "8", "ddfp", "0", "finished"] and "12/12" in ddfp
    assert f"{progress['val_miou']:.2f}" in lines[2] and "(epoch 1)" in lines[2]
    # No squeue lists the job (none here, or long gone): its state says so, with the log to read.
    assert lines[1].split()[:6] == ["runs/16/supervised", "16", "supervised", "0", "ended", "(job"]
    assert lines[1].endswith("/logs/987654_1_0_log.err")
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", str(runs)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.strip().splitlines() == lines
