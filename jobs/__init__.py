"""The pseudo-labeling job around vos_core, and everything that reads its output.

    label/        the write side: the Ray job (driver, worker, commit protocol, row encoding ...)
    inspect/      the read side: the read layer, render, report, export
    schema.py     the three output tables and their columns
    layout.py     one run's dataset: file names, shards, the run and commit records
    codec.py      how masks (COCO RLE) and U maps (PNG) are stored in cells, both ways
    storage.py    fsspec URLs, S3-compatible endpoints, atomic writes
    errors.py     bad input (exit status 2) and the other exit statuses
    command.py    what the command lines share (help with defaults, bad input as one line)
    cli.py        the `vos` command; pseudo_label.py, query.py, render.py, report.py: its
                  subcommands, also runnable as `python -m jobs.<name>`
"""
