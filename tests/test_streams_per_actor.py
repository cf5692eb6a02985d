"""--streams-per-actor N: N videos at once in one actor, stepped together through one StreamBatcher.
The option is checked before Ray starts and recorded in _run.json; on a real local Ray, a run with 2 streams
commits every video once with the masks of a run with 1, and its videos do overlap in the one actor."""
import json

import pytest

from jobs import pseudo_label
from jobs.label import driver
from jobs.label.streams import pool_args, segmenter_for
from vos_core.model import SHIPPED_CHECKPOINT
from job_helpers import (FAST, assert_exactly_once, assert_same_masks, compact_ckpt, job_masks,  # noqa: F401
                         ray_runtime, read_table, tiny_corpus, write_mask, write_video_folder)


def options(*argv):
    return pseudo_label.options_from_args(pseudo_label.build_parser().parse_args(list(map(str, argv))))


@pytest.mark.parametrize("value, message", [("0", "--streams-per-actor 0 is out of range"),
                                            ("-2", "--streams-per-actor -2 is out of range"),
                                            ("1.5", "invalid int value: '1.5'")])
def test_bad_streams_per_actor_exits_2_in_one_line(value, message, capsys):
    with pytest.raises(SystemExit) as e:
        pseudo_label.main(["--streams-per-actor", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_streams_per_actor_reaches_the_run_record_the_worker_and_the_pool(compact_ckpt, tmp_path):  # noqa: F811
    assert options().streams_per_actor == 1 and options("--gpus-per-actor", "0.25").gpus_per_actor == 0.25
    manifest = tiny_corpus(tmp_path / "corpus", n=2, frames=2)
    p = driver.plan(options("--manifest", manifest, "--output", tmp_path / "out", "--checkpoint", compact_ckpt,
                            "--streams-per-actor", "3"))
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["streams_per_actor"] == 3
    assert p.worker.streams_per_actor == 3
    assert pool_args(1) == {"max_tasks_in_flight_per_actor": 1}
    assert pool_args(3) == {"max_tasks_in_flight_per_actor": 3, "max_concurrent_calls_per_actor": 3,
                            "enable_true_multi_threading": True}
    seg = object()
    assert segmenter_for(seg, 1) is seg and segmenter_for(seg, 2).segmenter is seg


@pytest.mark.slow
def test_two_streams_per_actor_give_the_masks_of_one(ray_runtime, tmp_path, capsys):  # noqa: F811
    # videos of different lengths: a stream that ends is replaced by the next video while the other goes on
    import csv

    lengths = {"a": 14, "b": 5, "c": 9, "d": 7}
    rows = []
    for i, (vid, n) in enumerate(lengths.items()):
        d = tmp_path / "corpus" / vid
        write_video_folder(d / "frames", n, seed=i)
        write_mask(d / "mask.png", box=(6 + 2 * i, 20 + 2 * i, 4, 18))
        rows.append({"video_id": vid, "video_uri": str(d / "frames"), "annotations_uri": str(d / "mask.png")})
    manifest = tmp_path / "corpus" / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    outs = {}
    for streams in (1, 2):
        out = tmp_path / f"out{streams}"
        rc = pseudo_label.main([*map(str, ["--manifest", manifest, "--output", out, "--checkpoint", SHIPPED_CHECKPOINT,
                                           "--actors", "1", "--streams-per-actor", streams]), *FAST])
        text = capsys.readouterr().out
        assert rc == 0, text
        assert f"{streams} video(s) at once" in text
        videos = assert_exactly_once(str(out), set(lengths))  # every video committed once, rows once
        assert {v: r["frames"] for v, r in videos.items()} == lengths
        outs[streams] = (str(out), videos)
    # Bit-identical masks, with the trained shipped weights. Batching two videos' frames changes the rounding
    # of the batched convolutions (probabilities equal to float rounding, not bit for bit), which flips a
    # pixel only where two objects tie to that precision: none here. A random model's outputs tie nearly
    # everywhere (about 0.5), and there the same runs differ in 0-1,065 pixels per video (the step_many
    # tests check such a model where its probabilities are decided).
    for vid in lengths:
        assert_same_masks(job_masks(outs[2][0], vid), job_masks(outs[1][0], vid), f"{vid}, 2 streams vs 1")

    def overlaps(videos):
        spans = sorted((r["started_at"], r["finished_at"]) for r in videos.values())
        return sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))

    assert overlaps(outs[1][1]) == 0  # one actor, one stream: one video after another
    assert overlaps(outs[2][1]) >= 1  # one actor, two streams: videos in the actor at the same time
