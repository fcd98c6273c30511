"""The command line (issues 9 and 11): one package, one error contract, one consent rule.

* Layout: the subcommands live in ``theworld.cli`` and no library module imports it.
* Errors: every bad input (missing or unreadable files, wrong types and values, corrupt checkpoints, bad configs,
  decompression bombs) ends with a line starting ``error:`` on stderr and exit status 2, never a traceback.
* Consent: without ``--trust-remote-code`` nothing from a checkpoint folder executes, checked with modules planted in
  the folder that write a marker file when imported.
* ``theworld push`` uploads to a loopback hub server (the technique of ``tests/test_hub.py``).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from theworld.cli import SUBCOMMANDS, main

SRC = Path(__file__).resolve().parents[1] / "src" / "theworld"


def theworld_cmd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(sys.executable), "theworld")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "theworld.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)


def error_line(stderr: str) -> str:
    """The ``error: ...`` line of a command's stderr (progress bars end their lines with \\r); fails without one."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, f"expected one error line, got {lines!r} in {stderr[-2000:]!r}"
    return lines[0]


def solid_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, written row by row: a few hundred kB on disk
    for hundreds of megapixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def checkpoint(world_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "ckpt"
    world_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def files(checkpoint, tiny_bases, tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, made once."""
    root = tmp_path_factory.mktemp("inputs")
    out = {"root": root, "checkpoint": checkpoint, "gemma": Path(tiny_bases.gemma)}
    out["image"] = root / "red.png"
    Image.new("RGB", (48, 40), (220, 30, 30)).save(out["image"])
    out["small"] = root / "small.png"
    Image.new("RGB", (8, 8)).save(out["small"])
    out["text"] = root / "notes.png"
    out["text"].write_text("not an image")
    out["bomb_144mpx"] = solid_png(root / "bomb12k.png", 12_000, 12_000)
    out["bomb_400mpx"] = solid_png(root / "bomb20k.png", 20_000, 20_000)
    out["truncated"] = shutil.copytree(checkpoint, root / "truncated")
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out["badjson"] = shutil.copytree(checkpoint, root / "badjson")
    (out["badjson"] / "config.json").write_text('{"model_type": "theworld", ')
    out["badvalue"] = shutil.copytree(checkpoint, root / "badvalue")
    config = json.loads((out["badvalue"] / "config.json").read_text())
    (out["badvalue"] / "config.json").write_text(json.dumps({**config, "world_pooling": 0}))
    out["noweights"] = shutil.copytree(checkpoint, root / "noweights")
    os.remove(out["noweights"] / "model.safetensors")
    out["data"] = root / "data.jsonl"
    out["data"].write_text(json.dumps({"image": "red.png", "caption": "The red square is left of it.", "label": 1}) + "\n")
    out["yaml"] = root / "bad.yaml"
    out["yaml"].write_text("output_dir: [unclosed\n")
    out["list_yaml"] = root / "list.yaml"
    out["list_yaml"].write_text("- a\n- b\n")
    out["a_file"] = root / "a_file"
    out["a_file"].write_text("x")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------------
def _imports_cli(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            absolute = module if node.level == 0 else None
            if absolute and (absolute == "theworld.cli" or absolute.startswith("theworld.cli.")):
                found.append(f"from {module} import ...")
            if node.level and (module == "cli" or module.startswith("cli.")):
                found.append(f"from {'.' * node.level}{module} import ...")
            if node.level and not module and any(alias.name == "cli" for alias in node.names):
                found.append("from . import cli")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "theworld.cli" or a.name.startswith("theworld.cli.")]
    return found


def test_library_never_imports_the_command_line(tmp_path):
    library = [p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts]
    assert len(library) > 15
    offenders = {str(p.relative_to(SRC)): _imports_cli(p) for p in library if _imports_cli(p)}
    assert not offenders
    # the scan finds each way of importing it
    probe = tmp_path / "probe.py"
    probe.write_text("from theworld.cli import echo\nfrom .cli import echo\nfrom . import cli\nimport theworld.cli.train\n")
    assert len(_imports_cli(probe)) == 4
    # every subcommand is a module of the package with add_arguments and run
    for name, (module, _) in SUBCOMMANDS.items():
        assert module == f"theworld.cli.{name}" and (SRC / "cli" / f"{name}.py").is_file()


def test_training_is_split_by_concept_and_keeps_its_imports():
    import theworld.training as training

    parts = {p.stem for p in (SRC / "training").glob("*.py")}
    assert {"config", "data_order", "loss", "schedule", "state", "plots", "model", "loop"} <= parts
    assert not (SRC / "training.py").exists()
    for name in ("TrainConfig", "Trainer", "train", "load_train_config", "accumulate_gradients", "lr_factor",
                 "optimizer_state_to_files", "preset_freeze_flags", "DataOrder", "plot_loss_curve"):
        assert getattr(training, name).__module__.startswith("theworld.training."), name


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: theworld {command}") and "options:" in out


# ----------------------------------------------------------------------------------------------------------------------
# The error contract, in process (the console script is `sys.exit(main())`)
# ----------------------------------------------------------------------------------------------------------------------
BAD_INPUTS = [
    # usage errors (argparse)
    (["frobnicate"], r"error: argument command: invalid choice: 'frobnicate'"),
    (["generate", "--prompt", "hi"], r"error: the following arguments are required: --model"),
    (["eval", "--checkpoint", "{checkpoint}", "--mode", "vote"], r"error: argument --mode: invalid choice: 'vote'"),
    (["generate", "--model", "{checkpoint}", "--prompt", "hi", "--max-new-tokens", "two"],
     r"error: argument --max-new-tokens: invalid int value: 'two'"),
    (["tiny", "{root}/b", "--size", "huge"], r"error: argument --size: invalid choice: 'huge'"),
    (["demo", "--projection-mode", "pixel"], r"error: argument --projection-mode: invalid choice: 'pixel'"),
    # generate
    (["generate", "--model", "{checkpoint}", "--image", "{root}/missing.png", "--prompt", "hi"],
     r"error: image file '.*missing.png' does not exist"),
    (["generate", "--model", "{checkpoint}", "--image", "{text}", "--prompt", "hi"],
     r"error: cannot read '.*notes.png' as an image \(cannot identify image file"),
    (["generate", "--model", "{checkpoint}", "--image", "{small}", "--prompt", "hi"],
     r"error: Image of 8x8 px is too small: both sides must be at least 16 px"),
    (["generate", "--model", "{checkpoint}", "--image", "{image}", "--prompt", "hi", "--max-new-tokens", "0"],
     r"error: --max-new-tokens must be at least 1, got 0"),
    (["generate", "--model", "{checkpoint}", "--prompt", "  "], r"error: --prompt is empty"),
    (["generate", "--model", "{checkpoint}", "--image", "{image}", "--prompt", "hi", "--device", "gpu9"],
     r"error: --device 'gpu9' is not a torch device"),
    (["generate", "--model", "{root}/nowhere", "--prompt", "hi"], r"error: No config.json at .*nowhere"),
    (["generate", "--model", "{truncated}", "--prompt", "hi"],
     r"error: .*truncated/model.safetensors is not a valid safetensors file .*truncated or corrupt"),
    (["generate", "--model", "{badvalue}", "--prompt", "hi"], r"error: world_pooling must be >= 1, got 0"),
    (["generate", "--model", "{noweights}", "--prompt", "hi"], r"error: No model.safetensors \(or sharded index\)"),
    (["generate", "--model", "{gemma}", "--prompt", "hi"],
     r"error: .*gemma has model_type 'gemma3': not a TheWorld checkpoint .* `theworld generate` takes TheWorld"),
    (["generate", "--model", "{badjson}", "--prompt", "hi"], r"error: .*badjson: config.json is not valid json"),
    # inspect
    (["inspect", "{root}/nowhere"], r"error: No config.json at .*nowhere"),
    (["inspect", "{gemma}"], r"error: .*gemma has model_type 'gemma3': not a TheWorld checkpoint"),
    (["inspect", "{badjson}"], r"error: .*badjson: config.json is not valid json"),
    (["inspect", "{truncated}"], r"error: .*is not a valid safetensors file"),
    (["inspect", "{noweights}"], r"error: No model.safetensors"),
    # export
    (["export", "{root}/nowhere", "{root}/x"], r"error: No config.json at"),
    (["export", "{gemma}", "{root}/x"], r"error: .*model_type 'gemma3'.* `theworld export` takes TheWorld checkpoints"),
    (["export", "{checkpoint}", "{a_file}"], r"error: destination '.*a_file' is a file"),
    (["export", "{truncated}", "{root}/x"], r"error: .*is not a valid safetensors file"),
    (["export", "{badjson}", "{root}/x"], r"error: .*config.json is not valid json"),
    (["export", "{checkpoint}", "{root}/x", "--max-shard-size", "lots", "--full"],
     r"error: --max-shard-size 'lots' is not a size; use e.g. 5GB"),
    # push (nothing reaches the network: the folder is checked first)
    (["push", "{root}/nowhere", "someone/repo"], r"error: .*nowhere is not a folder"),
    (["push", "{root}", "someone/repo"], r"error: .* has no config.json"),
    (["push", "{gemma}", "someone/repo"], r"error: .*model_type 'gemma3', not 'theworld'"),
    (["push", "{truncated}", "someone/repo"], r"error: .*is not a valid safetensors file"),
    # eval
    (["eval", "--checkpoint", "{checkpoint}"], r"error: pass exactly one of --data FILE.jsonl and --hub-dataset"),
    (["eval", "--checkpoint", "{checkpoint}", "--data", "{root}/none.jsonl"], r"error: --data '.*none.jsonl' is not a file"),
    (["eval", "--checkpoint", "{checkpoint}", "--data", "{data}", "--batch-size", "0"],
     r"error: --batch-size must be at least 1, got 0"),
    (["eval", "--checkpoint", "{checkpoint}", "--data", "{data}", "--out", "{a_file}"], r"error: --out '.*a_file' is a file"),
    (["eval", "--checkpoint", "{truncated}", "--data", "{data}", "--out", "{root}/e"], r"error: .*not a valid safetensors"),
    (["eval", "--checkpoint", "{gemma}", "--data", "{data}"], r"error: .*model_type 'gemma3'.* `theworld eval` takes"),
    (["eval", "--checkpoint", "{checkpoint}", "--data", "{data}", "--ablation", "shuffle", "--out", "{root}/e"],
     r"error: --ablation shuffle needs at least 2 examples"),
    # train
    (["train"], r"error: pass --config FILE"),
    (["train", "--config", "{root}/none.yaml"], r"error: invalid config: Config file .*none.yaml does not exist"),
    (["train", "--config", "{yaml}"], r"error: invalid config: Config file .*bad.yaml is not valid yaml"),
    (["train", "--config", "{list_yaml}"], r"error: invalid config: .* must hold a mapping of field: value, got list"),
    (["train", "--config", "{data}"], r"error: invalid config: Config file .*data.jsonl must end in .yaml, .yml or .json"),
    (["train", "--set", "max_steps"], r"error: invalid config: Override 'max_steps' must look like key=value"),
    (["train", "--set", "output_dir=o", "--set", "gemma_model_name=g", "--set", "cosmos_model_name=c",
      "--set", "train_file=t", "--set", "max_steps=ten"], r"error: invalid config: max_steps must be an int or null"),
    (["train", "--set", "output_dir={root}/t", "--set", "gemma_model_name={root}/nowhere", "--set", "enable_world=false",
      "--set", "freeze_preset=lm", "--set", "train_file={data}", "--set", "max_steps=1"], r"error: No config.json at"),
    (["train", "--set", "output_dir={root}/t2", "--set", "init_from={gemma}", "--set", "train_file={data}",
      "--set", "max_steps=1"], r"error: init_from: .*model_type 'gemma3', not a TheWorld checkpoint"),
    (["train", "--set", "output_dir={root}/t3", "--set", "gemma_model_name={gemma}", "--set", "enable_world=false",
      "--set", "freeze_preset=lm", "--set", "train_file={root}/none.jsonl", "--set", "max_steps=1"], r"error: .*none.jsonl"),
    # tiny and demo
    (["tiny", "{a_file}"], r"error: .*a_file"),
    (["demo", "--num-test", "1", "--out", "{root}/d"], r"error: --num-test must be >= 2"),
    (["demo", "--image-size", "60", "--out", "{root}/d"], r"error: --image-size must be >= 32 and divisible by 8"),
    (["demo", "--world-pooling", "0", "--out", "{root}/d"], r"error: .*--world-pooling must be >= 1"),
]


@pytest.mark.parametrize("argv, pattern", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_exit_status_2(argv, pattern, files, capsys):
    import re

    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    line = error_line(captured.err)
    assert re.match(pattern, line), line


def test_generate_refuses_decompression_bombs_before_decoding(files, capsys):
    for name, pixels in (("bomb_144mpx", 144_000_000), ("bomb_400mpx", 400_000_000)):
        path = files[name]
        assert path.stat().st_size < 1_000_000  # a small file ...
        width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
        assert width * height == pixels  # ... that claims hundreds of megapixels
        assert main(["generate", "--model", str(files["checkpoint"]), "--image", str(path), "--prompt", "hi"]) == 2
        line = error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {path} is too large to decode safely") or "exceeds max_image_pixels" in line
        assert f"{pixels}" in line.replace(",", "") and "Downscale" in line
    # with a lower cap, an ordinary image is refused the same way, before the model is loaded
    assert main(["generate", "--model", "/no/such/model", "--image", str(files["image"]), "--prompt", "hi",
                 "--max-image-pixels", "1000"]) == 2
    assert error_line(capsys.readouterr().err).startswith("error: Image of 48x40 = 1,920 px exceeds max_image_pixels")


def test_console_script_exits_2_on_a_decompression_bomb(files):
    proc = theworld_cmd("generate", "--model", str(files["checkpoint"]), "--image", str(files["bomb_144mpx"]),
                        "--prompt", "What is this?")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert error_line(proc.stderr).startswith(f"error: {files['bomb_144mpx']} is too large to decode safely")
    assert proc.stdout == ""


# ----------------------------------------------------------------------------------------------------------------------
# Working commands
# ----------------------------------------------------------------------------------------------------------------------
def test_generate_prints_the_greedy_answer(world_model, files, capsys):
    from theworld.cli.generate import generate_answer

    assert main(["generate", "--model", str(files["checkpoint"]), "--image", str(files["image"]), "--prompt",
                 "What colour is it?", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    with Image.open(files["image"]) as image:
        expected = generate_answer(world_model, world_model.processor, image.convert("RGB"), "What colour is it?", 3)
    assert printed == expected and printed
    # a text-only prompt works too
    assert main(["generate", "--model", str(files["checkpoint"]), "--prompt", "Hello", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.strip() == generate_answer(world_model, world_model.processor, None, "Hello", 2)


def test_verbose_adds_the_traceback(files, capsys):
    assert main(["-v", "inspect", str(files["badjson"])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and error_line(err).startswith("error: ")


# ----------------------------------------------------------------------------------------------------------------------
# Consent: nothing from a checkpoint runs without --trust-remote-code
# ----------------------------------------------------------------------------------------------------------------------
PLANTED = {
    "evil_tokenizer.py": "tokenizer",
    "evil_image_processor.py": "image_processor",
}
MARKER_CODE = (
    "import os, pathlib\n"
    "pathlib.Path(os.environ['THEWORLD_MARKERS'], {name!r}).write_text('imported')\n"
)

CONSENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from theworld.cli import main
    ckpt, data, image, out, markers = sys.argv[1:6]
    codes = {}
    codes["generate"] = main(["generate", "--model", ckpt, "--image", image, "--prompt", "hi", "--max-new-tokens", "1"])
    codes["inspect"] = main(["inspect", ckpt])
    codes["export"] = main(["export", ckpt, os.path.join(out, "exported")])
    codes["eval"] = main(["eval", "--checkpoint", ckpt, "--data", data, "--out", os.path.join(out, "eval")])
    codes["train"] = main(["train", "--set", "output_dir=" + os.path.join(out, "train"), "--set", "init_from=" + ckpt,
                           "--set", "train_file=" + data, "--set", "max_steps=1", "--set", "per_device_batch_size=2",
                           "--set", "progress_bar=false"])
    before_control = sorted(os.listdir(markers))
    # control: the planted tokenizer module does run when code is trusted (so the markers above could appear)
    from transformers import AutoTokenizer
    try:
        AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
    except Exception:
        pass
    print("RESULT " + json.dumps({"codes": codes, "before": before_control, "after": sorted(os.listdir(markers))}))
    """
)


def plant(folder: Path) -> None:
    """Modules in a checkpoint folder that write a marker when imported, named by the folder's own config files."""
    for filename, name in PLANTED.items():
        (folder / filename).write_text(MARKER_CODE.format(name=name) + f"class Evil{name.title().replace('_', '')}:\n    pass\n")
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", "evil_tokenizer.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    proc = json.loads((folder / "processor_config.json").read_text())
    proc["image_processor"]["auto_map"] = {"AutoImageProcessor": "evil_image_processor.EvilImageProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(proc))
    # the shipped remote-code files run only under trust_remote_code (the installed package is used otherwise)
    for filename in ("configuration_theworld.py", "modeling_theworld.py", "processing_theworld.py"):
        path = folder / filename
        path.write_text(MARKER_CODE.format(name=filename) + path.read_text())


def test_nothing_from_the_checkpoint_runs_without_trust_remote_code(files, tmp_path):
    ckpt = shutil.copytree(files["checkpoint"], tmp_path / "planted")
    plant(ckpt)
    data = tmp_path / "data.jsonl"
    rows = [{"image": "red.png", "caption": "The red square is left of the blue one.", "label": i % 2} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(files["image"], tmp_path / "red.png")
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ, THEWORLD_MARKERS=str(markers), HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run(
        [sys.executable, "-c", CONSENT_SCRIPT, str(ckpt), str(data), str(files["image"]), str(tmp_path), str(markers)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["codes"] == {"generate": 0, "inspect": 0, "export": 0, "eval": 0, "train": 0}, proc.stderr[-3000:]
    assert result["before"] == []  # generate, inspect, export, eval and train (init_from) imported nothing from it
    assert result["after"] == ["tokenizer"]  # the control: trusting the folder runs its tokenizer module
    assert "processing_theworld.py: differs" in proc.stdout  # inspect saw the planted code and said so


# ----------------------------------------------------------------------------------------------------------------------
# theworld push against a loopback hub
# ----------------------------------------------------------------------------------------------------------------------
PUSH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from theworld.cli import main
    folder, gemma, cosmos, data, out = sys.argv[1:6]
    codes = {}
    codes["push"] = main(["push", folder, "someone/cli-repo", "--private", "--path-in-repo", "checkpoint-7",
                          "--commit-message", "from the CLI test"])
    codes["train"] = main(["train", "--set", "output_dir=" + out, "--set", "gemma_model_name=" + gemma,
                           "--set", "cosmos_model_name=" + cosmos, "--set", "world_image_size=64", "--set", "train_file=" + data,
                           "--set", "max_steps=1", "--set", "per_device_batch_size=1", "--set", "progress_bar=false",
                           "--set", "push_to_hub=true", "--set", "hub_model_id=someone/trained", "--set", "hub_private=false"])
    print("CODES " + json.dumps(codes))
    """
)


def test_push_and_train_upload_to_a_loopback_hub(files, tiny_bases, tmp_path):
    """`theworld push` uploads a checkpoint folder (pickles skipped, foreign files kept); `theworld train` with
    ``push_to_hub: true`` uploads exactly its ``final/`` folder. Nothing leaves the machine: a hub server on 127.0.0.1
    (`tests/test_hub.py`'s `LoopbackHub`) and a dead proxy for everything else."""
    from test_hub import LoopbackHub

    folder = shutil.copytree(files["checkpoint"], tmp_path / "to_push")
    (folder / "pytorch_model.bin").write_bytes(b"never uploaded")  # pickles are skipped
    (folder / "training_log.txt").write_text("a foreign file travels along")
    out = tmp_path / "run"
    with LoopbackHub() as server:
        env = dict(
            os.environ,
            HF_ENDPOINT=server.endpoint,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_TOKEN="hf_loopback_cli_token",
            HF_HOME=str(tmp_path / "hf_home"),
            HTTP_PROXY="http://127.0.0.1:9",
            HTTPS_PROXY="http://127.0.0.1:9",
            NO_PROXY="127.0.0.1",
        )
        proc = subprocess.run(
            [sys.executable, "-c", PUSH_SCRIPT, str(folder), tiny_bases.gemma, tiny_bases.cosmos, str(files["data"]),
             str(out)],
            capture_output=True, text=True, env=env, timeout=600,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("CODES ", 1)[1]) == {"push": 0, "train": 0}, proc.stderr[-3000:]
    assert f"Uploaded {len(os.listdir(folder)) - 1} files from {folder} to someone/cli-repo" in proc.stdout
    assert server.repos == {"someone/cli-repo": {"visibility": "private"}, "someone/trained": {"visibility": "public"}}
    assert server.auth == {"Bearer hf_loopback_cli_token"}
    pushed, trained = server.commits
    assert pushed["repo"] == "someone/cli-repo" and pushed["summary"] == "from the CLI test"
    assert pushed["revision"] == "main"
    expected = {f"checkpoint-7/{p.name}": p.read_bytes() for p in folder.iterdir() if p.name != "pytorch_model.bin"}
    assert pushed["files"] == expected
    final = out / "final"
    assert trained["repo"] == "someone/trained"
    assert trained["files"] == {p.name: p.read_bytes() for p in final.iterdir()} and "model.safetensors" in trained["files"]
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 1


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def test_solid_png_is_a_valid_image(tmp_path):
    path = solid_png(tmp_path / "s.png", 37, 20)
    with Image.open(path) as im:
        im.load()
        assert im.size == (37, 20) and im.mode == "1"
        assert not np.asarray(im.convert("L")).any()
