"""The job's command line and driver checks without Ray: JobOptions from argparse, --help with
defaults, the settings recorded in _run.json (every SegmenterConfig field, size resolved), inputs
that would not outlive `ray job submit`, the stderr filter for Ray Data's restart warning, and the
package's import structure."""
import ast
import json
import os
import subprocess
import sys
import time
from dataclasses import fields

import pytest

from jobs import pseudo_label
from jobs.label import driver, inputs
from jobs.label.options import ActorPool, JobOptions
from jobs.label.quiet import HARMLESS, without_lines
from job_helpers import ROOT, SAMPLE, compact_ckpt, tiny_corpus  # noqa: F401  (fixture)
from vos_core.inference import SegmenterConfig


def options(*argv) -> JobOptions:
    return pseudo_label.options_from_args(pseudo_label.build_parser().parse_args(list(map(str, argv))))


def test_options_from_the_command_line():
    o = options("--size", "48", "--budget", "20000", "--actors", "2:5", "--precision", "bf16",
                "--storage-options", '{"anon": true}', "--resize-annotations")
    assert o.actors == ActorPool(2, 5) and o.storage_options == {"anon": True}
    assert o.segmenter == SegmenterConfig(size=48, budget=20000, precision="bf16", resize_annotations=True,
                                          keep_probs=False, keep_uncertainty=True)
    assert options().actors == ActorPool(1, None) and options("--actors", "3").actors == ActorPool(3, 3)
    assert JobOptions().segmenter.keep_probs is False  # the job's outputs are forced, however it is built
    assert JobOptions(segmenter=SegmenterConfig(keep_uncertainty=False)).segmenter.keep_uncertainty is True


@pytest.mark.parametrize("argv, message", [
    (["--prefetch", "0"], "--prefetch 0 is out of range"),
    (["--budget", "0"], "budget must be a positive integer"),
    (["--actors", "3:1"], "need 1 <= min <= max"),
    (["--storage-options", "{nope"], "--storage-options is not JSON"),
])
def test_bad_options_exit_2_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        pseudo_label.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        pseudo_label.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = SegmenterConfig()
    for shown in (f"(default {d.budget})", f"(default {d.merge_thres})", f"(default {d.update_rate})",
                  "(default: the checkpoint's working size", "(default: 16)", "(default: 3)", "(default: 4)",
                  "(default: 0.0)", "(default auto"):
        assert shown in text, shown


def _ckpt_with_working_size(tmp_path, size):
    import torch
    from vos_core.model import AFBURR, COMPACT, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / f"ws{size}.pth"
    save_checkpoint(AFBURR(COMPACT), str(path), extra={"working_size": size})
    return path


def test_run_record_stores_every_setting_with_the_working_size(compact_ckpt, tmp_path):  # noqa: F811
    ckpt = _ckpt_with_working_size(tmp_path, 64)
    manifest = tiny_corpus(tmp_path / "corpus", n=2, frames=2)
    out = tmp_path / "out"
    p = driver.plan(options("--manifest", manifest, "--output", out, "--checkpoint", ckpt))
    record = json.loads((out / "_run.json").read_text())
    assert set(record["settings"]) == {f.name for f in fields(SegmenterConfig)}
    assert record["settings"] == {**SegmenterConfig().to_dict(), "size": 64, "keep_probs": False}
    assert p.worker.settings == record["settings"] and len(p.pending) == 2
    assert SegmenterConfig.from_dict(record["settings"]).size == 64  # what the workers build
    # resuming: the same resolved settings are the same run; another size is refused
    assert driver.plan(options("--manifest", manifest, "--output", out, "--checkpoint", ckpt, "--size", "64")).resumed
    with pytest.raises(driver.OutputError, match="settings"):
        driver.plan(options("--manifest", manifest, "--output", out, "--checkpoint", ckpt, "--size", "32"))
    # weights without a working size, no --size: the input size, recorded as 0
    p = driver.plan(options("--manifest", manifest, "--output", tmp_path / "o2", "--checkpoint", compact_ckpt))
    assert p.worker.settings["size"] == 0 and SegmenterConfig.from_dict(p.worker.settings).working_size_for(None) is None


@pytest.fixture
def in_ray_package(tmp_path, monkeypatch):
    """As if the code ran from Ray's working-dir package (`ray job submit --working-dir`)."""
    pkg = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(inputs, "ray_package_root", lambda: pkg)
    return pkg


def test_under_ray_job_submit_inputs_and_output_in_the_package_are_refused(in_ray_package, compact_ckpt,  # noqa: F811
                                                                         tmp_path, capsys, monkeypatch):
    manifest = tiny_corpus(in_ray_package / "corpus", n=1, frames=2)
    assert pseudo_label.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                              "--checkpoint", str(compact_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "pseudo-label: error: the manifest" in err and "temporary working-dir package" in err
    assert not (tmp_path / "out").exists()
    # a manifest outside the package listing videos inside it
    outside = tmp_path / "m.csv"
    outside.write_text(manifest.read_text())
    assert pseudo_label.main(["--manifest", str(outside), "--output", str(tmp_path / "out"),
                              "--checkpoint", str(compact_ckpt)]) == 2
    assert "video 'vid00'" in capsys.readouterr().err
    # the default output, ./vos_output/<run_id>, is inside the package (Ray runs the driver there)
    monkeypatch.chdir(in_ray_package)
    assert pseudo_label.main(["--checkpoint", str(compact_ckpt)]) == 2
    assert "--output vos_output/" in capsys.readouterr().err


def test_under_ray_job_submit_the_sample_corpus_is_copied_next_to_the_output(in_ray_package, compact_ckpt,  # noqa: F811
                                                                             tmp_path):
    out = tmp_path / "out"
    p = driver.plan(options("--output", out, "--checkpoint", compact_ckpt))
    copy = out / "_sample_corpus"
    assert p.manifest == str(copy / "manifest.csv")
    assert json.loads((out / "_run.json").read_text())["manifest"] == p.manifest
    assert [t.video_id for t in p.tasks] == ["judo-a", "judo-b", "judo-mp4"]
    for t in p.tasks:  # what videos.video_uri will record: inside the output, and there
        assert t.video_uri.startswith(str(copy)) and os.path.exists(t.video_uri) and os.path.exists(t.annotations_uri)
    assert sorted(os.listdir(copy / "davis" / "JPEGImages" / "judo-a")) == \
        sorted(os.listdir(SAMPLE / "davis" / "JPEGImages" / "judo-a"))
    assert driver.plan(options("--output", out, "--checkpoint", compact_ckpt)).resumed  # the same run again


def test_outside_a_ray_package_the_sample_is_read_in_place(compact_ckpt, tmp_path):  # noqa: F811
    assert inputs.ray_package_root() is None  # the test checkout is not a Ray package
    p = driver.plan(options("--output", tmp_path / "out", "--checkpoint", compact_ckpt))
    assert p.manifest == inputs.SAMPLE_MANIFEST and not (tmp_path / "out" / "_sample_corpus").exists()


def test_stderr_filter_drops_only_the_known_line(capfd):
    with without_lines():
        os.write(2, b"before\n[2026 E 1 1] core_worker.cc:2465: Actor X " + HARMLESS[0] + b". See ray#53727.\n")
        os.write(2, b"a partial line")
        time.sleep(0.3)  # passed on after a pause, without waiting for its newline
        os.write(2, b" finished later\n")
    os.write(2, b"after " + HARMLESS[0] + b"\n")  # outside the block: untouched
    err = capfd.readouterr().err
    assert err == "before\na partial line finished later\nafter " + HARMLESS[0].decode() + "\n"


def _imports(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1 - (node.level - 1)]) if node.level else ""
            names.add(f"{base}.{node.module}" if base and node.module else (node.module or base))
    return names


def test_package_structure_has_no_cycles_between_its_parts():
    """jobs.cli is imported by nothing in jobs; the write side (jobs.label) and the read side
    (jobs.inspect) do not import each other; the shared modules import neither."""
    jobs = ROOT / "jobs"
    shared = {"schema", "layout", "codec", "storage", "errors", "command"}
    for path in jobs.rglob("*.py"):
        if "sample_corpus" in path.parts:
            continue
        imported = _imports(path)
        rel = path.relative_to(jobs).as_posix()
        assert "jobs.cli" not in imported, f"{rel} imports jobs.cli"
        if rel.startswith("label/"):
            assert not any(m.startswith("jobs.inspect") for m in imported), f"{rel} imports the read side"
        if rel.startswith("inspect/"):
            assert not any(m.startswith("jobs.label") for m in imported), f"{rel} imports the write side"
        if path.stem in shared and path.parent == jobs:
            assert not any(m.startswith(("jobs.label", "jobs.inspect")) for m in imported), rel


def test_render_runs_as_a_module_without_loading_the_vos_command():
    probe = "import sys, runpy; import jobs.render, jobs.report, jobs.query; print('jobs.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def test_vos_hands_its_delegated_commands_to_modules_that_exist():
    import importlib

    from jobs.cli import DELEGATED, build_parser

    assert DELEGATED["train"][0] == "vos_train.__main__"
    for name, (module, _) in DELEGATED.items():
        assert callable(importlib.import_module(module).main), name
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"segment", "eval", "pseudo-label", "train", "query", "render", "report"} <= set(commands)
