"""Resume files of a ``checkpoint-N/training_state/`` folder: safetensors for tensors, json for structure, no pickle.

    optimizer.safetensors        AdamW state tensors, keyed ``"<parameter name>::<state key>"``
    trainer_state.json           step, schedule, config, global batch, data fingerprint, optimizer structure (written
                                 last: its presence marks a complete checkpoint)
    rng_state_R.safetensors      process R's torch (CPU, CUDA) and numpy RNG states
    rng_state_R.json             process R's Python ``random`` state and numpy scalars

Loading never unpickles anything: accelerate's ``save_state`` would store the optimizer with ``torch.save``, and
loading that means unpickling a file that may come from elsewhere.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch

STATE_FORMAT_VERSION = 1
STATE_DIR = "training_state"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"


def jsonable(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        raise TypeError("tensors go to safetensors")
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as json atomically (temporary file + ``os.replace``)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_safetensors_copy(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, each copied out of the memory map (later changes to the file can never reach
    tensors that were loaded). `ValueError` for a truncated or corrupt file."""
    from theworld.checkpoint_theworld import SafetensorsFile

    f = SafetensorsFile(path)
    return {k: f.tensor(k).clone() for k in f.keys()}


def optimizer_state_to_files(optimizer, param_names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into safetensors tensors and a json structure (keys use parameter names)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        name = param_names[int(idx)]
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(name, {})[key] = jsonable(value)
    groups = [{k: jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_names": param_names, "param_groups": groups, "scalars": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], structure: dict[str, Any], param_names: list[str]):
    """Rebuild an optimizer ``state_dict`` from `optimizer_state_to_files` output, checking the parameters."""
    if structure["param_names"] != param_names:
        missing = sorted(set(structure["param_names"]) ^ set(param_names))
        raise ValueError(
            "The checkpoint's optimizer was built for different trainable parameters "
            f"(differences: {missing[:10]}); resume with the same freeze_preset and model settings."
        )
    index = {name: i for i, name in enumerate(param_names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, sub = key.rpartition("::")
        state.setdefault(index[name], {})[sub] = value
    for name, values in structure["scalars"].items():
        state.setdefault(index[name], {}).update(values)
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (CPU and CUDA) and numpy as tensors, Python's ``random`` as json."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).astype(np.int64))
    py_state = random.getstate()
    meta = {
        "numpy": {"algorithm": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    return tensors, meta


def rng_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore the RNG states `rng_state_to_files` captured."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state(
        (n["algorithm"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def write_process_state(state_dir: str, rank: int) -> None:
    """Process ``rank``'s RNG files."""
    from safetensors.torch import save_file

    tensors, meta = rng_state_to_files()
    save_file(tensors, os.path.join(state_dir, f"rng_state_{rank}.safetensors"))
    write_json(os.path.join(state_dir, f"rng_state_{rank}.json"), meta)


def read_process_state(state_dir: str, rank: int) -> bool:
    """Restore process ``rank``'s RNG states; ``False`` when the checkpoint has none for it (another process count)."""
    path = os.path.join(state_dir, f"rng_state_{rank}.safetensors")
    if not os.path.isfile(path):
        return False
    rng_state_from_files(load_safetensors_copy(path), read_json(os.path.join(state_dir, f"rng_state_{rank}.json")))
    return True


def write_optimizer_state(state_dir: str, optimizer, param_names: list[str]) -> dict[str, Any]:
    """Write ``optimizer.safetensors``; return the json structure that goes into ``trainer_state.json``."""
    from safetensors.torch import save_file

    tensors, structure = optimizer_state_to_files(optimizer, param_names)
    save_file(tensors, os.path.join(state_dir, OPTIMIZER_STATE))
    return structure


def read_optimizer_state(state_dir: str, structure: dict[str, Any], param_names: list[str]) -> dict[str, Any]:
    """The optimizer ``state_dict`` stored in ``state_dir`` (structure from ``trainer_state.json``)."""
    tensors = load_safetensors_copy(os.path.join(state_dir, OPTIMIZER_STATE))
    return optimizer_state_from_files(tensors, structure, param_names)


def read_trainer_state(checkpoint: str) -> dict[str, Any]:
    """``trainer_state.json`` of a ``checkpoint-N`` folder, its format checked."""
    path = os.path.join(checkpoint, STATE_DIR, TRAINER_STATE)
    try:
        state = read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid json ({e}): the checkpoint is damaged; resume from another one.") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{checkpoint}: training state format {found} is not {STATE_FORMAT_VERSION}.")
    return state


def is_complete(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, STATE_DIR, TRAINER_STATE))


def find_checkpoint(output_dir: str, which: str) -> str:
    """Resolve ``resume_from``: ``"latest"`` (the newest complete ``checkpoint-N``) or a folder path."""
    if which == "latest":
        done = []
        if os.path.isdir(output_dir):
            for d in os.listdir(output_dir):
                if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit() and is_complete(os.path.join(output_dir, d)):
                    done.append(d)
        if not done:
            raise FileNotFoundError(f"resume_from: latest found no complete checkpoint-N folder in {output_dir}.")
        return os.path.join(output_dir, max(done, key=lambda d: int(d.split("-", 1)[1])))
    if not is_complete(which):
        raise FileNotFoundError(
            f"resume_from: {which} is not a complete training checkpoint (no {STATE_DIR}/{TRAINER_STATE}); pass a "
            "checkpoint-N folder written by `theworld train` or 'latest'."
        )
    return which


__all__ = [
    "STATE_DIR",
    "STATE_FORMAT_VERSION",
    "find_checkpoint",
    "load_safetensors_copy",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "read_json",
    "read_optimizer_state",
    "read_process_state",
    "read_trainer_state",
    "rng_state_from_files",
    "rng_state_to_files",
    "write_json",
    "write_optimizer_state",
    "write_process_state",
]
