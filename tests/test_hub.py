"""Hub repos through huggingface_hub's real cache layout with ``HF_HUB_OFFLINE=1`` (base repos by id with their
commits pinned, checkpoint repos by revision and ``checkpoint-N/`` subfolder), and ``save_pretrained(push_to_hub=True)``
/ ``push_to_hub`` / ``theworld push`` against a small hub server on 127.0.0.1. No mocks.

`lay_out_repo` writes folders exactly as huggingface_hub stores downloads: ``models--org--name/blobs/<sha256>``,
``snapshots/<commit>/<path>`` as relative symlinks to the blobs, and ``refs/<branch>`` files holding the commit.

`LoopbackHub` implements the hub endpoints that ``HfApi.create_repo`` and ``HfApi.upload_folder`` call
(``/api/repos/create``, ``/api/validate-yaml``, ``/api/models/<repo>/preupload/<rev>``, the git-LFS batch API with
basic transfers, and ``/api/models/<repo>/commit/<rev>``) and records every commit's files, so that a test can compare
the uploaded bytes with what ``save_pretrained`` writes. The uploading process gets ``HF_ENDPOINT`` pointing at it and
a proxy that refuses everything else, so nothing can leave the machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import logits_and_tokens, model_inputs, perturb
from transformers import AutoModel

from theworld import TheWorld
from theworld.checkpoint_theworld import trainable_state_dict

GEMMA_REPO = "tiny-org/gemma-3-tiny"
COSMOS_REPO = "tiny-org/cosmos-predict2-tiny"
CKPT_REPO = "someone/theworld-vsr"


# ----------------------------------------------------------------------------------------------------------------------
# The hub cache layout
# ----------------------------------------------------------------------------------------------------------------------
def commit_id(label: str) -> str:
    """A deterministic 40-hex commit id."""
    return hashlib.sha1(label.encode()).hexdigest()


def lay_out_repo(cache: str, repo_id: str, tree: dict[str, str | bytes], commit: str, refs=("main",)) -> str:
    """Add one snapshot of a model repo to a hub cache; return the snapshot folder.

    Args:
        cache: the hub cache folder (``HF_HUB_CACHE`` / ``cache_dir=``).
        repo_id: ``org/name``.
        tree: ``{path_in_repo: bytes or local file}``; a local *folder* maps to its files under ``path_in_repo``
            (``""`` for the repo root).
        commit: the snapshot's 40-hex commit id.
        refs: branches that point at this commit.
    """
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    blobs = os.path.join(repo, "blobs")
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(blobs, exist_ok=True)
    files: dict[str, str | bytes] = {}
    for path_in_repo, source in tree.items():
        if isinstance(source, str) and os.path.isdir(source):
            for root, _, names in os.walk(source):
                for name in names:
                    full = os.path.join(root, name)
                    files[os.path.join(path_in_repo, os.path.relpath(full, source))] = full
        else:
            files[path_in_repo] = source
    for path_in_repo, source in files.items():
        if isinstance(source, str):
            with open(source, "rb") as f:
                data = f.read()
        else:
            data = source
        blob = os.path.join(blobs, hashlib.sha256(data).hexdigest())
        if not os.path.exists(blob):
            with open(blob, "wb") as f:
                f.write(data)
        link = os.path.join(snapshot, path_in_repo)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for ref in refs:
        set_ref(cache, repo_id, ref, commit)
    return snapshot


def set_ref(cache: str, repo_id: str, ref: str, commit: str) -> None:
    with open(os.path.join(cache, "models--" + repo_id.replace("/", "--"), "refs", ref), "w") as f:
        f.write(commit)


def gemma_with_one_changed_tensor(gemma_dir: str) -> bytes:
    """The bytes of the Gemma base's model.safetensors with one tensor changed (another "revision" of the base)."""
    state = load_file(os.path.join(gemma_dir, "model.safetensors"))
    key = sorted(k for k in state if k.endswith("norm.weight"))[0]
    state[key] = state[key] + 0.5
    out = os.path.join(os.path.dirname(gemma_dir), ".gemma_changed.safetensors")
    save_file(state, out, metadata={"format": "pt"})
    with open(out, "rb") as f:
        data = f.read()
    os.remove(out)
    return data


# ----------------------------------------------------------------------------------------------------------------------
# A hub with base repos and a checkpoint repo (two revisions, checkpoint-N subfolders)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(tiny_bases, sample_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    cache = str(root / "cache")
    gemma_a, gemma_b, cosmos_a = commit_id("gemma-a"), commit_id("gemma-b"), commit_id("cosmos-a")
    lay_out_repo(cache, GEMMA_REPO, {"": tiny_bases.gemma}, gemma_a)
    changed = {"": tiny_bases.gemma, "model.safetensors": gemma_with_one_changed_tensor(tiny_bases.gemma)}
    lay_out_repo(cache, GEMMA_REPO, changed, gemma_b, refs=())
    lay_out_repo(cache, COSMOS_REPO, {"": tiny_bases.cosmos}, cosmos_a)

    torch.manual_seed(0)
    model = TheWorld.from_pretrained(
        GEMMA_REPO, cosmos_model_name=COSMOS_REPO, world_image_size=64, world_pooling=1, cache_dir=cache
    )
    inputs = model_inputs(model.processor, sample_images)
    refs, trained = {}, {}
    for step in (1, 2):
        perturb(model, seed=100 + step)
        model.save_pretrained(root / f"ck{step}")
        refs[step] = logits_and_tokens(model, inputs, new_tokens=3)
        trained[step] = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    rev1, rev2 = commit_id("ckpt-rev1"), commit_id("ckpt-rev2")
    lay_out_repo(cache, CKPT_REPO, {"": str(root / "ck1"), "checkpoint-1": str(root / "ck1")}, rev1, refs=("v1",))
    tree2 = {"": str(root / "ck2"), "checkpoint-1": str(root / "ck1"), "checkpoint-2": str(root / "ck2")}
    lay_out_repo(cache, CKPT_REPO, tree2, rev2)
    return {
        "root": root,
        "cache": cache,
        "model": model,
        "inputs": inputs,
        "refs": refs,
        "trained": trained,
        "gemma": (gemma_a, gemma_b),
        "cosmos": cosmos_a,
        "revs": (rev1, rev2),
    }


def assert_reproduces(model, hub, step):
    """The loaded model gives the saved model's logits and greedy tokens."""
    logits, tokens = logits_and_tokens(model, hub["inputs"], new_tokens=3)
    assert torch.equal(logits, hub["refs"][step][0])
    assert torch.equal(tokens, hub["refs"][step][1])


def assert_is_step(model, hub, step):
    """The loaded model holds exactly the trained tensors of checkpoint ``step`` (which snapshot was resolved)."""
    state = model.state_dict()
    for key, value in hub["trained"][step].items():
        assert torch.equal(state[key], value), (step, key)


def test_base_repo_ids_resolve_and_commits_are_recorded(hub):
    config = hub["model"].config
    assert config.gemma_model_name == GEMMA_REPO and config.cosmos_model_name == COSMOS_REPO  # ids kept as they are
    assert config.gemma_revision == hub["gemma"][0]
    assert config.cosmos_revision == hub["cosmos"]
    saved = json.loads((hub["root"] / "ck2" / "config.json").read_text())["base_models"]
    assert (saved["gemma"]["name"], saved["gemma"]["revision"]) == (GEMMA_REPO, hub["gemma"][0])
    assert (saved["cosmos"]["name"], saved["cosmos"]["revision"]) == (COSMOS_REPO, hub["cosmos"])
    assert set(saved["gemma"]["fingerprints"]) == {"model.safetensors"}
    assert set(saved["cosmos"]["fingerprints"]) == {"vae/diffusion_pytorch_model.safetensors"}


def test_checkpoint_repo_revisions_and_subfolders(hub):
    cache = hub["cache"]
    rev1, rev2 = hub["revs"]
    assert_reproduces(TheWorld.from_pretrained(CKPT_REPO, cache_dir=cache), hub, 2)  # refs/main
    assert_is_step(TheWorld.from_pretrained(CKPT_REPO, revision="v1", cache_dir=cache), hub, 1)  # a branch
    assert_is_step(TheWorld.from_pretrained(CKPT_REPO, revision=rev1, cache_dir=cache), hub, 1)  # a commit
    model = TheWorld.from_checkpoint_hub(CKPT_REPO, checkpoint_name="checkpoint-2", cache_dir=cache)
    assert_is_step(model, hub, 2)
    model = TheWorld.from_checkpoint_hub(CKPT_REPO, checkpoint_name="checkpoint-1", revision=rev2, cache_dir=cache)
    assert_reproduces(model, hub, 1)
    model = AutoModel.from_pretrained(CKPT_REPO, subfolder="checkpoint-1", cache_dir=cache)
    assert_is_step(model, hub, 1)
    with pytest.raises(FileNotFoundError, match="No config.json at someone/theworld-vsr/checkpoint-9"):
        TheWorld.from_checkpoint_hub(CKPT_REPO, checkpoint_name="checkpoint-9", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="No config.json at someone/missing-repo.*HF_HUB_OFFLINE"):
        TheWorld.from_pretrained("someone/missing-repo", cache_dir=cache)


def test_later_loads_use_the_pinned_base_commit(hub, tmp_path):
    cache = hub["cache"]
    gemma_a, gemma_b = hub["gemma"]
    pinned_file = os.path.join(
        cache, "models--" + GEMMA_REPO.replace("/", "--"), "snapshots", gemma_a, "model.safetensors"
    )
    set_ref(cache, GEMMA_REPO, "main", gemma_b)  # the base repo moved on
    try:
        model = TheWorld.from_checkpoint_hub(CKPT_REPO, checkpoint_name="checkpoint-2", cache_dir=cache)
        assert_reproduces(model, hub, 2)
        norm = sorted(k for k in load_file(pinned_file) if k.endswith("norm.weight"))[0]
        # still the pinned weights (the tiny base stores the hub's disk names; compare the changed tensor's values)
        disk = load_file(pinned_file)[norm]
        assert any(torch.equal(p.detach(), disk) for p in model.parameters() if p.shape == disk.shape)
        # Without the pin, the moved main would be used, and the fingerprint check catches the different weights.
        unpinned = tmp_path / "unpinned"
        shutil.copytree(hub["root"] / "ck2", unpinned)
        with open(unpinned / "config.json") as f:
            config = json.load(f)
        config["base_models"]["gemma"]["revision"] = None
        with open(unpinned / "config.json", "w") as f:
            json.dump(config, f)
        with pytest.raises(ValueError, match=r"Base weights differ .*\['gemma/model.safetensors'\]"):
            TheWorld.from_pretrained(str(unpinned), cache_dir=cache)
    finally:
        set_ref(cache, GEMMA_REPO, "main", gemma_a)


# ----------------------------------------------------------------------------------------------------------------------
# push_to_hub against a loopback hub
# ----------------------------------------------------------------------------------------------------------------------
class LoopbackHub:
    """A minimal hub server on 127.0.0.1 that records repos and commits (see the module docstring)."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                hub.auth.add(self.headers.get("Authorization", ""))
                path = self.path.split("?", 1)[0]
                body = self._body()
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    hub.repos.setdefault(repo_id, {"visibility": req.get("visibility")})
                    return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._json({"errors": [], "warnings": []})
                if path.startswith("/api/models/") and "/preupload/" in path:
                    files = json.loads(body)["files"]
                    modes = [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                            "shouldIgnore": False,
                        }
                        for f in files
                    ]
                    return self._json({"files": modes})
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = [
                        {
                            "oid": o["oid"],
                            "size": o["size"],
                            "actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}},
                        }
                        for o in json.loads(body)["objects"]
                    ]
                    return self._json({"transfer": "basic", "objects": objects})
                if path.startswith("/api/models/") and "/commit/" in path:
                    repo_id, revision = path[len("/api/models/") :].split("/commit/")
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    files = {}
                    for line in lines[1:]:
                        value = line["value"]
                        if line["key"] == "file":
                            files[value["path"]] = base64.b64decode(value["content"])
                        elif line["key"] == "lfsFile":
                            files[value["path"]] = hub.lfs[value["oid"]]
                    oid = hashlib.sha1(body).hexdigest()
                    hub.commits.append(
                        {"repo": repo_id, "revision": revision, "summary": lines[0]["value"]["summary"], "oid": oid,
                         "files": files}
                    )
                    return self._json(
                        {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}
                    )
                return self._json({"error": f"not implemented: POST {path}"}, status=404)

            def do_PUT(self):
                hub.requests.append(("PUT", self.path))
                if self.path.startswith("/lfs-upload/"):
                    data = self._body()
                    oid = self.path.rsplit("/", 1)[1]
                    assert hashlib.sha256(data).hexdigest() == oid
                    hub.lfs[oid] = data
                    return self._json({})
                return self._json({"error": "not implemented"}, status=404)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                return self._json({"error": f"not implemented: GET {self.path}"}, status=404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


PUSH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from theworld import TheWorld
    from theworld.cli import main
    checkpoint, out, full_out = sys.argv[1:4]
    model = TheWorld.from_pretrained(checkpoint)
    # transformers' spelling: save_pretrained(..., push_to_hub=True) uploads the folder it published
    info = model.save_pretrained(out, push_to_hub=True, repo_id="someone/pushed", commit_message="TheWorld push test")
    # push_to_hub: a full checkpoint written into a temporary folder and uploaded as it is
    info_full = model.push_to_hub("someone/pushed-full", save_full_model=True, max_shard_size="1MB", private=True)
    model.save_pretrained(full_out, save_full_model=True, max_shard_size="1MB")
    # clutter that `theworld push` must not upload: a pickle and a leftover of an interrupted 0.1.0 save
    open(os.path.join(out, "pytorch_model.bin"), "wb").write(b"not uploaded")
    os.makedirs(os.path.join(out, ".theworld-staging-leftover"), exist_ok=True)
    open(os.path.join(out, ".theworld-staging-leftover", "model.safetensors"), "wb").write(b"partial")
    rc = main(["push", out, "someone/cli-pushed", "--private", "--path-in-repo", "checkpoint-2"])
    print("PUSHED " + json.dumps({"oid": info.oid, "oid_full": info_full.oid, "rc": rc}))
    """
)


def test_push_to_hub_uploads_exactly_the_saved_folder(hub, tmp_path):
    out, full_out = tmp_path / "saved", tmp_path / "saved_full"
    with LoopbackHub() as server:
        env = dict(os.environ)
        env.update(
            HF_ENDPOINT=server.endpoint,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",  # git-LFS basic transfers (the loopback hub has no Xet storage)
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_TOKEN="hf_loopback_test_token",
            HF_HOME=str(tmp_path / "hf_home"),
            HF_HUB_CACHE=hub["cache"],
            # any request that is not for 127.0.0.1 goes to a dead proxy and fails
            HTTP_PROXY="http://127.0.0.1:9",
            HTTPS_PROXY="http://127.0.0.1:9",
            NO_PROXY="127.0.0.1",
        )
        checkpoint = str(hub["root"] / "ck2")
        proc = subprocess.run(
            [sys.executable, "-c", PUSH_SCRIPT, checkpoint, str(out), str(full_out)], capture_output=True, text=True,
            env=env, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(proc.stdout.split("PUSHED ", 1)[1])
        assert result["rc"] == 0
    assert set(server.repos) == {"someone/pushed", "someone/pushed-full", "someone/cli-pushed"}
    assert server.repos["someone/cli-pushed"]["visibility"] == "private"
    assert server.repos["someone/pushed-full"]["visibility"] == "private"
    assert server.repos["someone/pushed"]["visibility"] is None
    assert server.auth == {"Bearer hf_loopback_test_token"}
    assert server.lfs  # safetensors went through LFS
    saved = {name: (out / name).read_bytes() for name in os.listdir(out) if (out / name).is_file()}
    saved.pop("pytorch_model.bin")
    saved_full = {name: (full_out / name).read_bytes() for name in os.listdir(full_out)}
    first, second, third = server.commits
    assert first["repo"] == "someone/pushed" and first["revision"] == "main"
    assert first["summary"] == "TheWorld push test" and first["oid"] == result["oid"]
    assert first["files"] == saved  # the same file names and bytes as save_pretrained writes
    assert second["repo"] == "someone/pushed-full" and second["oid"] == result["oid_full"]
    assert second["files"] == saved_full and "model.safetensors.index.json" in saved_full
    assert third["repo"] == "someone/cli-pushed"
    assert third["files"] == {f"checkpoint-2/{name}": data for name, data in saved.items()}

    # What was uploaded loads back by repo id, through the hub cache, to the same outputs.
    snapshot = lay_out_repo(hub["cache"], "someone/pushed", first["files"], first["oid"])
    assert sorted(os.listdir(snapshot)) == sorted(saved)
    assert_reproduces(TheWorld.from_pretrained("someone/pushed", cache_dir=hub["cache"]), hub, 2)
