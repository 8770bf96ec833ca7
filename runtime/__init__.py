"""ScaiGrid's engine: graph.yaml -> nameko functions over RabbitMQ. Knows nothing of AI."""
import warnings

# nameko 2.14 rides on eventlet, which warns on every import; the decision is recorded in docs/architecture.md
warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
