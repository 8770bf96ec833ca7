"""The manifest every prepared model folder carries: what was built, from which pinned source, and each file's sha256.

Light on purpose (json + hashlib): the serving backends read it to find their variants without importing the
export tool chain; `scaigrid models prepare` verifies it to decide that a model needs no rebuild.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .weights import sha256_file

MANIFEST = "manifest.json"
# bump when the build recipe changes in a way that changes outputs: prepare then rebuilds
RECIPE = 1


class ModelNotPrepared(RuntimeError):
    """The model folder is missing or incomplete: run `scaigrid models prepare`."""


def models_dir(path: str | os.PathLike | None = None) -> Path:
    """$SCAIGRID_MODELS_DIR (default ~/.cache/scaigrid/models), or `path`."""
    if path is None:
        from scaigrid.runtime.settings import Settings
        path = Settings().models_dir
    return Path(path).expanduser()


def model_dir_for(model_id: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of a prepared model: <models dir>/<model id>."""
    return models_dir(root) / model_id


def read(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotPrepared(f"{model_dir} holds no prepared model (no {MANIFEST}); "
                               "run: scaigrid models prepare") from None


def write(model_dir: str | os.PathLike, manifest: dict) -> dict:
    """Hash every file under `model_dir` (but the manifest) into manifest['files'] and write it, last."""
    root = Path(model_dir)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(root).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {**manifest, "recipe": RECIPE, "files": files}
    tmp = root / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest


def problems(model_dir: str | os.PathLike, full: bool = True) -> list[str]:
    """What is wrong with a prepared folder ([] = verified). full=False checks presence and sizes only."""
    root = Path(model_dir)
    try:
        manifest = read(root)
    except ModelNotPrepared as exc:
        return [str(exc)]
    except ValueError as exc:
        return [f"{root / MANIFEST}: unreadable ({exc})"]
    if manifest.get("recipe") != RECIPE:
        return [f"built by recipe {manifest.get('recipe')}, this version builds recipe {RECIPE}"]
    found = []
    for name, meta in manifest.get("files", {}).items():
        path = root / name
        if not path.is_file():
            found.append(f"{name}: missing")
        elif path.stat().st_size != meta["bytes"]:
            found.append(f"{name}: {path.stat().st_size} bytes, manifest says {meta['bytes']}")
        elif full and sha256_file(path) != meta["sha256"]:
            found.append(f"{name}: sha256 differs from the manifest")
    return found


def variant_path(model_dir: str | os.PathLike, manifest: dict, variant: str) -> Path:
    variants = manifest.get("variants", {})
    if variant not in variants:
        raise ValueError(f"{model_dir}: no variant {variant!r} (have: {', '.join(variants) or 'none'})")
    path = Path(model_dir) / variants[variant]["file"]
    if not path.is_file():
        raise ModelNotPrepared(f"{path} is missing; run: scaigrid models prepare")
    return path
