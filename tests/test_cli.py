import json
import shutil

import numpy as np
import pytest
import torch

from conftest import require_shared
from vos_core.cli import build_parser, main
from vos_core.io import read_id_map


def test_parser_has_the_subcommands():
    parser = build_parser()
    args = parser.parse_args(["eval", "--results", "r", "--annotations", "a"])
    assert args.command == "eval" and args.output is None
    args = parser.parse_args(["segment", "--checkpoint", "c", "--frames", "f", "--annotations", "a", "--output", "o"])
    assert args.size is None and args.budget == 300_000 and not args.resize_annotations  # None: the checkpoint's size


def test_eval_end_to_end_matches_the_reference(tmp_path, capsys):
    root = require_shared("davis16-val-public")
    out = tmp_path / "scores.json"
    assert main(["eval", "--results", str(root / "STM_predictions"), "--annotations", str(root / "Annotations"),
                 "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "car-shadow" in table and "scooter-black" in table and "overall" in table
    scores = json.loads(out.read_text())
    ref = json.loads((root / "STM_reference_scores.json").read_text())["sequence"]
    for seq, expected in ref.items():
        got = scores["sequences"][seq]
        for key in ("J", "F"):
            assert [g is None for g in got[key]] == [r is None for r in expected[key]]
            assert max(abs(g - r) for g, r in zip(got[key], expected[key]) if r is not None) < 1e-6
    assert 0.85 < scores["J&F"] < 0.9


@pytest.fixture(scope="module")
def judo_inputs(tmp_path_factory):
    """cutie-judo frames 0-7 with the masks of frames 0 and 5 (the 853-wide one), and a small random checkpoint."""
    from vos_core.model import AFBURR, COMPACT, save_checkpoint

    src = require_shared("cutie-judo")
    root = tmp_path_factory.mktemp("judo")
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    for t in range(8):
        shutil.copy(src / "JPEGImages" / f"{t:05d}.jpg", root / "frames")
    for t in (0, 5):
        shutil.copy(src / "Annotations" / f"{t:05d}.png", root / "masks")
    torch.manual_seed(0)
    save_checkpoint(AFBURR(COMPACT), root / "compact.pth")
    return root


def _segment_args(root, output, *extra):
    return ["segment", "--checkpoint", str(root / "compact.pth"), "--frames", str(root / "frames"),
            "--annotations", str(root / "masks"), "--output", str(output), "--size", "120", "--device", "cpu",
            *extra]


def test_segment_writes_masks_and_stats(judo_inputs, tmp_path):
    out = tmp_path / "out"
    assert main(_segment_args(judo_inputs, out, "--resize-annotations")) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{t:05d}.png" for t in range(8)]
    lines = (out / "stats.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == list(range(8)) and records[3]["name"] == "00003"
    assert [r["annotated"] for r in records] == [t in (0, 5) for t in range(8)]
    assert records[7]["object_ids"] == [0, 1, 2]
    assert [o["object_id"] for o in records[7]["stats"]["objects"]] == [0, 1, 2]
    first = read_id_map(out / "00000.png")
    assert first.shape == (480, 854) and set(np.unique(first)) == {0, 1}
    assert 2 in np.unique(read_id_map(out / "00005.png"))


def test_segment_bad_inputs_exit_2_naming_the_file(judo_inputs, tmp_path, capsys):
    # a mask whose name is not a frame
    masks = tmp_path / "masks"
    shutil.copytree(judo_inputs / "masks", masks)
    shutil.copy(require_shared("cutie-judo", "Annotations", "00008.png"), masks)
    args = _segment_args(judo_inputs, tmp_path / "out")
    args[args.index("--annotations") + 1] = str(masks)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "00008.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    # a checkpoint that is not weights
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    args = _segment_args(judo_inputs, tmp_path / "out")
    args[args.index("--checkpoint") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err

    # frames that do not exist
    args = _segment_args(judo_inputs, tmp_path / "out")
    args[args.index("--frames") + 1] = str(tmp_path / "no-frames")
    assert main(args) == 2
    assert "no-frames" in capsys.readouterr().err


def test_eval_missing_ground_truth_exits_2(tmp_path, capsys):
    (tmp_path / "res" / "seq").mkdir(parents=True)
    (tmp_path / "gt").mkdir()
    assert main(["eval", "--results", str(tmp_path / "res"), "--annotations", str(tmp_path / "gt")]) == 2
    assert "seq" in capsys.readouterr().err
