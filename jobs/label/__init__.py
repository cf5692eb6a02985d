"""The write side: the Ray job that pseudo-labels a corpus and commits each video's rows.

    options.py     JobOptions: every option of the job, typed, with its default
    driver.py      run(JobOptions): manifest, checkpoint, run record, pool, progress, summary
    inputs.py      the manifest's videos; inputs that would not outlive a `ray job submit` job
    manifest.py    reading and validating manifests (Parquet, CSV, JSON Lines, DAVIS root)
    pool.py        Ray: joining or starting it, pool size, the Ray Data pipeline
    quiet.py       drops Ray Data's harmless restart warning from the driver's stderr
    worker.py      what runs in an actor: VideoLabeler, process_video (one video in, rows out)
    background.py  the bounded in-order thread that encodes a frame's results
    commit.py      the commit protocol: how a video's rows land exactly once
    rows.py        row encoding: a FrameResult into masks/frames rows; the videos record
    parquet.py     streamed, atomically published Parquet files
    run_record.py  _run.json: creating, resuming, which videos a run committed
    progress.py    the driver's progress lines and the live frame counter actor
"""
