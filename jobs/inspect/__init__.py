"""The read side: what a finished (or running) run holds, and ways to look at it.

    read.py     the read layer: open a run, DuckDB views (committed rows), one video's labels,
                its frames reopened, RLE decoding, frame file names
    export.py   `vos export`: davis / coco / sav / review, and a video's masks back to id-map PNGs
                (`jobs.query --decode-video`); export_select.py (the rows, streamed), export_files.py
                (destination, names, images), export_coco.py, export_sav.py, export_review.py,
                export_labelstudio.py (the formats)
    lineage.py  a corrections run with the runs it corrects: merged DuckDB views
    draw.py     drawing: object colours, overlays with contours, the U heatmap (numpy/OpenCV)
    render.py   one video as mp4, GIF or PNGs (`vos render`)
    flags.py    the rules that flag frames for review: quality first, relative rules second (pure functions)
    report.py   the static HTML report of a run (`vos report`), its plots and thumbnails
    page.py     the report's HTML
"""
