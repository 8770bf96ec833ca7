"""Deterministic YAML output: keys in the order the generators build them, multi-line strings as blocks."""
from __future__ import annotations

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True  # repeated dicts (labels) stay written out: manifests are read by people and by kubectl


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: object) -> str:
    """One YAML document."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_all(docs: list, header: str = "") -> str:
    """A multi-document stream (kubectl apply -f takes it whole), with a comment on top."""
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                         explicit_start=True)
    return header + body
