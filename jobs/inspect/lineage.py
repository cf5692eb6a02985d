"""A corrections run together with the runs it corrects (``_run.json``'s ``parent_output``, up the
chain): DuckDB views of the labels as corrected.

``connect_lineage(output)`` returns a connection whose schema ``run0`` holds the run's own views
(``videos``, ``masks``, ``frames`` ...: jobs/inspect/read.py's), ``run1`` its parent's, ``run2``
the grandparent's, and whose default schema ``merged`` holds ``videos``, ``masks`` and ``frames``:
each video's committed rows from the newest run of the chain that committed it ``ok``. So
``SELECT ... FROM masks`` on it reads the corrected labels of every video, the untouched ones
from the parent, without anything being copied or recomputed.
"""
from __future__ import annotations

from .. import storage as st
from ..layout import read_run
from .read import ReadError, connect, open_layout

MAX_DEPTH = 32


def chain(output: str, storage: st.Storage | None = None) -> list[str]:
    """The run at ``output``, then its parent's output, and so on (newest first)."""
    storage = storage or st.Storage.from_env()
    out, seen = [output], set()
    while len(out) <= MAX_DEPTH:
        layout = open_layout(out[-1], storage)
        if layout.url() in seen:
            raise ReadError(f"{layout.url()}: its runs' parents form a cycle")
        seen.add(layout.url())
        parent = (read_run(layout) or {}).get("parent_output")
        if not parent:
            return out
        out.append(parent)
    raise ReadError(f"{output}: more than {MAX_DEPTH} runs of corrections")


def connect_lineage(output: str, storage: st.Storage | None = None):
    """DuckDB with schemas ``run0`` (this run), ``run1`` (its parent) ... and ``merged`` (the default:
    ``videos``, ``masks``, ``frames`` as corrected)."""
    import duckdb

    storage = storage or st.Storage.from_env()
    runs = chain(output, storage)
    con = duckdb.connect()
    for i, uri in enumerate(runs):
        con.execute(f"CREATE SCHEMA run{i}")
        con.execute(f"USE run{i}")
        connect(uri, storage, con=con)
    con.execute("CREATE SCHEMA merged")
    con.execute("USE merged")
    for table in ("videos", "masks", "frames"):
        parts = []
        for i in range(len(runs)):
            newer = " UNION ALL ".join(f"SELECT video_id FROM run{j}.videos WHERE status = 'ok'" for j in range(i))
            keep = f" AND video_id NOT IN ({newer})" if newer else ""
            ok = " AND status = 'ok'" if table == "videos" else ""
            parts.append(f"SELECT * FROM run{i}.{table} WHERE TRUE{ok}{keep}")
        con.execute(f"CREATE VIEW {table} AS " + " UNION ALL BY NAME ".join(parts))
    return con
