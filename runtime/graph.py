"""graph.yaml: the schema (pydantic) and the loader that keeps YAML line numbers for every error."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STEP_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z_][a-zA-Z0-9_]*$")
NAME_RE = r"^[a-z][a-z0-9_]*$"
WHEN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB)?$")
SIZE_UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
HTTP_RE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE)(,(GET|POST|PUT|PATCH|DELETE))* /\S*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionSpec(Strict):
    """One function: a nameko service class, how many processes run it and where its steps run."""

    entry: str = Field(description="python class as 'package.module:Class'", pattern=r"^[\w.]+:\w+$")
    replicas: int = Field(1, ge=0, description="processes consuming this function's queue (0: none, inline only)")
    placement: Literal["remote", "inline"] = Field(
        "remote", description="remote: steps go over RabbitMQ; inline: steps run inside the caller's process")
    pool: int = Field(10, ge=1, le=1000, description="concurrent workers per replica (nameko max_workers)")
    timeout: float = Field(30.0, gt=0, le=3600, description="seconds a step of this function may take")
    config: dict[str, Any] = Field(default_factory=dict, description="free-form settings the function reads")
    calls: list[str] = Field(default_factory=list, description="'function.method' this function calls directly")
    emits: list[str] = Field(default_factory=list, description=(
        "after-steps ('function.method') this function hands envelopes to directly, as durable events "
        "(e.g. accounting.record for usage made off a route's path)"))

    @field_validator("calls", "emits")
    @classmethod
    def _calls_are_steps(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not STEP_RE.match(ref):
                raise ValueError(f"'{ref}' is not 'function.method'")
        return v


class StepSpec(Strict):
    """A step with options; a plain string 'function.method' is the short form."""

    step: str = Field(pattern=STEP_RE.pattern, description="'function.method'")
    timeout: float | None = Field(None, gt=0, le=3600, description="overrides the function's timeout")
    when: str | None = Field(None, pattern=WHEN_RE.pattern, description=(
        "run the step only when this dotted envelope path holds a value (not missing, null, false or empty), "
        "e.g. 'request.body.rag': requests that do not ask for it skip the step, and its hop, entirely"))

    def applies(self, envelope: dict) -> bool:
        """Whether the step runs for this envelope (costs a dict walk: ~0.3 us)."""
        if self.when is None:
            return True
        value: Any = envelope
        for part in self.when.split("."):
            if not isinstance(value, dict):
                return False
            value = value.get(part)
        return not (value is None or value is False or (isinstance(value, (str, list, dict)) and not value))

    @property
    def function(self) -> str:
        return self.step.split(".", 1)[0]

    @property
    def method(self) -> str:
        return self.step.split(".", 1)[1]


StepRef = Union[str, StepSpec]


class RouteSpec(Strict):
    """An API operation: the HTTP endpoints it serves, its ordered steps, and the steps run after the answer."""

    http: list[str] = Field(default_factory=list, description="endpoints, e.g. 'POST /v1/chat/completions'")
    handler: str = Field("json", description="how the gateway parses the request and formats the answer")
    steps: list[StepRef] = Field(min_length=1, description="ordered 'function.method' steps")
    after: list[StepRef] = Field(default_factory=list, description="steps delivered as durable events afterwards")
    chunks: list[StepRef] = Field(default_factory=list,
                                  description="inline steps run on every streamed chunk, in the gateway's relay")
    max_body: int | None = Field(None, gt=0, description=(
        "the largest request body this route reads, in bytes or as '8MiB' / '512KiB' (default: its handler's); "
        "a longer one is refused with 413 and never buffered past the limit"))

    @field_validator("max_body", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = SIZE_RE.match(v.strip())
            if not m:
                raise ValueError(f"'{v}' is not a size: give bytes, or a number with KiB, MiB or GiB")
            return int(float(m.group(1)) * SIZE_UNITS[m.group(2) or ""])
        return v

    @field_validator("http", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("http")
    @classmethod
    def _http_shape(cls, v: list[str]) -> list[str]:
        for ep in v:
            if not HTTP_RE.match(ep):
                raise ValueError(f"'{ep}' is not 'METHOD /path' (e.g. 'POST /v1/chat/completions')")
        return v

    @field_validator("steps", "after", "chunks")
    @classmethod
    def _normalise(cls, v: list[StepRef]) -> list[StepSpec]:
        return [StepSpec(step=s) if isinstance(s, str) else s for s in v]

    def step_specs(self) -> list[StepSpec]:
        return self.steps  # type: ignore[return-value]  # normalised by the validator

    def after_specs(self) -> list[StepSpec]:
        return self.after  # type: ignore[return-value]

    def chunk_specs(self) -> list[StepSpec]:
        return self.chunks  # type: ignore[return-value]


class GraphSpec(Strict):
    """The whole graph: functions and the routes that run their steps."""

    version: Literal[1] = 1
    path: list[str] = Field(default_factory=list, description="folders (relative to this file) added to sys.path")
    functions: dict[str, FunctionSpec] = Field(min_length=1)
    routes: dict[str, RouteSpec] = Field(default_factory=dict)

    @field_validator("functions", "routes")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"name '{name}' must be lower_snake_case (letters, digits, _)")
        return v


class GraphError(Exception):
    """A graph.yaml problem: each item names file, line, what is wrong and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Graph:
    """A validated graph plus where each of its parts sits in the file (for error messages)."""

    def __init__(self, spec: GraphSpec, file: Path, lines: dict[tuple, int]):
        self.spec = spec
        self.file = file
        self._lines = lines

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return self.spec.functions

    @property
    def routes(self) -> dict[str, RouteSpec]:
        return self.spec.routes

    def line(self, *loc: Any) -> int:
        """Line of the deepest known node on the path `loc` (1-based)."""
        loc = tuple(loc)
        while loc and loc not in self._lines:
            loc = loc[:-1]
        return self._lines.get(loc, 1)

    def where(self, *loc: Any) -> str:
        return f"{self.file}:{self.line(*loc)}"

    def search_path(self) -> list[Path]:
        return [(self.file.parent / p).resolve() for p in self.spec.path]

    def timeout_of(self, step: StepSpec) -> float:
        return step.timeout or self.functions[step.function].timeout

    def route_timeout(self, route: str) -> float:
        """The longest a route can take: the sum of its steps' timeouts."""
        return sum(self.timeout_of(s) for s in self.routes[route].step_specs())


def _index_lines(node: yaml.Node, loc: tuple, out: dict[tuple, int], dupes: list[tuple[tuple, int]]) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key, value in node.value:
            k = key.value
            if k in seen:
                dupes.append((loc + (k,), key.start_mark.line + 1))
            seen.add(k)
            out[loc + (k,)] = key.start_mark.line + 1
            _index_lines(value, loc + (k,), out, dupes)
            out[loc + (k,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, loc + (i,), out, dupes)


FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "follow the pattern shown",
    "too_short": "give at least one item",
}


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, missing: list[str]) -> Any:
    """${VAR} and ${VAR:-default} in function config values (secrets and addresses come from the environment)."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            missing.append(m.group(1))
            return m.group(0)
        return ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, missing) for v in value]
    return value


def load_graph(file: str | Path) -> Graph:
    """Read and schema-check a graph.yaml; raises GraphError naming file:line and the fix."""
    file = Path(file)
    try:
        text = file.read_text()
    except OSError as exc:
        raise GraphError([f"{file}: cannot read graph file ({exc.strerror}); pass an existing graph.yaml"]) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise GraphError([f"{file}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}; fix the syntax"]) from None
    if node is None or not isinstance(data, dict):
        raise GraphError([f"{file}:1: graph must be a mapping with 'functions' and 'routes'"])
    lines: dict[tuple, int] = {}
    dupes: list[tuple[tuple, int]] = []
    _index_lines(node, (), lines, dupes)
    problems = [f"{file}:{line}: duplicate name '{'.'.join(map(str, loc))}'; give each one a unique name"
                for loc, line in dupes]
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as exc:
        graph = Graph(GraphSpec.model_construct(), file, lines)
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "StepSpec")))
            fix = FIXES.get(err["type"], "correct the value")
            problems.append(f"{graph.where(*loc)}: {'.'.join(map(str, loc)) or '(top)'}: {err['msg']}; {fix}")
        raise GraphError(problems) from None
    graph = Graph(spec, file.resolve(), lines)
    for name, fn in spec.functions.items():
        missing: list[str] = []
        fn.config = _expand_env(fn.config, missing)
        for var in missing:
            problems.append(f"{graph.where('functions', name, 'config')}: function '{name}': config uses ${{{var}}}, "
                            f"which is not set; export it or give a default as ${{{var}:-value}}")
    if problems:
        raise GraphError(problems)
    return graph


def json_schema() -> dict:
    """graph.yaml's JSON Schema, for editors (yaml-language-server)."""
    schema = GraphSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ScaiGrid graph.yaml"
    return schema
